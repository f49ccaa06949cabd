"""Teachers: pretrained diffusion models seen as canonical velocity fields (docs/design.md §2-§4)."""

from __future__ import annotations

from .base import NetworkTeacher, Teacher
from .diffusers_teacher import DiffusersTeacher
from .gaussian_mixture import GaussianMixtureTeacher
from .guided import GuidedTeacher
from .loading import bundled_teachers, load_teacher
from .module import ModuleTeacher
from .text_to_image import TextToImageTeacher

__all__ = [
    "DiffusersTeacher",
    "GaussianMixtureTeacher",
    "GuidedTeacher",
    "ModuleTeacher",
    "NetworkTeacher",
    "Teacher",
    "TextToImageTeacher",
    "bundled_teachers",
    "load_teacher",
]
