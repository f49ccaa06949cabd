"""The flow-map student interface: ``X(x, t, s) = x + (s - t) F(x, t, s)``, the state at time ``s`` of the trajectory
through ``x`` at time ``t`` (docs/design.md §2; Boffi et al. 2024, eq. 2.3).

Every student kind is a :class:`FlowMap` subclass with the same calls: ``forward`` / ``jump`` (the map),
``average_velocity`` (``F``), ``output_coefficients`` (how ``F`` reads the network's raw output), the exporters'
per-step scalars, and ``save_pretrained`` / ``from_folder`` (its own folder format, named by ``kind`` in
``student.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..conventions import per_example
from ..model_info import InfoAttribute, ModelInfo
from ..teachers.base import as_time_batch

STUDENT_FILE = "student.json"
SCHEDULER_TIMESTEPS = 1000  # diffusers' flow-map scheduler counts time in thousandths


class FlowMap(nn.Module):
    """A two-time student ``X(x, t, s)``. Build one with ``FlowMap.from_teacher(teacher)`` (a copy of the teacher's
    network, :class:`~distill.students.TeacherFlowMap`) or ``TwoTimeFlowMap(network, sample_shape=...)`` (a
    from-scratch two-time network).

    ``forward(x, t, s, cond)`` returns ``X(x, t, s)`` ([B, ...] like ``x``; ``t``, ``s`` canonical, numbers or [B]).
    ``average_velocity(x, t, s, cond)`` returns ``F``. Sampling: ``distill.sample(student, noise, steps=K)``.
    """

    kind: str = ""  # what student.json records; a subclass's folder format
    output_rule: str = ""  # how F reads the network output (docs/methods.md, "Output parameterisation")
    default_guidance: float | None = None  # a guidance-conditioned student's scale when a call carries none
    info = InfoAttribute()  # its teacher's info, plus the teacher it was distilled from (ModelInfo.teacher)

    def __init__(self, *, t_min: float, t_max: float, sample_shape: tuple[int, ...] | None,
                 info: ModelInfo | dict | None):
        if type(self) is FlowMap:
            raise TypeError("FlowMap is the students' interface: build one with FlowMap.from_teacher(teacher) or "
                            "TwoTimeFlowMap(network, sample_shape=...)")
        super().__init__()
        self.t_min, self.t_max, self.sample_shape, self.info = t_min, t_max, sample_shape, info

    on_teacher_network: type[FlowMap] | None = None  # the kind FlowMap.from_teacher builds (set in __init__.py)

    @classmethod
    def from_teacher(cls, teacher) -> FlowMap:
        """A student equal to one Euler step of ``teacher`` (whose weights are copied, not shared)."""
        return FlowMap.on_teacher_network.from_teacher(teacher)

    @property
    def guidance_conditioned(self) -> bool:
        """Whether the student takes a classifier-free guidance scale in its condition."""
        return False

    def encode_prompts(self, prompts: list[str], device=None):
        """The condition for ``prompts``, for a student of a text-to-image teacher."""
        raise TypeError(f"{type(self).__name__} is not text-conditioned: prompts need a student of a text-to-image "
                        "teacher")

    def decode(self, x: Tensor) -> Tensor:
        """Images from clean states: the states themselves, for a student that works in pixel space."""
        return x

    def prompt_set(self, split: str = "train"):
        """A student of a text-to-image teacher: its teacher's own prompts; ``None`` otherwise."""
        return None

    # --- what each kind defines --------------------------------------------------------------------------------
    def average_velocity(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None) -> Tensor:
        """``F(x, t, s)``."""
        raise NotImplementedError

    def output_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """float64 [N] ``(a, b)`` with ``F(x, t, s) = a x + b out`` for the network's raw output ``out``. The jump
        ``X = x + (s - t) F`` amplifies an error in ``out`` by ``|(s - t) b|``."""
        raise NotImplementedError

    def time_scalars(self, t: Tensor) -> dict[str, Tensor]:
        """float64 [N] per-time numbers an exported graph tabulates over ``t`` (``{}``: none)."""
        raise NotImplementedError

    def step_scalars(self, time_scalars: dict[str, Tensor], t: Tensor, s: Tensor) -> dict[str, Tensor]:
        """The numbers one jump ``t -> s`` needs, from :meth:`time_scalars` at ``t`` (baked into exported graphs)."""
        raise NotImplementedError

    def scalar_jump(self, x: Tensor, scalars: dict[str, Tensor], cond=None, guidance: Tensor | None = None) -> Tensor:
        """``X(x, t, s)`` from :meth:`step_scalars` (per-example [B] tensors or scalars): the exporters' traced jump."""
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``student.json``, the weights and a diffusers ``scheduler/`` folder."""
        raise NotImplementedError

    @classmethod
    def from_folder(cls, folder: Path, spec: dict, teacher=None) -> FlowMap:
        """The student that :meth:`save_pretrained` wrote (``spec``: its ``student.json``)."""
        raise NotImplementedError

    def merged(self) -> FlowMap:
        """The student with any adapters folded into its layers (in place): plain modules, for export."""
        return self

    # --- shared by every kind -----------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None, output: str = "map") -> Tensor:
        """``X(x, t, s)``, or ``F(x, t, s)`` with ``output="average_velocity"`` (training calls go through
        ``forward`` so that DistributedDataParallel sees them)."""
        if output == "average_velocity":
            return self.average_velocity(x, t, s, cond)
        if output != "map":
            raise ValueError(f"output must be 'map' or 'average_velocity', got {output!r}")
        t64 = as_time_batch(t, x.shape[0], "FlowMap")
        s64 = as_time_batch(s, x.shape[0], "FlowMap")
        return x + per_example(s64 - t64, x) * self.average_velocity(x, t64, s64, cond)

    def jump(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None) -> Tensor:
        """``X(x, t, s)`` through ``__call__``, so hooks and an in-place ``module.compile()`` apply."""
        return self(x, t, s, cond)

    def diffusers_output(self, x: Tensor, timestep: Tensor | float, r_timestep: Tensor | float, cond=None) -> Tensor:
        """The model output that diffusers' ``FlowMapEulerDiscreteScheduler.step(output, timestep, x, r_timestep)``
        expects: the average velocity ``F(x, t, r)``, with its timesteps being ``1000 t`` (canonical time)."""
        t = torch.as_tensor(timestep).to("cpu", torch.float64) / SCHEDULER_TIMESTEPS
        r = torch.as_tensor(r_timestep).to("cpu", torch.float64) / SCHEDULER_TIMESTEPS
        return self.average_velocity(x, t, r, cond)

    def write_spec(self, folder: Path, spec: dict) -> Path:
        """``student.json`` (``spec``: its ``kind`` and what the kind records, then ``info``) and ``scheduler/``."""
        write_scheduler_config(folder / "scheduler")
        (folder / STUDENT_FILE).write_text(json.dumps({**spec, "info": self.info.to_json()}, indent=2))
        return folder


def jump_gains(student: FlowMap, times: Tensor) -> Tensor:
    """How much each jump ``times[k] -> times[k + 1]`` amplifies an error in the network's raw output: ``|q|`` of
    ``X = p x + q out``, ``q = (s - t) b(t)`` (:meth:`FlowMap.output_coefficients`). float64 [K]. A student that
    keeps an epsilon teacher's output has ``|q| ~ (t - s) / (1 - t)`` on its first jump: over a hundred for a DDPM."""
    times = times.to(torch.float64)
    return ((times[:-1] - times[1:]) * student.output_coefficients(times[:-1])[1]).abs()


def write_scheduler_config(folder: Path) -> None:
    """A ``scheduler/`` folder that ``FlowMapEulerDiscreteScheduler.from_pretrained`` loads: its step,
    ``x_r = x_t - (t - r) F``, is this student's jump in canonical time (``timestep = 1000 t``)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "FlowMapEulerDiscreteScheduler", "num_train_timesteps": SCHEDULER_TIMESTEPS,
              "shift": 1.0}
    (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2))
