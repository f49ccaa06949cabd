"""Progressive distillation (Salimans & Ho 2022, Algorithm 2; docs/methods.md), with a flow-map student.

Round ``r`` trains jumps on an ``N_r``-step grid, ``N_r = start_steps / 2^(r+1)``: one student jump ``t -> s`` must
equal two jumps ``t -> u -> s`` of the previous round's model (the teacher's solver steps in round 0, a frozen copy of
the student afterwards) on the nested ``2 N_r``-step grid. A new round starts every ``steps_per_round`` steps until
``N_r`` reaches ``final_steps``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from ..solvers import time_grid
from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, gap, noised, unwrap


@dataclass
class ProgressiveConfig(DistillationConfig):
    """``start_steps``: the teacher's steps in round 0 (a power of two times ``final_steps``); ``final_steps``:
    the student's steps in the last round; ``steps_per_round``: training steps per round; ``grid``: the time grid
    (``uniform`` or ``edm``); ``teacher_solver``: round 0's steps."""

    start_steps: int = 64
    final_steps: int = 1
    steps_per_round: int = 1000
    grid: str = "uniform"
    teacher_solver: str = "heun"

    def __post_init__(self):
        super().__post_init__()
        ratio = self.start_steps // max(self.final_steps, 1)
        if self.final_steps < 1 or ratio < 2 or ratio * self.final_steps != self.start_steps or ratio & (ratio - 1):
            raise ValueError(f"start_steps ({self.start_steps}) must be final_steps ({self.final_steps}) times a "
                             "power of two >= 2")
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")


class Progressive(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput``; the round follows ``step``."""

    config_class = ProgressiveConfig

    def __init__(self, teacher, config: ProgressiveConfig | None = None):
        super().__init__(teacher, config)
        self.rounds = (self.config.start_steps // self.config.final_steps).bit_length() - 1
        self.previous: torch.nn.Module | None = None  # the frozen previous-round student (rounds >= 1)
        self.previous_round = 0

    def round(self, step: int) -> int:
        return min(step // self.config.steps_per_round, self.rounds - 1)

    def student_steps(self, step: int) -> int:
        """``N_r``: the number of jumps the student learns in this step's round."""
        return self.config.start_steps >> (self.round(step) + 1)

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        r = self.round(step)
        if r > self.previous_round or (r > 0 and self.previous is None):
            self.previous, self.previous_round = copy.deepcopy(unwrap(student)).requires_grad_(False), r
        size = batch.x.shape[0]
        fine = time_grid(self.teacher, 2 * self.student_steps(step), self.config.grid)  # nested 2N-step grid
        i = torch.randint(0, self.student_steps(step), (size,))
        t, u, s = fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]
        x_t = noised(batch.x, t)
        with torch.no_grad():
            x_s = self.two_jumps(x_t, t, u, s, batch.cond, r)
            F_tgt = (x_s - x_t) / gap(t, s, x_t)
        return self.compare(student(x_t, t, s, batch.cond, output="average_velocity"), F_tgt)

    def two_jumps(self, x: Tensor, t: Tensor, u: Tensor, s: Tensor, cond, r: int) -> Tensor:
        if r == 0:
            x_u = self.teacher_step(x, t, u, cond, self.config.teacher_solver)
            return self.teacher_step(x_u, u, s, cond, self.config.teacher_solver)
        return self.previous(self.previous(x, t, u, cond), u, s, cond)

    def state_dict(self) -> dict[str, Tensor]:
        if self.previous is None:
            return {}
        return {"round": torch.tensor(self.previous_round),
                **{f"previous.{k}": v for k, v in self.previous.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Tensor], student) -> None:
        if state:
            self.previous = copy.deepcopy(unwrap(student)).requires_grad_(False)
            self.previous.load_state_dict({k[len("previous."):]: v for k, v in state.items() if k != "round"})
            self.previous_round = int(state["round"])
