"""Consistency distillation (Song et al. 2023, Algorithm 2; docs/methods.md), in flow-map form with ``s = 0``.

Times come in adjacent pairs of an ``intervals``-step grid (``t_{n+1} > t_n``); one teacher step moves ``x_{t_{n+1}}``
to ``x̂_{t_n}`` and the student's jump to data must agree with the target network's:
``d(X_θ(x_{t_{n+1}}, t_{n+1}, 0), sg X⁻(x̂_{t_n}, t_n, 0))``. ``X(x, 0, 0) = x`` exactly, so the boundary condition
holds by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..solvers import time_grid
from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, noised


@dataclass
class ConsistencyDistillationConfig(DistillationConfig):
    """``intervals``: N, the number of steps of the discretisation ``grid`` (``uniform`` in t or ``edm``'s rho = 7)
    over the teacher's range. ``teacher_solver``: the step from ``t_{n+1}`` to ``t_n``. ``target_ema``: the target's
    decay (Song et al. use 0.95 for CD; 0 is a stop-gradient copy). Distance: Pseudo-Huber (Song & Dhariwal 2023)."""

    intervals: int = 64
    grid: str = "uniform"
    teacher_solver: str = "heun"
    target_ema: float = 0.95
    distance: str = "pseudo_huber"

    def __post_init__(self):
        super().__post_init__()
        if self.intervals < 1:
            raise ValueError(f"intervals must be >= 1, got {self.intervals}")


class ConsistencyDistillation(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput``; the student's ``s`` is always 0."""

    config_class = ConsistencyDistillationConfig

    def __init__(self, teacher, config: ConsistencyDistillationConfig | None = None):
        super().__init__(teacher, config)
        self.grid = time_grid(self.teacher, self.config.intervals, self.config.grid)  # decreasing, ends at 0

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        size = batch.x.shape[0]
        n = torch.randint(0, self.config.intervals, (size,))
        t, t_next = self.grid[n], self.grid[n + 1]  # t > t_next: one step towards data
        zero = torch.zeros_like(t)
        x_t = noised(batch.x, t)
        target = self.target_network(student, step)
        with torch.no_grad():
            x_next = self.teacher_step(x_t, t, t_next, batch.cond, self.config.teacher_solver)
            X_target = target(x_next, t_next, zero, batch.cond)
        return self.compare(student(x_t, t, zero, batch.cond), X_target)
