"""Shortcut models in their distillation form (Frans et al. 2024, eq. 5; docs/methods.md).

Two identities train the student: at ``s = t`` the average velocity is the teacher's velocity, ``F(x, t, t) = v``
(the flow-matching anchor); and two half jumps make one (the semigroup),
``X(x, t, s) = X⁻(X⁻(x, t, u), u, s)`` with ``u = (t + s) / 2``, i.e. ``F_tgt = (F⁻(x, t, u) + F⁻(x_u, u, s)) / 2``.
Jump sizes lie on a dyadic grid ``d = span 2^-k``, ``k = 0 .. levels - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, gap, noised, select


@dataclass
class ShortcutConfig(DistillationConfig):
    """``levels``: the number of dyadic jump sizes; ``times.share_equal``: the share of anchor examples (``s = t``);
    ``target_clip``: clip the bootstrap target to ``[-target_clip, target_clip]`` (``None``: off); ``target_ema``: the
    target network's decay (0: stop-gradient copy)."""

    levels: int = 7
    target_clip: float | None = None
    target_ema: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")


class Shortcut(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput``."""

    config_class = ShortcutConfig

    def sample_times(self, batch_size: int):
        t_min, t_max = self.teacher.t_min, self.teacher.t_max
        k = torch.randint(0, self.config.levels, (batch_size,))
        d = (t_max - t_min) * torch.pow(2.0, -k.double())  # dyadic jump sizes
        t = t_min + d + (t_max - t_min - d) * torch.rand(batch_size, dtype=torch.float64)
        anchor = torch.rand(batch_size, dtype=torch.float64) < self.config.times.share_equal
        return t, torch.where(anchor, t, t - d)

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        t, s = self.sample_times(batch.x.shape[0])
        u = (t + s) / 2
        x_t = noised(batch.x, t)
        target = self.target_network(student, step)
        with torch.no_grad():
            F_first = target(x_t, t, u, batch.cond, output="average_velocity")
            x_u = x_t + gap(t, u, x_t) * F_first
            F_second = target(x_u, u, s, batch.cond, output="average_velocity")
            F_tgt = (F_first + F_second) / 2
            if self.config.target_clip is not None:
                F_tgt = F_tgt.clamp(-self.config.target_clip, self.config.target_clip)
            F_tgt = select(s == t, self.velocity(x_t, t, batch.cond), F_tgt)
        return self.compare(student(x_t, t, s, batch.cond, output="average_velocity"), F_tgt)
