"""Eulerian map distillation (Boffi et al. 2024, §3.2 "EMD"; Sabour et al. 2025, "AYF-EMD"; docs/methods.md).

An exact flow map is constant along the teacher's trajectories: ``d_t X(x, t, s) + d_x X(x, t, s) v(x, t) = 0``.
Discrete form (``epsilon > 0``): move ``x_t`` one teacher step to ``t' = t + epsilon (s - t)`` and ask
``X(x_t, t, s) = sg X⁻(x_t', t', s)``; in average velocities, ``F_tgt = epsilon v_bar + (1 - epsilon) F⁻(x_t', t', s)``
with ``v_bar`` the teacher step's mean velocity. Continuous form (``epsilon = 0``): the limit,
``F_tgt = v + (s - t) dF⁻/dt`` (a JVP, as MeanFlow), with sCM's tangent normalisation and warm-up
(Lu & Song 2024, §4.2): the regression moves ``F`` along ``-g / (|g| + c)``, ``g = F⁻ - F_tgt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..conventions import per_example
from .base import Batch, DistillationConfig, DistillationObjective, LossOutput, noised, select
from .meanflow import eulerian_target


@dataclass
class EulerianMapConfig(DistillationConfig):
    """``epsilon``: the discrete step's share of ``t - s`` (0: the continuous JVP form). ``teacher_solver``: the
    discrete step's solver. ``tangent_norm``: ``c`` of the tangent normalisation (``None``: off; continuous form).
    ``warmup_steps``: training steps over which the JVP term ramps from 0 to 1 (continuous form). ``target_ema``:
    ``X⁻``'s decay (0: stop-gradient copy of the current weights). ``jvp_mode``: see ``distill.jvp``."""

    epsilon: float = 0.1
    teacher_solver: str = "heun"
    tangent_norm: float | None = 0.1
    warmup_steps: int = 0
    target_ema: float = 0.0
    jvp_mode: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must lie in [0, 1), got {self.epsilon}")


class EulerianMap(DistillationObjective):
    """``objective(student, batch, step) -> LossOutput`` for any ``s <= t``.

    Args:
        teacher: the velocity field.
        config: :class:`EulerianMapConfig`.
    """

    config_class = EulerianMapConfig

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        t, s = self.sample_times(batch.x.shape[0])
        x_t = noised(batch.x, t)
        target = self.target_network(student, step)
        if self.config.epsilon > 0:
            F_tgt = self.discrete_target(target, x_t, t, s, batch.cond)
        else:
            F_tgt = self.continuous_target(target, x_t, t, s, batch.cond, step)
        F = student(x_t, t, s, batch.cond, output="average_velocity")
        return self.compare(F, F_tgt)

    def discrete_target(self, target, x_t: Tensor, t: Tensor, s: Tensor, cond) -> Tensor:
        epsilon = self.config.epsilon
        t_prime = t + epsilon * (s - t)
        with torch.no_grad():
            v = self.velocity(x_t, t, cond)
            x_prime = self.teacher_step(x_t, t, t_prime, cond, self.config.teacher_solver, v_start=v)
            moved = t_prime != t
            step = torch.where(moved, t_prime - t, torch.ones_like(t))
            v_bar = select(moved, (x_prime - x_t) / per_example(step, x_t), v)  # the step's mean velocity
            F_prime = target(x_prime, t_prime, s, cond, output="average_velocity")
            F_tgt = epsilon * v_bar + (1 - epsilon) * F_prime
        return select(s == t, v_bar, F_tgt)  # s = t: the flow-matching anchor

    def continuous_target(self, target, x_t: Tensor, t: Tensor, s: Tensor, cond, step: int) -> Tensor:
        v = self.velocity(x_t, t, cond)
        ramp = min(1.0, (step + 1) / self.config.warmup_steps) if self.config.warmup_steps else 1.0

        def average_velocity(x, t_, s_):
            return target(x, t_, s_, cond, output="average_velocity")

        F_tgt = eulerian_target(self, average_velocity, x_t, t, s, v, scale=ramp)
        if self.config.tangent_norm is None:
            return F_tgt
        with torch.no_grad():
            F_minus = average_velocity(x_t, t, s)
            g = F_minus - F_tgt
            norm = g.flatten(1).norm(dim=1)
            return F_minus - g / per_example(norm + self.config.tangent_norm, g).to(g.dtype)


