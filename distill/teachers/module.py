"""A plain torch module with a declared prediction type and schedule, as a teacher."""

from __future__ import annotations

from torch import Tensor, nn

from ..conventions import Parameterization, Schedule
from .base import NetworkTeacher


class ModuleTeacher(NetworkTeacher):
    """Wrap ``module(x_in, timestep)`` (or ``module(x_in, timestep, cond)`` when ``cond`` is given).

    ``x_in`` is the module's native input (``alpha x_data + sigma noise``, EDM-scaled for ``"edm"``) and ``timestep``
    the schedule's network time (e.g. the DDPM timestep index, ``1000 * sigma`` for flow matching) as a [B] tensor
    in ``x``'s dtype.

    Args:
        module: the network; it is frozen and put in eval mode.
        schedule: its training schedule, e.g. ``DiscreteVPSchedule.from_betas(beta_schedule="linear")``.
        prediction_type: one of ``distill.conventions.PREDICTION_TYPES``.
        sample_shape: per-example state shape (checked on every call when given).
        sigma_data: EDM's data standard deviation (``"edm"`` prediction only).
    """

    def __init__(
        self,
        module: nn.Module,
        schedule: Schedule,
        prediction_type: str,
        *,
        sample_shape: tuple[int, ...] | None = None,
        sigma_data: float = 0.5,
    ):
        if not isinstance(module, nn.Module):
            raise TypeError(f"ModuleTeacher wraps a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a distill.conventions.Schedule, got {type(schedule).__name__}")
        super().__init__(Parameterization(schedule, prediction_type, sigma_data))
        self.module = module.eval().requires_grad_(False)
        self.sample_shape = None if sample_shape is None else tuple(sample_shape)

    def call_network(self, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        timestep = timestep.to(x_in.dtype).to(x_in.device)
        return self.module(x_in, timestep) if cond is None else self.module(x_in, timestep, cond)
