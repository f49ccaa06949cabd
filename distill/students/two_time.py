"""Students on a from-scratch two-time network ``network(x, t, s, cond) -> F`` (``distill.nets``' ``TwoTimeMLP``,
``TwoTimeUNet``): the network outputs the average velocity itself."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..conventions import per_example
from ..nets import NETWORKS
from ..teachers.base import as_time_batch
from ..weights import load_weights
from .base import FlowMap

NETWORK_WEIGHTS = "network.safetensors"


class TwoTimeFlowMap(FlowMap):
    """``TwoTimeFlowMap(TwoTimeMLP(...), sample_shape=(2,))``: ``F(x, t, s) = network(x, t, s, cond)``."""

    kind = "two_time_network"
    output_rule = "velocity"

    def __init__(self, network: nn.Module, *, t_min: float = 0.0, t_max: float = 1.0,
                 sample_shape: tuple[int, ...] | None = None, info=None):
        if not isinstance(network, nn.Module):
            raise TypeError(f"a two-time student is built on a network module, got {type(network).__name__}")
        super().__init__(t_min=t_min, t_max=t_max, sample_shape=sample_shape, info=info)
        self.base = network.requires_grad_(True)

    def average_velocity(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None) -> Tensor:
        t = as_time_batch(t, x.shape[0], "FlowMap").to(x.device, x.dtype)
        s = as_time_batch(s, x.shape[0], "FlowMap").to(x.device, x.dtype)
        return self.base(x, t, s, cond)

    def output_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``F = out``: ``a = 0``, ``b = 1``."""
        return torch.zeros(len(t), dtype=torch.float64), torch.ones(len(t), dtype=torch.float64)

    def time_scalars(self, t: Tensor) -> dict[str, Tensor]:
        return {}

    def step_scalars(self, time_scalars: dict[str, Tensor], t: Tensor, s: Tensor) -> dict[str, Tensor]:
        return {"t": t, "s": s}

    def scalar_jump(self, x: Tensor, scalars: dict[str, Tensor], cond=None, guidance: Tensor | None = None) -> Tensor:
        t, s = scalars["t"].expand(x.shape[0]), scalars["s"].expand(x.shape[0])
        return x + per_example(s - t, x) * self.base(x, t, s, cond)

    def save_pretrained(self, folder: str | Path) -> Path:
        """The built-in network's safetensors and its constructor arguments."""
        from safetensors.torch import save_file

        if type(self.base).__name__ not in NETWORKS:
            raise ValueError(f"only built-in networks ({', '.join(NETWORKS)}) can be saved this way")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.base.state_dict().items()}, folder / NETWORK_WEIGHTS)
        return self.write_spec(folder, {"kind": self.kind, "network": type(self.base).__name__,
                                        "network_config": self.base.config, "t_min": self.t_min,
                                        "t_max": self.t_max, "sample_shape": list(self.sample_shape or [])})

    @classmethod
    def from_folder(cls, folder: Path, spec: dict, teacher=None) -> TwoTimeFlowMap:
        network = load_weights(NETWORKS[spec["network"]](**spec["network_config"]), folder / NETWORK_WEIGHTS)
        return cls(network, t_min=spec["t_min"], t_max=spec["t_max"], sample_shape=tuple(spec["sample_shape"]) or None,
                   info=spec["info"])
