"""Trajectory distillation: regress the flow map onto the teacher's own ODE solutions (Luhman & Luhman 2021, who
regress a one-step generator onto DDIM's outputs; here every pair of stored times, so the student is a flow map).

The data are teacher trajectories ``[B, M, ...]``: the states at the times ``t_0 > ... > t_{M-1} = 0`` of the
teacher's uniform grid (``steps`` solver steps, every ``stride``-th state kept). For ``i < j``, the exact map sends
``x_{t_i}`` to ``x_{t_j}``, so ``F_tgt = (x_{t_j} - x_{t_i}) / (t_j - t_i)``. There is no bootstrapping: every target
is the teacher's (up to its solver error), which makes few-step students learn fast; the price is generating the
trajectories once (cached, :func:`distill.data.teacher_trajectories`) and a student that is only as good as the
solver that made them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..conditions import with_scale
from ..data import Dataset, teacher_trajectories
from ..prompts import conditions_in_turn
from ..solvers import time_grid
from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, gap


@dataclass
class TrajectoryConfig(DistillationConfig):
    """``trajectories``: how many teacher solutions to store (fresh noise seeded by ``seed``; classes in turn for a
    class-conditional teacher); ``solver`` (``euler``, ``heun`` or ``dpmpp2m``: one solve, its states kept) and
    ``steps``: the teacher's solver on its uniform grid; ``stride``: keep every ``stride``-th state (the student
    learns jumps between kept times, so a K-step sampler needs ``steps / stride`` to be a multiple of K);
    ``jumps``: the sampler lengths whose jumps the regression draws, each length equally often and its K jumps of
    the uniform grid equally (``[1, 2, 4]``: the one-step jump a third of the time); unset, every pair of stored
    times is drawn uniformly (the flow map between any two of them). ``to_data``: every jump ends at ``t = 0``, from
    each stored time uniformly (a consistency-form student's training: ``D(x_t, t) = x_0``)."""

    trajectories: int = 5000
    solver: str = "heun"
    steps: int = 16
    stride: int = 4
    seed: int = 1234
    jumps: list[int] | None = None
    to_data: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.steps % self.stride or self.trajectories < 1:
            raise ValueError(f"stride ({self.stride}) must divide steps ({self.steps}); trajectories must be >= 1")
        intervals = self.steps // self.stride
        if self.to_data and self.jumps is not None:
            raise ValueError("to_data draws jumps to t = 0 only: leave jumps unset")
        if self.jumps is not None and (not self.jumps or any(k < 1 or intervals % k for k in self.jumps)):
            raise ValueError(f"jumps must be sampler lengths that divide the {intervals} stored intervals "
                             f"(steps / stride), got {self.jumps}")
        from ..solvers import get_solver

        get_solver(self.solver)


class TrajectoryDistillation(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput`` on batches of :meth:`training_data`."""

    config_class = TrajectoryConfig

    @property
    def times(self) -> Tensor:
        """The stored times, decreasing from ``t_max`` to 0 (float64 [M])."""
        return time_grid(self.teacher, self.config.steps)[:: self.config.stride]

    def training_data(self, progress: bool = True) -> Dataset:
        """The teacher's trajectories, [N, M, ...] with labels for a class-conditional teacher (cached); with a
        guidance range, each trajectory follows the teacher guided at its own scale ``w`` (uniform on the range,
        kept with it)."""
        config, shape = self.config, self.teacher.sample_shape
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(config.trajectories, *shape, generator=generator)
        cond, _ = conditions_in_turn(self.teacher, config.trajectories, config.prompts)
        if config.guidance_range is not None:
            cond = with_scale(cond, torch.empty(config.trajectories).uniform_(*config.guidance_range,
                                                                              generator=generator))
        return teacher_trajectories(self.teacher, noise, cond, config.solver, config.steps, config.stride,
                                    progress=progress)

    def data_points(self, batch: Batch) -> Tensor:
        """The trajectories' ends: the teacher's own samples at t = 0."""
        return batch.x[:, -1]

    def pairs(self, count: int) -> tuple[Tensor, Tensor | None]:
        """The index pairs ``(i, j)``, i < j, that the regression draws [2, P], and their weights [P] (None: all
        pairs, uniformly)."""
        if self.config.to_data:
            return torch.stack([torch.arange(count - 1), torch.full((count - 1,), count - 1)]), None
        if self.config.jumps is None:
            return torch.triu_indices(count, count, offset=1), None
        starts, ends, weights = [], [], []
        for k in self.config.jumps:  # a K-step sampler's K jumps on the stored grid, 1/K each
            width = (count - 1) // k
            starts += range(0, count - 1, width)
            ends += range(width, count, width)
            weights += [1.0 / k] * k
        return torch.tensor([starts, ends]), torch.tensor(weights)

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        states, times = batch.x, self.times  # [B, M, ...], [M]
        size, count = states.shape[0], states.shape[1]
        if count != len(times):
            raise ValueError(f"batches hold {count} states per trajectory, the config stores {len(times)}: build "
                             "the data with this objective's training_data()")
        pairs, weights = self.pairs(count)
        drawn = torch.randint(0, pairs.shape[1], (size,)) if weights is None else \
            torch.multinomial(weights, size, replacement=True)
        i, j = pairs[:, drawn]
        rows = torch.arange(size)
        x_t, x_s = states[rows, i], states[rows, j]
        t, s = times[i], times[j]
        F_tgt = (x_s - x_t) / gap(t, s, x_t)
        return self.compare(student(x_t, t, s, batch.cond, output="average_velocity"), F_tgt)
