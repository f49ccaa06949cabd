"""Small built-in networks for vectors and images trained from scratch."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style embedding of scalars [B] -> [B, dim] (Vaswani et al. 2017, §3.5), as diffusers' timesteps."""
    half = dim // 2
    dtype = values.dtype if values.is_floating_point() else torch.float32
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=dtype) / half)
    angles = values.to(dtype)[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class _TimeConditionedMLP(nn.Module):
    """An MLP on ``[x, embedding(time_1), ..., embedding(time_k)]``: ``depth`` SiLU hidden layers of width
    ``hidden``, then a linear layer back to ``dim``."""

    times: int = 1

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embedding_dim: int = 64):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "embedding_dim": embedding_dim}
        self.embedding_dim = embedding_dim
        layers: list[nn.Module] = [nn.Linear(dim + self.times * embedding_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def _run(self, x: Tensor, *times: Tensor) -> Tensor:
        embedded = [sinusoidal_embedding(v, self.embedding_dim).to(x.dtype) for v in times]
        return self.net(torch.cat([x, *embedded], dim=1))


class VelocityMLP(_TimeConditionedMLP):
    """``(x [B, D], timestep [B]) -> [B, D]`` with a sinusoidal timestep embedding; the 2-D teachers use it.

    Args: ``dim`` (D), ``hidden`` (width), ``depth`` (hidden layers), ``embedding_dim`` (timestep embedding size).
    """

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        return self._run(x, timestep)


class TwoTimeMLP(_TimeConditionedMLP):
    """A from-scratch flow-map network ``(x [B, D], t [B], s [B]) -> F [B, D]`` in canonical time, on
    ``[x, embedding(1000 t), embedding(1000 (t - s))]``. Arguments as :class:`VelocityMLP`."""

    times = 2

    def forward(self, x: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
        if cond is not None:
            raise ValueError("TwoTimeMLP is unconditional: call it without cond")
        return self._run(x, 1000 * t, 1000 * (t - s))


NETWORKS = {"VelocityMLP": VelocityMLP, "TwoTimeMLP": TwoTimeMLP}
