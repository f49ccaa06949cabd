"""Small built-in networks for vectors and images trained from scratch (two-time networks for flow-map students)."""

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

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embedding_dim: int = 64,
                 extra_inputs: int = 0):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "embedding_dim": embedding_dim}
        self.embedding_dim = embedding_dim
        layers: list[nn.Module] = [nn.Linear(dim + self.times * embedding_dim + extra_inputs, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def _run(self, x: Tensor, *times: Tensor, extra: tuple[Tensor, ...] = ()) -> Tensor:
        embedded = [sinusoidal_embedding(v, self.embedding_dim).to(x.dtype) for v in times]
        return self.net(torch.cat([x, *embedded, *extra], dim=1))


class VelocityMLP(_TimeConditionedMLP):
    """``(x [B, D], timestep [B]) -> [B, D]`` with a sinusoidal timestep embedding; the 2-D teachers use it.

    Args: ``dim`` (D), ``hidden`` (width), ``depth`` (hidden layers), ``embedding_dim`` (timestep embedding size),
    ``num_classes``: class-conditional on labels ``cond`` [B] in ``0 .. num_classes`` (the last one is the null
    class of classifier-free guidance), through a learned class embedding beside the time embedding.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embedding_dim: int = 64,
                 num_classes: int | None = None):
        super().__init__(dim, hidden, depth, embedding_dim, extra_inputs=embedding_dim if num_classes else 0)
        self.class_embedding = None
        if num_classes:
            self.config["num_classes"] = num_classes
            self.class_embedding = nn.Embedding(num_classes + 1, embedding_dim)

    def forward(self, x: Tensor, timestep: Tensor, cond: Tensor | None = None) -> Tensor:
        if (cond is None) != (self.class_embedding is None):
            raise ValueError("this VelocityMLP is " + ("class-conditional: pass class labels [B]" if cond is None
                                                       else "unconditional: call it without cond"))
        if cond is None:
            return self._run(x, timestep)
        return self._run(x, timestep, extra=(self.class_embedding(cond.long()).to(x.dtype),))


class TwoTimeMLP(_TimeConditionedMLP):
    """A from-scratch flow-map network ``(x [B, D], t [B], s [B]) -> F [B, D]`` in canonical time, on
    ``[x, embedding(time_scale t), embedding(time_scale (t - s))]``. ``time_scale`` bounds the derivative of the
    embedding in time, which the JVP-based objectives differentiate (Lu & Song 2024, §4.1: large scales destabilise
    them). Other arguments as :class:`VelocityMLP`."""

    times = 2

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embedding_dim: int = 64,
                 time_scale: float = 1000.0):
        super().__init__(dim, hidden, depth, embedding_dim)
        self.config["time_scale"] = self.time_scale = time_scale

    def forward(self, x: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
        if cond is not None:
            raise ValueError("TwoTimeMLP is unconditional: call it without cond")
        return self._run(x, self.time_scale * t, self.time_scale * (t - s))


class _ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, a 1x1 skip when the width changes
    (Ho et al. 2020, Appendix B)."""

    def __init__(self, channels_in: int, channels_out: int, embedding_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels_in), channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.embedding = nn.Linear(embedding_dim, channels_out)
        self.norm2 = nn.GroupNorm(_groups(channels_out), channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.embedding(embedding)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class TwoTimeUNet(nn.Module):
    """A small from-scratch flow-map network for images, ``(x [B, C, H, W], t [B], s [B], labels [B] | None) -> F``
    in canonical time: a two-level convolutional UNet whose residual blocks see an embedding of
    ``(1000 t, 1000 (t - s))`` (plus a class embedding when ``num_classes`` is set).

    Args: ``channels`` (C), ``width`` (channels at full resolution; doubled at the lower level), ``blocks`` (residual
    blocks per level), ``num_classes`` (``None``: unconditional; labels may use ``num_classes`` as the null class),
    ``embedding_dim`` (size of each sinusoidal embedding). H and W must be even.
    """

    def __init__(self, channels: int = 1, width: int = 32, blocks: int = 1, num_classes: int | None = None,
                 embedding_dim: int = 64):
        super().__init__()
        self.config = {"channels": channels, "width": width, "blocks": blocks, "num_classes": num_classes,
                       "embedding_dim": embedding_dim}
        self.embedding_dim, hidden = embedding_dim, 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(2 * embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_embedding = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.input = nn.Conv2d(channels, width, 3, padding=1)
        self.down_high = nn.ModuleList(_ResidualBlock(width, width, hidden) for _ in range(blocks))
        self.downsample = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.low = nn.ModuleList(_ResidualBlock(2 * width, 2 * width, hidden) for _ in range(2 * blocks))
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                      nn.Conv2d(2 * width, width, 3, padding=1))
        self.up_high = nn.ModuleList(_ResidualBlock(2 * width if i == 0 else width, width, hidden)
                                     for i in range(blocks))
        self.output = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(),
                                    nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, s: Tensor, cond=None) -> Tensor:
        if (cond is None) != (self.class_embedding is None):
            raise ValueError("TwoTimeUNet: pass class labels exactly when it was built with num_classes")
        if x.ndim != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"TwoTimeUNet takes [B, C, H, W] with even H and W, got {list(x.shape)}")
        times = [sinusoidal_embedding(v, self.embedding_dim).to(x.dtype) for v in (1000 * t, 1000 * (t - s))]
        embedding = self.time_mlp(torch.cat(times, dim=1))  # [B, 4 width]
        if self.class_embedding is not None:
            embedding = embedding + self.class_embedding(cond.long())
        h = self.input(x)  # [B, width, H, W]
        for block in self.down_high:
            h = block(h, embedding)
        skip = h
        h = self.downsample(h)  # [B, 2 width, H/2, W/2]
        for block in self.low:
            h = block(h, embedding)
        h = torch.cat([self.upsample(h), skip], dim=1)  # [B, 2 width, H, W]
        for block in self.up_high:
            h = block(h, embedding)
        return self.output(h)


TWO_TIME_NETWORKS = {"TwoTimeMLP": TwoTimeMLP, "TwoTimeUNet": TwoTimeUNet}  # (x, t, s, cond) -> F: student networks
NETWORKS = {"VelocityMLP": VelocityMLP, **TWO_TIME_NETWORKS}
