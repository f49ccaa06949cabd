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


def _mlp(in_dim: int, hidden: int, depth: int, out_dim: int) -> nn.Sequential:
    """``depth`` SiLU hidden layers of width ``hidden``, then a linear output layer."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class VelocityMLP(nn.Module):
    """An MLP ``(x [B, D], timestep [B]) -> [B, D]`` with a sinusoidal timestep embedding; 2-D teachers use it.

    Args:
        dim: data dimension D.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        embedding_dim: size of the timestep embedding.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embedding_dim: int = 64):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "embedding_dim": embedding_dim}
        self.embedding_dim = embedding_dim
        self.net = _mlp(dim + embedding_dim, hidden, depth, dim)

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        return self.net(torch.cat([x, sinusoidal_embedding(timestep, self.embedding_dim).to(x.dtype)], dim=1))


class TwoTimeMLP(nn.Module):
    """A from-scratch flow-map network ``(x [B, D], t [B], s [B]) -> F [B, D]`` in canonical time: an MLP on
    ``[x, embedding(t), embedding(t - s)]`` (times scaled by 1000 before the sinusoidal embedding).

    Args:
        dim: data dimension D.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        embedding_dim: size of each time embedding.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embedding_dim: int = 64):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "embedding_dim": embedding_dim}
        self.embedding_dim = embedding_dim
        self.net = _mlp(dim + 2 * embedding_dim, hidden, depth, dim)

    def forward(self, x: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
        if cond is not None:
            raise ValueError("TwoTimeMLP is unconditional: call it without cond")
        times = [sinusoidal_embedding(1000 * v, self.embedding_dim).to(x.dtype) for v in (t, t - s)]
        return self.net(torch.cat([x, *times], dim=1))


NETWORKS = {"VelocityMLP": VelocityMLP, "TwoTimeMLP": TwoTimeMLP}
