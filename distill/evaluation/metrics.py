"""Offline metrics that judge a generator: Fréchet distance in a bundled classifier's features, classifier
confidence and class balance, sliced Wasserstein distance and MMD for vectors, and fidelity to the teacher.

The feature classifiers are small CNNs trained by ``scripts/train_classifiers.py`` on MNIST-5k (16x16) and
scikit-learn's digits (8x8), bundled in ``distill/assets/classifiers/`` with their held-out accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

F64 = torch.float64
CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "assets" / "classifiers"


# ------------------------------------------------------------------------------------------------------------
# Distances between sample sets
# ------------------------------------------------------------------------------------------------------------
def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D] (Heusel et al. 2017, eq. 6):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, in float64."""
    a, b = a.to(F64), b.to(F64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross)
    return float(value.clamp_min(0))


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 512, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between point sets a [N, D] and b [M, D]: the root mean over random unit
    directions of the squared W2 between the projected 1-D distributions (compared at common quantiles)."""
    a, b = a.flatten(1).to(F64), b.flatten(1).to(F64)
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, dtype=F64, generator=generator)
    directions /= directions.norm(dim=0, keepdim=True)
    levels = torch.linspace(0, 1, max(len(a), len(b)), dtype=F64)
    qa = torch.quantile(a @ directions, levels, dim=0)
    qb = torch.quantile(b @ directions, levels, dim=0)
    return float((qa - qb).pow(2).mean().sqrt())


def mmd(a: Tensor, b: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012, eq. 3) with a sum of RBF kernels
    ``exp(-|x - y|^2 / (2 h^2))``, bandwidths relative to the median pairwise distance of the pooled sets."""
    a, b = a.flatten(1).to(F64), b.flatten(1).to(F64)
    pooled = torch.cat([a, b])
    scale = torch.cdist(pooled, pooled).median().clamp_min(1e-12)

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        d2 = torch.cdist(x, y).pow(2)
        return sum(torch.exp(-d2 / (2 * (h * scale) ** 2)) for h in bandwidths)

    n, m = len(a), len(b)
    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    value = ((k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1)) + (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
             - 2 * k_ab.mean())
    return float(value)


def fidelity_rmse(samples: Tensor, reference: Tensor) -> float:
    """RMSE between a generator's outputs and the teacher's accurate ODE solutions from the same noise."""
    if samples.shape != reference.shape:
        raise ValueError(f"samples {list(samples.shape)} and reference {list(reference.shape)} differ in shape")
    return float((samples.to(F64) - reference.to(F64)).pow(2).mean().sqrt())


def confident_share(probabilities: Tensor, threshold: float = 0.9) -> float:
    """Share of samples the classifier assigns to some class with probability >= ``threshold``."""
    return float((probabilities.max(1).values >= threshold).double().mean())


def class_entropy(probabilities: Tensor) -> float:
    """Entropy (nats) of the histogram of predicted classes; ``ln(10)`` when ten classes are equally frequent."""
    counts = torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).to(F64)
    p = counts / counts.sum()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


# ------------------------------------------------------------------------------------------------------------
# The feature classifier
# ------------------------------------------------------------------------------------------------------------
class FeatureClassifier(nn.Module):
    """A small CNN for [B, 1, S, S] images in [-1, 1]: three conv stages, global pooling, a 128-d penultimate
    feature layer (for Fréchet distance) and a linear classifier."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = {"channels": channels, "classes": classes, "width": width, "feature_dim": feature_dim}

        def stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU()]

        self.body = nn.Sequential(*stage(channels, width, 1), *stage(width, 2 * width, 2),
                                  *stage(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4 * width, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class BundledClassifier:
    """A bundled feature classifier plus its card (``card.json``: data, image size, held-out accuracy)."""

    def __init__(self, name: str):
        from ..weights import load_weights

        folder = CLASSIFIER_DIR / name
        if not (folder / "card.json").exists():
            available = sorted(p.name for p in CLASSIFIER_DIR.glob("*") if (p / "card.json").exists())
            raise FileNotFoundError(f"no bundled classifier {name!r} (available: {', '.join(available) or 'none'}); "
                                    "scripts/train_classifiers.py makes them")
        self.card = json.loads((folder / "card.json").read_text())
        self.network = FeatureClassifier(**self.card["network_config"])
        load_weights(self.network, folder / "model.safetensors")
        self.network.eval().requires_grad_(False)
        self.image_size = int(self.card["image_size"])

    @torch.no_grad()
    def run(self, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        """``(features [N, F], class probabilities [N, C])`` for images [N, 1, S, S] in [-1, 1]; images k times its
        size are averaged down k x k first (a text-to-image teacher's 32x32 MNIST read by ``mnist16``)."""
        expected = (1, self.image_size, self.image_size)
        factor = images.shape[-1] // self.image_size
        if factor > 1 and tuple(images.shape[1:]) == (1, factor * self.image_size, factor * self.image_size):
            images = torch.nn.functional.avg_pool2d(images.float(), factor)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"classifier {self.card['name']} takes images [N, {', '.join(map(str, expected))}], "
                             f"got {list(images.shape)}")
        features, probabilities = [], []
        for chunk in images.float().clamp(-1, 1).split(batch_size):
            f = self.network.features(chunk)
            features.append(f)
            probabilities.append(self.network.head(f).softmax(1))
        return torch.cat(features), torch.cat(probabilities)


def class_agreement(probabilities: Tensor, labels: Tensor) -> float:
    """Share of samples the classifier assigns to the class they were generated for."""
    return float((probabilities.argmax(1).cpu() == labels.cpu()).double().mean())


def image_metrics(samples: Tensor, real_features: Tensor, classifier: BundledClassifier,
                  labels: Tensor | None = None) -> dict[str, float]:
    """FD against the real data's features, confident share and class entropy of generated images, and, given the
    requested ``labels``, the classifier's agreement with them."""
    features, probabilities = classifier.run(samples)
    scores = {"fd": frechet_distance(features, real_features), "confident": confident_share(probabilities),
              "class_entropy": class_entropy(probabilities)}
    if labels is not None:
        scores["agreement"] = class_agreement(probabilities, labels)
    return scores


MAX_CLASS_ENTROPY = math.log(10)
