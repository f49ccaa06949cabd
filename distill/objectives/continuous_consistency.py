"""Continuous-time consistency distillation, sCD (Lu & Song 2024, eq. 8 and §4), in flow-map form.

A consistency model is the flow map to data, ``f(x, t) = X(x, t, 0) = x - t F(x, t, 0)``; sCD asks ``df/dt = 0``
along the teacher's trajectory, which is the Eulerian identity at ``s = 0``. So this is :class:`EulerianMap`'s
continuous form with every ``s = 0`` and sCD's defaults: tangent normalisation ``g / (|g| + 0.1)``, a warm-up of the
JVP term, a stop-gradient target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .eulerian import EulerianMap, EulerianMapConfig
from .timesteps import TimePairs


@dataclass
class ContinuousConsistencyConfig(EulerianMapConfig):
    """As :class:`EulerianMapConfig`; ``times`` draws ``t`` only (``s = 0``); ``epsilon`` stays 0."""

    times: TimePairs = field(default_factory=lambda: TimePairs(share_equal=0.0, share_zero=1.0))
    warmup_steps: int = 1000
    epsilon: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.epsilon != 0.0:
            raise ValueError("ContinuousConsistency is the continuous form: epsilon must be 0 (use EulerianMap)")


class ContinuousConsistency(EulerianMap):
    """``objective(student, batch, step) -> LossOutput`` at ``s = 0``."""

    config_class = ContinuousConsistencyConfig

    def sample_times(self, batch_size: int):
        t, _ = super().sample_times(batch_size)
        return t, torch.zeros_like(t)
