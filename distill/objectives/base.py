"""What every objective takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper: for reading its attributes, and for stop-gradient work
    (a detached JVP) that must not go through the wrapper's gradient bookkeeping."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
