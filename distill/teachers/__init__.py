"""Teachers: pretrained diffusion models seen as canonical velocity fields (DESIGN.md §2-§4)."""

from __future__ import annotations

from .base import NetworkTeacher, Teacher
from .gaussian_mixture import GaussianMixtureTeacher
from .guided import GuidedTeacher
from .loading import BUNDLED_TEACHERS, load_teacher
from .module import ModuleTeacher


def __getattr__(name: str):
    # DiffusersTeacher lives in a module that imports nothing heavy, but keep the door light anyway.
    if name == "DiffusersTeacher":
        from .diffusers_teacher import DiffusersTeacher

        return DiffusersTeacher
    raise AttributeError(name)


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
