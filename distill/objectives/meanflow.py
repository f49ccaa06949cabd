"""MeanFlow in its distillation form (Geng et al. 2025, eq. 9-10; METHODS.md).

The average velocity ``F(x, t, s) = (X(x, t, s) - x) / (s - t)`` of an exact flow map satisfies
``F = v + (s - t) dF/dt`` with ``dF/dt = d_x F . v + d_t F`` along the teacher's trajectory, so the student regresses
onto the stop-gradient target ``F_tgt = v(x_t, t) + (s - t) JVP(F; (x_t, t, s) -> (v, 1, 0))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..conventions import per_example
from ..jvp import jvp
from .base import Batch, LossOutput, unwrap
from .timesteps import TimePairs


@dataclass
class MeanFlowConfig:
    """``adaptive_p``/``adaptive_c``: the adaptive weight ``1 / (|F - F_tgt|^2 + c)^p`` (stop-gradient; p = 0 is plain
    MSE); ``jvp_mode``: see ``distill.jvp``."""

    times: TimePairs = field(default_factory=TimePairs)
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    jvp_mode: str = "auto"


class MeanFlow:
    """``objective(student, batch, step) -> LossOutput`` with the teacher's velocity as the instantaneous one.

    Args:
        teacher: the velocity field (a ``GuidedTeacher`` distils guidance at its scale).
        config: time pairs, adaptive weighting, JVP mode.
    """

    def __init__(self, teacher, config: MeanFlowConfig | None = None):
        self.teacher, self.config = teacher, config or MeanFlowConfig()

    def target(self, student, x_t, t, s, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, F_tgt)`` at ``(x_t, t, s)``, both detached."""
        with torch.no_grad():
            v = self.teacher.velocity(x_t, t, cond)
        inner = unwrap(student)

        def average_velocity(x, t_, s_):
            return inner.average_velocity(x, t_, s_, cond)

        tangents = (v, torch.ones_like(t), torch.zeros_like(s))
        _, dF_dt = jvp(average_velocity, (x_t, t, s), tangents, mode=self.config.jvp_mode)
        return v, v + per_example(s - t, x_t) * dF_dt

    def __call__(self, student, batch: Batch, step: int) -> LossOutput:
        x_data = batch.x
        t, s = self.config.times.sample(x_data.shape[0], self.teacher.t_min, self.teacher.t_max)
        noise = torch.randn_like(x_data)
        x_t = (1 - per_example(t, x_data)) * x_data + per_example(t, x_data) * noise  # canonical path
        _, F_tgt = self.target(student, x_t, t, s, batch.cond)
        F = student(x_t, t, s, batch.cond, output="average_velocity")
        error = (F - F_tgt).pow(2).flatten(1).sum(1)  # [B]
        weight = (error.detach() + self.config.adaptive_c).pow(-self.config.adaptive_p)
        loss = (weight * error).mean()
        return LossOutput(loss, {"loss": loss.item(), "mse": error.mean().item() / x_data[0].numel()})
