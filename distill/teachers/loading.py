"""``load_teacher``: one entry point for bundled names, diffusers folders, hub ids and in-memory models."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from .base import Teacher
from .diffusers_teacher import DiffusersTeacher
from .gaussian_mixture import GaussianMixtureTeacher


def eight_gaussians_exact() -> GaussianMixtureTeacher:
    """Eight Gaussians (std 0.1) evenly on a circle of radius 2: an analytic teacher with an exact flow map."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixtureTeacher(means, 0.1)


BUNDLED_TEACHERS: dict[str, Callable[[], Teacher]] = {"eight-gaussians-exact": eight_gaussians_exact}
"""Bundled teachers by name. Analytic ones need no weights."""


def load_teacher(source, *, torch_dtype: torch.dtype | None = None, prediction_type: str | None = None) -> Teacher:
    """Load a teacher.

    Args:
        source: a bundled name (``distill.teachers.BUNDLED_TEACHERS``), a diffusers pipeline or model folder, a
            Hugging Face hub id, an in-memory ``(model, scheduler)`` pair, or a ``Teacher`` (returned as is).
        torch_dtype: dtype to load diffusers weights in.
        prediction_type: override the scheduler config's prediction type.
    """
    if isinstance(source, Teacher):
        return source
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError("an in-memory teacher is a (model, scheduler) pair")
        return DiffusersTeacher(source[0], source[1], prediction_type)
    if isinstance(source, str) and source in BUNDLED_TEACHERS:
        return BUNDLED_TEACHERS[source]()
    if isinstance(source, (str, Path)):
        try:
            return DiffusersTeacher.from_pretrained(source, torch_dtype=torch_dtype, prediction_type=prediction_type)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} (bundled teachers: {', '.join(BUNDLED_TEACHERS)})") from None
    raise TypeError(
        f"cannot load a teacher from {type(source).__name__}: pass a bundled name, a folder, a hub id, "
        "a (model, scheduler) pair or a Teacher"
    )
