"""Metrics behave as distances: zero on identical sets, growing with corruption; the bundled classifiers load."""

from __future__ import annotations

import math

import pytest
import torch

from distill.data import digits, mnist
from distill.evaluation.metrics import (
    BundledClassifier,
    class_entropy,
    confident_share,
    fidelity_rmse,
    frechet_distance,
    mmd,
    sliced_wasserstein,
)


def test_frechet_distance_of_gaussians_matches_closed_form():
    """For diagonal covariances, FD = |mu_a - mu_b|^2 + sum (s_a - s_b)^2."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200000, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    b = torch.randn(200000, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.5, 2.0, 0.5]) + 1.0
    assert frechet_distance(a, b) == pytest.approx(3 * 1.0 + 0.5**2, rel=0.02)


def test_fd_on_classifier_features_is_zero_for_itself_and_grows_with_noise():
    classifier = BundledClassifier("mnist16")
    images = mnist(16).x[:2000]
    features = classifier.run(images)[0]
    assert frechet_distance(features, features) < 1e-6
    distances = [frechet_distance(classifier.run((images + s * torch.randn_like(images)).clamp(-1, 1))[0], features)
                 for s in (0.1, 0.3, 0.6)]
    assert distances[0] < distances[1] < distances[2]


def test_swd_and_mmd():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(500, 2, generator=generator)
    assert sliced_wasserstein(a, a) == 0.0
    shifted = [sliced_wasserstein(a, a + d) for d in (0.1, 0.5, 1.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    assert sliced_wasserstein(a, a + torch.tensor([3.0, 4.0])) == pytest.approx(5 / math.sqrt(2), rel=0.05)
    b = torch.randn(500, 2, generator=generator)
    assert abs(mmd(a, b)) < 0.02 < mmd(a, b + 1.0)


def test_classifier_confidence_and_entropy():
    classifier = BundledClassifier("digits8")
    data = digits()
    probabilities = classifier.run(data.x)[1]
    assert confident_share(probabilities) > 0.9
    assert class_entropy(probabilities) > 0.99 * math.log(10)
    one_class = torch.zeros(100, 10)
    one_class[:, 3] = 1
    assert class_entropy(one_class) == 0.0 and confident_share(one_class) == 1.0
    assert classifier.card["holdout_accuracy"] > 0.95


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        fidelity_rmse(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"takes images \[N, 1, 16, 16\]"):
        BundledClassifier("mnist16").run(torch.zeros(2, 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="no bundled classifier 'cifar'"):
        BundledClassifier("cifar")
