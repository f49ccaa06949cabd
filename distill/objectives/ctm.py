"""Consistency trajectory models (Kim et al. 2023, eq. 6-8; docs/methods.md), distillation without the GAN term.

The student's jump ``t -> s`` is compared with a target built from the teacher: teacher Heun steps from ``t`` to a
time ``u`` in ``[s, t)``, then the target network's jump ``u -> s``. Both sides are mapped on to data by the target
network (``X⁻(., s, 0)``; gradients pass through its input) and compared there. A flow-matching anchor ``F(x, t, t)
= v(x, t)`` (CTM's denoising term) keeps the instantaneous velocity right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (
    Batch,
    DistillationConfig,
    DistillationObjective,
    LossOutput,
    gap,
    noised,
    repeat_batch,
)


@dataclass
class CTMConfig(DistillationConfig):
    """``max_teacher_share``: ``u = t - r (t - s)`` with ``r ~ U(0, max_teacher_share]`` (1: ``u`` anywhere in
    ``[s, t)``); ``teacher_substeps``: Heun steps from ``t`` to ``u``; ``anchor_weight``: weight of the flow-matching
    term; ``target_ema``: the target network's decay (CTM: 0.999; 0 is a stop-gradient copy)."""

    max_teacher_share: float = 1.0
    teacher_substeps: int = 2
    anchor_weight: float = 1.0
    target_ema: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.max_teacher_share <= 1.0:
            raise ValueError(f"max_teacher_share must lie in (0, 1], got {self.max_teacher_share}")


class CTM(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput``."""

    config_class = CTMConfig

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        size = batch.x.shape[0]
        t, s = self.sample_times(size)
        u = t - self.config.max_teacher_share * (1 - torch.rand(size, dtype=torch.float64)) * (t - s)
        zero = torch.zeros_like(s)
        x_t = noised(batch.x, t)
        target = self.target_network(student, step)
        with torch.no_grad():
            v = self.velocity(x_t, t, batch.cond)
            x_u = self.teacher_step(x_t, t, u, batch.cond, "heun", self.config.teacher_substeps, v_start=v)
            goal = target(target(x_u, u, s, batch.cond), s, zero, batch.cond)  # data reached via the teacher
        F_both = student(repeat_batch(x_t, 2), t.repeat(2), torch.cat([s, t]), repeat_batch(batch.cond, 2),
                         output="average_velocity")
        F, F_anchor = F_both.split(size)
        reached = target(x_t + gap(t, s, F) * F, s, zero, batch.cond)  # data reached via the student's jump
        out = self.compare(reached, goal)
        anchor = (F_anchor.float() - v.float()).pow(2).flatten(1).sum(1).mean()
        out.loss = out.loss + self.config.anchor_weight * anchor
        out.metrics.update(loss=out.loss.item(), anchor=anchor.item())
        return out
