"""A plain torch module with a declared prediction type and schedule, as a teacher."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from ..conventions import Parameterization, Schedule
from .base import NetworkTeacher
from .diffusers_teacher import parameterization_from_scheduler

TEACHER_FILE = "teacher.json"
WEIGHTS_FILE = "model.safetensors"


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
        self.scheduler_config: dict | None = None  # the diffusers scheduler config it was declared with, if any

    @classmethod
    def from_scheduler_config(cls, module: nn.Module, scheduler_config: dict,
                              sample_shape: tuple[int, ...] | None = None) -> ModuleTeacher:
        """Declare the schedule and prediction type with a diffusers scheduler config (``_class_name`` included)."""
        config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        param = parameterization_from_scheduler(scheduler_config.get("_class_name", ""), config)
        teacher = cls(module, param.schedule, param.prediction_type, sample_shape=sample_shape,
                      sigma_data=param.sigma_data)
        teacher.scheduler_config = dict(scheduler_config)
        return teacher

    @property
    def network(self) -> nn.Module:
        return self.module

    def call_network(self, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        timestep = timestep.to(x_in.dtype).to(x_in.device)
        return self.module(x_in, timestep) if cond is None else self.module(x_in, timestep, cond)

    def save_pretrained(self, folder: str | Path) -> Path:
        """``teacher.json`` (network class and config, scheduler config, sample shape) + ``model.safetensors``."""
        from safetensors.torch import save_file

        network_config = getattr(self.module, "config", None)
        if network_config is None or self.scheduler_config is None:
            raise ValueError("only a built-in network (distill.nets) declared with a scheduler config can be saved")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.module.state_dict().items()}, folder / WEIGHTS_FILE)
        spec = {"network": type(self.module).__name__, "network_config": network_config,
                "scheduler": self.scheduler_config, "sample_shape": list(self.sample_shape or [])}
        (folder / TEACHER_FILE).write_text(json.dumps(spec, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ModuleTeacher:
        from ..nets import NETWORKS
        from ..weights import load_weights

        folder = Path(folder)
        spec = json.loads((folder / TEACHER_FILE).read_text())
        if spec.get("network") not in NETWORKS:
            raise ValueError(f"{folder / TEACHER_FILE}: unknown network {spec.get('network')!r}; "
                             f"built-in networks: {', '.join(NETWORKS)}")
        module = load_weights(NETWORKS[spec["network"]](**spec["network_config"]), folder / WEIGHTS_FILE)
        return cls.from_scheduler_config(module, spec["scheduler"], tuple(spec["sample_shape"]) or None)
