"""The denoising loss that trains a teacher in its own parameterization (Ho et al. 2020, eq. 14; Lipman et al.
2023, eq. 23 for flow matching): ``|| network(x_t, t) - target(x_data, noise, t) ||^2``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..conventions import F64, DiscreteVPSchedule, per_example
from ..teachers.base import NetworkTeacher
from .base import Batch, LossOutput, Objective, unwrap

TIME_SAMPLING = ("table", "uniform", "logit_normal")


@dataclass
class DenoisingConfig:
    """``time_sampling``: ``table`` (uniform over a discrete schedule's training timesteps, DDPM), ``uniform`` in
    canonical t over the trained range, or ``logit_normal`` (Esser et al. 2024, eq. 19: ``t = sigmoid(m + s z)``).
    ``label_dropout``: share of labels replaced by ``null_label`` (classifier-free guidance, Ho & Salimans 2022)."""

    time_sampling: str = "table"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; use one of {', '.join(TIME_SAMPLING)}")
        if self.label_dropout > 0 and self.null_label is None:
            raise ValueError("label_dropout > 0 needs null_label (the class index meaning 'no class')")


class DenoisingLoss(Objective):
    """Mean squared error between the network's raw output and its exact-network target.

    Args:
        config: time sampling and label dropout.
    The model passed at call time is a :class:`~distill.teachers.base.NetworkTeacher` whose network is trainable.
    """

    def __init__(self, config: DenoisingConfig | None = None):
        self.config = config or DenoisingConfig()

    def sample_times(self, model: NetworkTeacher, batch: int, generator: torch.Generator | None = None):
        model = unwrap(model)
        schedule, config = model.schedule, self.config
        t_min, t_max = model.t_min, model.t_max
        if config.time_sampling == "table":
            if not isinstance(schedule, DiscreteVPSchedule):
                raise ValueError("time_sampling='table' needs a discrete (DDPM-family) schedule")
            k = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator).to(F64)
            return schedule.canonical_time(k).clamp(t_min, t_max)
        if config.time_sampling == "uniform":
            return t_min + (t_max - t_min) * torch.rand(batch, dtype=F64, generator=generator)
        z = config.logit_mean + config.logit_std * torch.randn(batch, dtype=F64, generator=generator)
        return torch.sigmoid(z).clamp(t_min, t_max)

    def __call__(self, model: NetworkTeacher, batch: Batch, step: int) -> LossOutput:
        x_data = batch.x
        noise = torch.randn_like(x_data)
        t = self.sample_times(model, x_data.shape[0])
        x_t = per_example(1 - t, x_data) * x_data + per_example(t, x_data) * noise  # canonical path
        output = model(x_t, t, self.drop_labels(batch.cond), raw=True)
        target = unwrap(model).parameterization.target(x_data, noise, t)
        loss = (output.float() - target.float()).pow(2).mean()
        return LossOutput(loss, {"loss": loss.item()})

    def drop_labels(self, cond):
        p = self.config.label_dropout
        if p <= 0 or cond is None:
            return cond
        drop = torch.rand(cond.shape[0], device=cond.device) < p
        return torch.where(drop, torch.full_like(cond, self.config.null_label), cond)
