"""``load_teacher``: one entry point for bundled names, diffusers folders, hub ids and in-memory models."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .base import Teacher
from .diffusers_teacher import DiffusersTeacher
from .gaussian_mixture import GaussianMixtureTeacher
from .module import TEACHER_FILE, ModuleTeacher
from .text_to_image import PROMPT_ENCODINGS, TextToImageTeacher, is_text_to_image_folder

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "teachers"
INFO_FILE = "distill.json"


def eight_gaussians_exact() -> GaussianMixtureTeacher:
    """Eight Gaussians (std 0.1) evenly on a circle of radius 2: an analytic teacher with an exact flow map."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    teacher = GaussianMixtureTeacher(means, 0.1)
    teacher.info = {"name": "eight-gaussians-exact", "data": {"name": "eight-gaussians-exact"}}
    return teacher


ANALYTIC_TEACHERS: dict[str, Callable[[], Teacher]] = {"eight-gaussians-exact": eight_gaussians_exact}


def bundled_teachers() -> dict[str, str]:
    """Bundled teacher names and one-line descriptions: analytic ones and trained ones in ``distill/assets``."""
    names = {name: (factory.__doc__ or "").strip().splitlines()[0] for name, factory in ANALYTIC_TEACHERS.items()}
    for folder in sorted(ASSET_DIR.glob("*")):
        if (folder / INFO_FILE).exists():
            names[folder.name] = json.loads((folder / INFO_FILE).read_text()).get("description", "")
    return names


def load_folder(folder: str | Path, *, torch_dtype: torch.dtype | None = None,
                prediction_type: str | None = None) -> Teacher:
    """A saved teacher: a built-in network (``teacher.json``), a text-to-image pipeline (a diffusers folder with
    ``text_encoder/`` and ``vae/``) or another diffusers folder; ``distill.json`` -> ``info``."""
    folder = Path(folder)
    if (folder / TEACHER_FILE).exists():
        teacher = ModuleTeacher.from_pretrained(folder)
    elif is_text_to_image_folder(folder):
        teacher = TextToImageTeacher.from_pretrained(folder, torch_dtype=torch_dtype, prediction_type=prediction_type)
    else:
        teacher = DiffusersTeacher.from_pretrained(folder, torch_dtype=torch_dtype, prediction_type=prediction_type)
    if (folder / INFO_FILE).exists():
        teacher.info = json.loads((folder / INFO_FILE).read_text())
    return teacher


def load_teacher(source, *, torch_dtype: torch.dtype | None = None, prediction_type: str | None = None) -> Teacher:
    """Load a teacher.

    Args:
        source: a bundled name (``distill teachers`` lists them), a diffusers pipeline or model folder, a folder
            saved by ``distill train-teacher``, a Hugging Face hub id, an in-memory ``(model, scheduler)`` pair or
            text-to-image pipeline (``StableDiffusionPipeline``, ...), or a ``Teacher`` (returned as is).
        torch_dtype: dtype to load diffusers weights in.
        prediction_type: override the scheduler config's prediction type.
    """
    if isinstance(source, Teacher):
        return source
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError("an in-memory teacher is a (model, scheduler) pair")
        return DiffusersTeacher(source[0], source[1], prediction_type)
    if type(source).__name__ in PROMPT_ENCODINGS:  # an in-memory text-to-image pipeline
        return TextToImageTeacher(source, prediction_type)
    if isinstance(source, str) and source in ANALYTIC_TEACHERS:
        return ANALYTIC_TEACHERS[source]()
    if isinstance(source, str) and (ASSET_DIR / source / INFO_FILE).exists():
        return load_folder(ASSET_DIR / source, torch_dtype=torch_dtype, prediction_type=prediction_type)
    if isinstance(source, (str, Path)):
        try:
            return load_folder(source, torch_dtype=torch_dtype, prediction_type=prediction_type)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} (bundled teachers: {', '.join(bundled_teachers())})") from None
    raise TypeError(
        f"cannot load a teacher from {type(source).__name__}: pass a bundled name, a folder, a hub id, "
        "a (model, scheduler) pair or a Teacher"
    )
