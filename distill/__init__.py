"""distill: turn a pretrained diffusion model into a fast flow-map generator.

Canonical convention (docs/design.md §2): ``x_t = (1 - t) x_data + t noise``; t = 0 is data, t = 1 is noise.
Importing this package is light: diffusers, accelerate, peft and onnx load only inside the functions using them.
"""

from __future__ import annotations

from .quiet import quiet_third_party_notices

quiet_third_party_notices()

from . import conventions, objectives, solvers, teachers  # noqa: E402
from .solvers import sample, solve, time_grid  # noqa: E402
from .students import FlowMap, TwoTimeFlowMap, load_student  # noqa: E402
from .teachers import (  # noqa: E402
    DiffusersTeacher,
    GaussianMixtureTeacher,
    GuidedTeacher,
    ModuleTeacher,
    Teacher,
    load_teacher,
)
from .train import TrainConfig, train  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DiffusersTeacher",
    "FlowMap",
    "GaussianMixtureTeacher",
    "GuidedTeacher",
    "ModuleTeacher",
    "Teacher",
    "TrainConfig",
    "TwoTimeFlowMap",
    "conventions",
    "load_student",
    "load_teacher",
    "objectives",
    "sample",
    "solve",
    "solvers",
    "teachers",
    "time_grid",
    "train",
]
