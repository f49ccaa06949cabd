"""Lagrangian map distillation (Boffi et al. 2024, §3.2 "LMD"; docs/methods.md).

An exact flow map moves its output with the teacher's velocity: ``d_s X(x, t, s) = v(X(x, t, s), s)``. With
``X = x + (s - t) F`` that is ``F + (s - t) d_s F``; the scalar derivative ``d_s F`` is a central finite difference
whose three evaluations (``s``, ``s - h``, ``s + h``) go through the student in one batched forward pass, so the
loss differentiates through it and DistributedDataParallel synchronises gradients as for any loss. The teacher is
evaluated at the map's output without gradient (no spatial Jacobian is needed, which makes the method cheap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, gap, noised, repeat_batch


@dataclass
class LagrangianMapConfig(DistillationConfig):
    """``derivative_step``: ``h`` of the central difference in ``s`` (one-sided within ``[0, t]`` at the ends)."""

    derivative_step: float = 1e-3


class LagrangianMap(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput`` regressing ``d_s X_θ(x_t, t, s)`` onto
    ``v(sg X_θ(x_t, t, s), s)``."""

    config_class = LagrangianMapConfig

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        size = batch.x.shape[0]
        t, s = self.sample_times(size)
        x_t = noised(batch.x, t)
        h = self.config.derivative_step
        s_low, s_high = (s - h).clamp(min=0.0), torch.minimum(s + h, t)
        F_all = student(repeat_batch(x_t, 3), t.repeat(3), torch.cat([s, s_low, s_high]), repeat_batch(batch.cond, 3),
                        output="average_velocity")
        F, F_low, F_high = F_all.split(size)
        dF_ds = (F_high - F_low) / gap(s_low, s_high, F).clamp(min=1e-12)
        dX_ds = F + gap(t, s, F) * dF_ds
        X = x_t + gap(t, s, F) * F
        return self.compare(dX_ds, self.velocity(X.detach(), s, batch.cond))
