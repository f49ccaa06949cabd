"""The teacher contract: a velocity field in canonical time, ``velocity(x, t, cond=None)``."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from ..conventions import F64, Parameterization
from ..model_info import InfoAttribute


class Teacher(nn.Module):
    """A pretrained diffusion model seen as the canonical velocity field ``v(x, t) = E[noise - x_data | x_t = x]``.

    Subclasses implement :meth:`velocity`. ``t_min``/``t_max`` bound the canonical times the model was trained on;
    sampling starts at ``t_max`` from ``x = t_max * noise``. ``sample_shape`` is the per-example state shape when the
    teacher knows it (``None`` otherwise). ``info`` (:class:`~distill.model_info.ModelInfo`, ``distill.json`` of a
    saved teacher) holds the training data's name and size and, for class-conditional teachers, ``num_classes`` and
    ``null_label``.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    sample_shape: tuple[int, ...] | None = None
    info = InfoAttribute()  # what the teacher was trained on, if known (a mapping assigned here is converted)

    @abstractmethod
    def velocity(self, x: Tensor, t: Tensor | float, cond=None) -> Tensor:
        """Canonical velocity at ``(x, t)``.

        Args:
            x: canonical state, [B, ...].
            t: canonical time in [0, 1], a [B] tensor or a number (broadcast).
            cond: conditioning (class labels, encoder states, ...), or None.

        Returns:
            ``v``, shaped and typed like ``x``.
        """

    def forward(self, x: Tensor, t: Tensor | float, cond=None) -> Tensor:
        return self.velocity(x, t, cond)

    # --- capabilities a teacher may declare (the defaults say it has none) --------------------------------------
    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """``n`` exact draws of its data distribution, for an analytic teacher; ``None`` for a learned one."""
        return None

    def flow_map(self, x: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor | None:
        """Its exact flow map ``X(x, t, s)``, for an analytic teacher; ``None`` for a learned one."""
        return None

    @property
    def unguided(self) -> Teacher:
        """The teacher without classifier-free guidance (itself, unless it is a guidance wrapper)."""
        return self

    def null_condition(self):
        """The unconditional input of classifier-free guidance: the null class its info names (``None``: none)."""
        return self.info.null_label

    def encode_prompts(self, prompts: list[str], device=None):
        """The condition for ``prompts``, for a text-conditioned teacher (a text-to-image pipeline)."""
        raise TypeError(f"{type(self).__name__} is not text-conditioned: prompts need a text-to-image pipeline "
                        "teacher (a diffusers folder with text_encoder/ and vae/)")

    def decode(self, x: Tensor) -> Tensor:
        """Images from clean states: the VAE's decoding for a latent teacher, the states themselves otherwise."""
        return x

    def prompt_set(self, split: str = "train"):
        """A text-to-image teacher's own prompts (``distill.prompts.PromptSet``); ``None`` for any other teacher."""
        return None

    def training_grid(self, steps: int, **options) -> Tensor:
        """Canonical times of this teacher's own sampler with ``steps`` steps (see ``Schedule.training_grid``)."""
        raise NotImplementedError(f"{type(self).__name__} has no training-timestep grid; use grid='uniform'")

    def check_inputs(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Validate ``x`` against ``sample_shape`` and return ``t`` as a float64 [B] tensor in [0, 1]."""
        name = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name}.velocity: x must be a floating-point tensor [B, ...], got {type(x).__name__}")
        self.check_state(x)
        return as_time_batch(t, x.shape[0], name)

    def check_state(self, x: Tensor) -> None:
        """Raise a ValueError naming the expected shape when ``x`` cannot be this teacher's state."""
        if self.sample_shape is not None and tuple(x.shape[1:]) != tuple(self.sample_shape):
            expected = ", ".join(["B", *map(str, self.sample_shape)])
            raise ValueError(f"{type(self).__name__}.velocity: x must have shape [{expected}], got {list(x.shape)}")


def as_time_batch(t: Tensor | float, batch: int, owner: str = "velocity") -> Tensor:
    """``t`` as a float64 [B] tensor on the CPU (where schedule tables live), checked to lie in [0, 1].

    The conversion keeps ``t``'s autograd graph, so derivatives along time (JVPs with a time tangent) flow through.
    """
    t = torch.as_tensor(t).to("cpu", F64)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{owner}: t must be a number or a [B] tensor with B = {batch}, got shape {list(t.shape)}")
    values = t.detach()
    if bool(torch.isnan(values).any()) or float(values.min()) < 0 or float(values.max()) > 1:
        raise ValueError(f"{owner}: canonical t must lie in [0, 1] (0 = data, 1 = noise), "
                         f"got [{float(values.min())}, {float(values.max())}]")
    return t


class NetworkTeacher(Teacher):
    """A network with a declared :class:`Parameterization`: ``velocity = convert(network(input(x, t), timestep))``.

    Subclasses implement :meth:`call_network`, which receives the network input and its timestep (float64 [B]) and
    returns the raw output in the input's layout.
    """

    def __init__(self, parameterization: Parameterization):
        super().__init__()
        self.parameterization = parameterization
        self.t_min, self.t_max = _valid_range(parameterization)

    @property
    def schedule(self):
        return self.parameterization.schedule

    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The wrapped network (a diffusers model or a plain module): what students copy and adapters go on."""

    @abstractmethod
    def call_network(self, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        """Run the network on its own input and timestep (float64 [B] on the CPU); return its raw prediction."""

    def velocity(self, x: Tensor, t: Tensor | float, cond=None) -> Tensor:
        t = self.check_inputs(x, t)
        return self.parameterization.velocity(self._network_output(x, t, cond), x, t)

    def forward(self, x: Tensor, t: Tensor | float, cond=None, raw: bool = False) -> Tensor:
        """The velocity, or with ``raw=True`` the network's own prediction (what a denoising loss trains).

        Training calls go through ``forward`` so that DistributedDataParallel sees them.
        """
        if not raw:
            return self.velocity(x, t, cond)
        return self._network_output(x, self.check_inputs(x, t), cond)

    def _network_output(self, x: Tensor, t: Tensor, cond) -> Tensor:
        x_in, timestep = self.parameterization.model_input(x, t)
        return self.call_network(x_in, timestep, cond).to(x.dtype)

    def training_grid(self, steps: int, **options) -> Tensor:
        grid = self.schedule.training_grid(steps, **options)
        return grid.clamp(max=self.t_max)


def _valid_range(parameterization: Parameterization) -> tuple[float, float]:
    """The schedule's trained canonical range, without an endpoint where the prediction type is undefined
    (epsilon at alpha = 0: a zero-terminal-SNR table's last entry)."""
    schedule = parameterization.schedule
    t_min, t_max = schedule.t_range
    if parameterization.prediction_type == "epsilon" and t_max >= 1.0:
        table_times = getattr(schedule, "table_times", None)
        if table_times is None:
            raise ValueError("epsilon prediction is undefined at t = 1 (alpha = 0): this schedule reaches it")
        t_max = float(table_times()[-2])
    return t_min, t_max
