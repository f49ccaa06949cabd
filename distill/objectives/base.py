"""What every objective takes and returns, and the pieces the distillation objectives share (docs/methods.md)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..conditions import map_condition, split_scale, with_scale
from ..conventions import per_example
from ..jvp import chosen_mode, jvp
from ..solvers import ONE_STEP_SOLVERS, heun_step
from ..teachers.guided import guide
from .timesteps import TimePairs

DISTANCES = ("l2", "pseudo_huber")


@dataclass
class Batch:
    """A training batch: samples ``x`` [B, ...] and optional conditioning (class labels [B], ...)."""

    x: Tensor
    cond: Tensor | dict | None = None


@dataclass
class LossOutput:
    """A scalar ``loss`` to minimise and float ``metrics`` to log."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper: for reading its attributes, and for stop-gradient work
    (a detached JVP) that must not go through the wrapper's gradient bookkeeping."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class DistillationConfig:
    """Settings every distillation objective shares.

    ``times``: how (t, s) pairs are drawn. ``guidance``: classifier-free guidance of the teacher (its
    ``info.null_label`` is the unconditional class): a scale ``w`` baked into every target, or a range
    ``[w_min, w_max]`` from which each example draws its own ``w`` (uniformly), which the student then takes as an
    input (``FlowMap.add_guidance_embedding``); ``None``: the plain teacher. ``distance``: ``l2`` (the
    squared norm ``|a - b|^2`` per example) or ``pseudo_huber`` (``sqrt(|a - b|^2 + c^2) - c``,
    ``c = 0.00054 sqrt(dim)``; Song & Dhariwal 2023, §3.3). ``adaptive_p``, ``adaptive_c``: the adaptive weight
    ``1 / (d + c)^p`` on each example's distance ``d`` (stop-gradient; Geng et al. 2025, §4.3; p = 0 is off).
    ``conversion_steps``: the first steps teach a student whose output rule differs from its teacher's
    (``distill.students.outputs``) its new output, ``F(x_t, t, t) = v_teacher(x_t, t)``, before the objective itself.
    ``prompts``: a text-to-image teacher's prompt dataset (``distill.prompts.load_prompts``; ``None``: the training
    phrasings of its folder's ``prompts.json``)."""

    times: TimePairs = field(default_factory=TimePairs)
    guidance: float | list[float] | None = None
    distance: str = "l2"
    adaptive_p: float = 0.0
    adaptive_c: float = 1e-3
    conversion_steps: int = 0
    prompts: str | None = None

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; use one of {', '.join(DISTANCES)}")
        if isinstance(self.guidance, list) and (len(self.guidance) != 2 or self.guidance[0] > self.guidance[1]):
            raise ValueError(f"guidance must be a scale or a range [w_min, w_max], got {self.guidance}")
        if self.conversion_steps < 0:
            raise ValueError(f"conversion_steps must be >= 0, got {self.conversion_steps}")

    @property
    def guidance_range(self) -> tuple[float, float] | None:
        """``(w_min, w_max)`` when the student is conditioned on the guidance scale, else ``None``."""
        return tuple(self.guidance) if isinstance(self.guidance, list) else None


class Objective:
    """What the training loop calls: ``objective(model, batch, step) -> LossOutput``, and the objective's own state
    (target networks, auxiliary networks and their optimisers) that a checkpoint carries; stateless by default."""

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> LossOutput:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        """Restore :meth:`state_dict`'s tensors (``model``: the trained model, for state shaped like it)."""


class LossFunction(Objective):
    """A plain function ``loss(model, batch, step) -> LossOutput`` as a stateless :class:`Objective`."""

    def __init__(self, function: Callable[[nn.Module, Batch, int], LossOutput]):
        self.function = function

    def __call__(self, model: nn.Module, batch: Batch, step: int) -> LossOutput:
        return self.function(model, batch, step)


class DistillationObjective(Objective):
    """Base of the flow-map distillation objectives: ``objective(student, batch, step) -> LossOutput``.

    Args:
        teacher: the velocity field to distil (:class:`~distill.teachers.Teacher`).
        config: the objective's config dataclass (a subclass of :class:`DistillationConfig`).
    """

    config_class = DistillationConfig

    def __init__(self, teacher, config: DistillationConfig | None = None):
        self.config = config or self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, "
                            f"got {type(self.config).__name__}")
        self.teacher = guide(teacher, self.config.guidance)
        self._jvp_mode = getattr(self.config, "jvp_mode", "auto")
        # X⁻ for the methods whose config has a target_ema
        self.target_network = TargetNetwork(self.config.target_ema) if hasattr(self.config, "target_ema") else None

    def __call__(self, student, batch: Batch, step: int) -> LossOutput:
        """The loss on ``batch``; with a guidance range, each example first draws its guidance scale (unless the data
        carry theirs, as guided teacher trajectories do)."""
        scales = self.config.guidance_range
        if scales is not None and split_scale(batch.cond)[1] is None:
            w = torch.empty(batch.x.shape[0], device=batch.x.device).uniform_(*scales)
            batch = Batch(batch.x, with_scale(batch.cond, w))
        if step < self.config.conversion_steps:
            return self.conversion_loss(student, batch)
        return self.loss(student, batch, step)

    def conversion_loss(self, student, batch: Batch) -> LossOutput:
        """``F_theta(x_t, t, t)`` against the teacher's velocity on noised data points, measured in the network's own
        output units: ``|(F - v) / b|^2 = |out - out_target|^2`` with ``F = a x + b out`` (the student's output rule;
        unit weight at every ``t``, as EDM's loss weighting gives)."""
        x_data = self.data_points(batch)
        t, _ = self.sample_times(x_data.shape[0])
        x_t = noised(x_data, t)
        v = self.velocity(x_t, t, batch.cond)
        F = student(x_t, t, t, batch.cond, output="average_velocity")
        b = per_example(unwrap(student).output_coefficients(t)[1], F)
        return self.compare(F / b, v / b, conversion=1.0)

    def data_points(self, batch: Batch) -> Tensor:
        """Clean samples [B, ...] in a batch (real data; objectives on other data override this)."""
        return batch.x

    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        raise NotImplementedError

    def training_data(self, progress: bool = True):
        """The data an objective makes for itself (teacher trajectories), or ``None``: it trains on the run's data."""
        return None

    def state_dict(self) -> dict[str, Tensor]:
        """The objective's own state to checkpoint with the run (the target network's EMA weights)."""
        return {} if self.target_network is None else self.target_network.state_dict()

    def load_state_dict(self, state: dict[str, Tensor], student: nn.Module) -> None:
        if self.target_network is not None:
            self.target_network.load_state_dict(state, student)

    # --- shared steps -----------------------------------------------------------------------------------------
    def sample_times(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """``(t, s)`` float64 [B] on the teacher's range, ``s <= t``."""
        return self.config.times.sample(batch_size, self.teacher.t_min, self.teacher.t_max)

    def velocity(self, x: Tensor, t: Tensor, cond) -> Tensor:
        """The teacher's velocity, without gradient."""
        with torch.no_grad():
            return self.teacher.velocity(x, t, cond)

    def teacher_step(self, x: Tensor, t: Tensor, s: Tensor, cond, solver: str = "heun", substeps: int = 1,
                     v_start: Tensor | None = None) -> Tensor:
        """Move ``x`` from ``t`` to ``s`` (per example) with ``substeps`` Euler or Heun steps of the teacher (Heun by
        ``solvers.heun_step``: Euler on a step that ends below the teacher's ``t_min``). ``v_start``: the teacher's
        velocity at ``(x, t)`` when the caller has it already."""
        if solver not in ONE_STEP_SOLVERS:
            raise ValueError(f"unknown teacher solver {solver!r}; use one of {', '.join(ONE_STEP_SOLVERS)}")

        def velocity(y: Tensor, u: Tensor) -> Tensor:
            return self.velocity(y, u, cond)

        for k in range(substeps):
            t_k = t + (s - t) * (k / substeps)
            s_k = t + (s - t) * ((k + 1) / substeps)
            v = v_start if k == 0 else None
            if solver == "euler":
                x = x + per_example(s_k - t_k, x) * (velocity(x, t_k) if v is None else v)
            else:
                x = heun_step(velocity, x, t_k, s_k, self.teacher.t_min, v)
        return x

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-example distance [B] between two batches (``config.distance``)."""
        squared = (a.float() - b.float()).pow(2).flatten(1)
        if self.config.distance == "l2":
            return squared.sum(1)
        c = 0.00054 * squared.shape[1] ** 0.5
        return (squared.sum(1) + c * c).sqrt() - c

    def compare(self, a: Tensor, b: Tensor, **metrics: float) -> LossOutput:
        """The loss between ``a`` (with gradient) and its target ``b``: the mean over the batch of the per-example
        distance, adaptively weighted; it logs the unweighted distance and ``mse``, the mean squared error per
        element (what the exact-map tests read)."""
        distance = self.distance(a, b)
        config = self.config
        weight = (distance.detach() + config.adaptive_c).pow(-config.adaptive_p) if config.adaptive_p else 1.0
        loss = (weight * distance).mean()
        mse = (a.detach().float() - b.detach().float()).pow(2).mean()
        return LossOutput(loss, {"loss": loss.item(), "distance": distance.mean().item(), "mse": mse.item(),
                                 **metrics})

    def jvp(self, fn, primals: tuple[Tensor, ...], tangents: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """``distill.jvp`` in the configured mode; an ``auto`` choice is remembered for the following steps."""
        output, product = jvp(fn, primals, tangents, mode=self._jvp_mode)
        self._jvp_mode = chosen_mode(fn) or self._jvp_mode
        return output, product


def noised(x_data: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x_data + t noise`` with fresh noise (the canonical path)."""
    return per_example(1 - t, x_data) * x_data + per_example(t, x_data) * torch.randn_like(x_data)


def repeat_batch(value, times: int):
    """A tensor, dict of tensors or ``None`` repeated ``times`` along the batch dimension (several evaluations in
    one forward pass, so DistributedDataParallel sees a single call)."""
    return map_condition(lambda tensor: torch.cat([tensor] * times), value)


def select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per example: ``a`` where ``mask`` [B] holds, else ``b``."""
    return torch.where(mask.to(a.device).view(-1, *[1] * (a.ndim - 1)), a, b)


def gap(t: Tensor, s: Tensor, like: Tensor) -> Tensor:
    """``s - t`` broadcast against ``like``."""
    return per_example(s - t, like)


class TargetNetwork:
    """``X⁻``: the student's weights without gradient. ``decay = 0`` is the stop-gradient copy of the current
    weights (sCM, ECT); ``decay > 0`` keeps an exponential moving average (Song et al. 2023, eq. 8), updated once per
    training step and saved with the run (``state_dict``).

    Gradients still flow through the *inputs* of a target call (CTM maps the student's output with it)."""

    def __init__(self, decay: float = 0.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"target EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.average: nn.Module | None = None
        self._step: int | None = None

    def __call__(self, student: nn.Module, step: int):
        """A function ``(x, t, s, cond, output="map") -> X⁻`` for this step."""
        inner = unwrap(student)
        if self.decay == 0.0:
            weights = {name: p.detach() for name, p in inner.named_parameters()}
            return lambda *args, **kwargs: torch.func.functional_call(inner, weights, args, kwargs)
        if self.average is None:
            self.average = copy.deepcopy(inner).requires_grad_(False)
        elif step != self._step:
            with torch.no_grad():
                for average, current in zip(self.average.parameters(), inner.parameters()):
                    average.lerp_(current.detach().to(average.dtype), 1 - self.decay)
        self._step = step
        return self.average

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.average is None else dict(self.average.state_dict())

    def load_state_dict(self, state: dict[str, Tensor], student: nn.Module) -> None:
        if state:
            self.average = copy.deepcopy(unwrap(student)).requires_grad_(False)
            self.average.load_state_dict(state)
