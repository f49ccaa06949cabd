"""The bundled teachers and classifiers are checked for quality, not only for shape: a teacher with random weights,
or a classifier that lost its training, fails here."""

from __future__ import annotations

import pytest
import torch

import distill
from distill.data import class_cycle, load_dataset
from distill.evaluation.metrics import (
    CLASSIFIER_DIR,
    BundledClassifier,
    class_agreement,
    confident_share,
    sliced_wasserstein,
)
from distill.evaluation.tables import CLASSIFIER_FOR_DATA


@pytest.mark.parametrize("name", sorted(p.name for p in CLASSIFIER_DIR.iterdir() if (p / "card.json").exists()))
def test_bundled_classifier_held_out_accuracy_is_recomputed(name):
    """The held-out 20% that scripts/train_classifiers.py kept aside (seeded split), scored again."""
    classifier = BundledClassifier(name)
    card = classifier.card
    data = load_dataset(card["data"], card["image_size"])
    _, holdout = data.split(len(data) // 5, seed=0)
    assert len(holdout) == card["holdout_size"]
    probabilities = classifier.run(holdout.x)[1]
    accuracy = float((probabilities.argmax(1) == holdout.labels).float().mean())
    assert accuracy == pytest.approx(card["holdout_accuracy"], abs=1e-4) and accuracy > 0.95


IMAGE_TEACHERS = [name for name in sorted(distill.teachers.bundled_teachers())
                  if distill.load_teacher(name).info.data.name in ("mnist", "digits")
                  and not isinstance(distill.load_teacher(name), distill.teachers.TextToImageTeacher)]
POINT_TEACHERS = [name for name in sorted(distill.teachers.bundled_teachers())
                  if distill.load_teacher(name).info.data.name not in ("mnist", "digits")
                  and not isinstance(distill.load_teacher(name), distill.GaussianMixtureTeacher)]  # exact ones


@pytest.mark.parametrize("name", IMAGE_TEACHERS)
def test_bundled_image_teacher_draws_recognisable_samples(name):
    """200 samples at 8 DPM-Solver++ steps: a class-conditional teacher's are the requested class (its cards measure
    >= 97% at 2,000 samples), an unconditional one's are confidently some digit."""
    teacher = distill.load_teacher(name)
    data = teacher.info.data
    classifier = BundledClassifier(CLASSIFIER_FOR_DATA[(data.name, data.size)])
    noise = torch.randn(200, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    labels = class_cycle(teacher.info, 200)
    images = distill.sample(teacher, noise, steps=8, solver="dpmpp2m", cond=labels)
    probabilities = classifier.run(images)[1]
    if labels is not None:
        assert class_agreement(probabilities, labels) > 0.9
    assert confident_share(probabilities) > 0.8


@pytest.mark.parametrize("name", POINT_TEACHERS)
def test_bundled_point_teacher_matches_its_data(name):
    """1,000 points at 16 Heun steps lie within 2.5x the real-vs-real SWD of the data (cards: <= 1.45x at 64 NFE)."""
    teacher = distill.load_teacher(name)
    data = load_dataset(teacher.info.data.name, n=2000, seed=1).x
    noise = torch.randn(1000, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    points = distill.sample(teacher, noise, steps=16, solver="heun").float()
    floor = sliced_wasserstein(data[:1000], data[1000:])
    assert sliced_wasserstein(points, data[:1000]) < 2.5 * floor
