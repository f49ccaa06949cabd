"""Teachers: pretrained diffusion models seen as canonical velocity fields (DESIGN.md §2-§4)."""

from __future__ import annotations

from .base import NetworkTeacher, Teacher
from .diffusers_teacher import DiffusersTeacher
from .gaussian_mixture import GaussianMixtureTeacher
from .guided import GuidedTeacher
from .loading import BUNDLED_TEACHERS, load_teacher
from .module import ModuleTeacher

__all__ = [
    "BUNDLED_TEACHERS",
    "DiffusersTeacher",
    "GaussianMixtureTeacher",
    "GuidedTeacher",
    "ModuleTeacher",
    "NetworkTeacher",
    "Teacher",
    "load_teacher",
]
