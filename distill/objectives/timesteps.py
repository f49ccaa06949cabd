"""How distillation objectives draw their time pairs (t, s) with s <= t (docs/methods.md, "Time sampling")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..conventions import F64

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")


@dataclass
class TimePairs:
    """``t`` and ``s`` from a logit-normal (mean, std) or uniform law on the teacher's ``[t_min, t_max]``, sorted so
    that ``s <= t``; a ``share_equal`` of pairs gets ``s = t`` (the flow-matching anchor) and a ``share_zero`` gets
    ``s = 0`` (the consistency-model end)."""

    distribution: str = "logit_normal"
    logit_mean: float = -0.4
    logit_std: float = 1.0
    share_equal: float = 0.25
    share_zero: float = 0.0

    def __post_init__(self):
        if self.distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"unknown time distribution {self.distribution!r}; use one of "
                             f"{', '.join(TIME_DISTRIBUTIONS)}")
        if min(self.share_equal, self.share_zero) < 0 or self.share_equal + self.share_zero > 1:
            raise ValueError("share_equal and share_zero must be >= 0 with a sum <= 1")

    def _draw(self, batch: int, t_min: float, t_max: float, generator) -> Tensor:
        if self.distribution == "uniform":
            u = torch.rand(batch, dtype=F64, generator=generator)
        else:
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, dtype=F64, generator=generator))
        return t_min + (t_max - t_min) * u

    def sample(self, batch: int, t_min: float, t_max: float,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(t, s)``, float64 [B] each, ``0 <= s <= t``."""
        a, b = self._draw(batch, t_min, t_max, generator), self._draw(batch, t_min, t_max, generator)
        t, s = torch.maximum(a, b), torch.minimum(a, b)
        kind = torch.rand(batch, dtype=F64, generator=generator)
        to_zero = (kind >= self.share_equal) & (kind < self.share_equal + self.share_zero)
        s = torch.where(kind < self.share_equal, t, s)
        s = torch.where(to_zero, torch.zeros_like(s), s)
        return t, s
