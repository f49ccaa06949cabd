"""What every objective takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Batch:
    """A training batch: samples ``x`` [B, ...] and optional conditioning (class labels [B], ...)."""

    x: Tensor
    cond: Tensor | dict | None = None


@dataclass
class LossOutput:
    """A scalar ``loss`` to minimise and float ``metrics`` to log."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
