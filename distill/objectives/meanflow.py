"""MeanFlow in its distillation form (Geng et al. 2025, eq. 9-10; docs/methods.md).

The average velocity ``F(x, t, s) = (X(x, t, s) - x) / (s - t)`` of an exact flow map satisfies
``F = v + (s - t) dF/dt`` with ``dF/dt = d_x F . v + d_t F`` along the teacher's trajectory, so the student regresses
onto the stop-gradient target ``F_tgt = v(x_t, t) + (s - t) JVP(F; (x_t, t, s) -> (v, 1, 0))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, gap, noised, unwrap


@dataclass
class MeanFlowConfig(DistillationConfig):
    """MeanFlow's defaults: a quarter of the pairs at ``s = t`` (``times.share_equal``), adaptive weight p = 1.
    ``jvp_mode``: see ``distill.jvp``."""

    adaptive_p: float = 1.0
    jvp_mode: str = "auto"


def eulerian_target(objective: DistillationObjective, average_velocity, x_t: Tensor, t: Tensor, s: Tensor,
                    v: Tensor, scale: float = 1.0) -> Tensor:
    """``v + scale (s - t) dF/dt`` with ``dF/dt`` the JVP of ``average_velocity(x, t, s)`` along ``(v, 1, 0)``
    (detached): the average velocity the Eulerian identity asks for (``scale = 1``)."""
    tangents = (v, torch.ones_like(t), torch.zeros_like(s))
    _, dF_dt = objective.jvp(average_velocity, (x_t, t, s), tangents)
    return v + scale * gap(t, s, x_t) * dF_dt


class MeanFlow(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput`` with the teacher's velocity as the instantaneous one.

    Args:
        teacher: the velocity field (``config.guidance`` distils classifier-free guidance at that scale).
        config: time pairs, adaptive weighting, JVP mode.
    """

    config_class = MeanFlowConfig

    def target(self, student, x_t: Tensor, t: Tensor, s: Tensor, cond) -> Tensor:
        """``F_tgt`` at ``(x_t, t, s)``, detached."""
        v = self.velocity(x_t, t, cond)
        inner = unwrap(student)

        def average_velocity(x, t_, s_):
            return inner.average_velocity(x, t_, s_, cond)

        return eulerian_target(self, average_velocity, x_t, t, s, v)

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        t, s = self.sample_times(batch.x.shape[0])
        x_t = noised(batch.x, t)
        F_tgt = self.target(student, x_t, t, s, batch.cond)
        F = student(x_t, t, s, batch.cond, output="average_velocity")
        return self.compare(F, F_tgt)
