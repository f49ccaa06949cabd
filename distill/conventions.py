"""The canonical convention, native noise schedules, and prediction-type conversions.

Canonical path (rectified flow, docs/design.md §2)::

    x_t = (1 - t) * x_data + t * noise,   t in [0, 1],   t = 0 is data, t = 1 is noise,
    v(x, t) = E[noise - x_data | x_t = x],   dx/dt = v.

A native Gaussian path ``x_nat = alpha(tau) * x_data + sigma(tau) * noise`` in the schedule's own time ``tau``
maps onto it exactly by ``x = x_nat / (alpha + sigma)`` and ``t = sigma / (alpha + sigma)``. Network outputs of
every prediction type convert through the hub ``(x_data_hat, noise_hat)``; the canonical velocity is
``noise_hat - x_data_hat``. All schedule scalars are float64; they are cast to the state's dtype only when
multiplied into a state.

Everything here is a pure function of its arguments: no network, no diffusers import.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

F64 = torch.float64
HALF_PI = math.pi / 2

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction", "edm", "edm_v")
"""Network output types a teacher may declare.

- ``epsilon``: the noise; ``sample``: the clean data (diffusers' name for x_data);
- ``v_prediction``: ``alpha * noise - sigma * x_data`` (Salimans & Ho 2022, eq. 10-11);
- ``flow_prediction``: the native ODE velocity ``d x_nat / d tau = alpha' x_data + sigma' noise``; for flow
  matching (``alpha = 1 - tau``, ``sigma = tau``) this is ``noise - x_data``;
- ``edm``: the raw network ``F`` of EDM's preconditioned denoiser ``D = c_skip x + c_out F`` (Karras et al.
  2022, eq. 7 and Table 1), with input ``c_in x`` and noise label ``c_noise``; ``edm_v`` is the same with the sign
  of ``c_out`` flipped (diffusers' ``EDMEulerScheduler(prediction_type="v_prediction")``).
"""


def _f64(value: Tensor | float) -> Tensor:
    return torch.as_tensor(value, dtype=F64)


class Schedule(ABC):
    """A native Gaussian path ``x_nat = alpha(tau) x_data + sigma(tau) noise`` in its own time ``tau``.

    Subclasses give ``alpha``, ``sigma`` and their ``tau``-derivatives, the inverse of the canonical time, and the
    value the network is conditioned on. All inputs and outputs are float64 tensors.
    """

    name: ClassVar[str] = "schedule"

    @abstractmethod
    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(tau), sigma(tau))``."""

    @abstractmethod
    def alpha_sigma_derivatives(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(d alpha / d tau, d sigma / d tau)``."""

    @abstractmethod
    def native_time(self, t: Tensor) -> Tensor:
        """Native time ``tau`` at canonical time ``t`` (the inverse of :meth:`canonical_time`)."""

    @property
    @abstractmethod
    def tau_range(self) -> tuple[float, float]:
        """Native times the network was trained on, ``(tau_min, tau_max)``."""

    def canonical_time(self, tau: Tensor) -> Tensor:
        """``t = sigma / (alpha + sigma)``."""
        alpha, sigma = self.alpha_sigma(_f64(tau))
        return sigma / (alpha + sigma)

    def model_timestep(self, tau: Tensor) -> Tensor:
        """The time value fed to the network (diffusers' ``timestep``); by default ``tau`` itself."""
        return tau

    @property
    def t_range(self) -> tuple[float, float]:
        """Canonical times the network was trained on, ``(t_min, t_max)``."""
        lo, hi = self.canonical_time(_f64(list(self.tau_range)))
        return float(lo), float(hi)

    def training_grid(self, steps: int, **options) -> Tensor:
        """The canonical time grid of this schedule's own sampler with ``steps`` steps, ending at ``t = 0``."""
        raise NotImplementedError(f"{type(self).__name__} defines no training-timestep grid; use another grid")

    # --- states -------------------------------------------------------------------------------------------
    def to_canonical(self, x_nat: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        """Native ``(x_nat, tau)`` -> canonical ``(x, t)``; ``tau`` is [B] (or scalar), ``x_nat`` is [B, ...]."""
        alpha, sigma = self.alpha_sigma(_f64(tau))
        scale = per_example(alpha + sigma, x_nat)
        return x_nat / scale, sigma / (alpha + sigma)

    def to_native(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Canonical ``(x, t)`` -> native ``(x_nat, tau)``."""
        tau = self.native_time(_f64(t))
        alpha, sigma = self.alpha_sigma(tau)
        return x * per_example(alpha + sigma, x), tau


def per_example(coefficient: Tensor, like: Tensor) -> Tensor:
    """Reshape a [B] (or scalar) float64 coefficient to broadcast over ``like`` [B, ...] in ``like``'s dtype."""
    if coefficient.ndim == 1:
        coefficient = coefficient.reshape(-1, *([1] * (like.ndim - 1)))
    return coefficient.to(like.dtype).to(like.device)  # cast first: some devices have no float64


# ------------------------------------------------------------------------------------------------------------
# Variance-preserving paths, written by their angle phi: alpha = cos(phi), sigma = sin(phi).
# ------------------------------------------------------------------------------------------------------------
def _cos_sin(phi: Tensor) -> tuple[Tensor, Tensor]:
    # cos(pi/2) is 6e-17 in float64; snap it so zero-terminal-SNR gives alpha == 0 exactly.
    alpha = torch.where(phi >= HALF_PI, torch.zeros_like(phi), torch.cos(phi))
    return alpha, torch.sin(phi)


def make_betas(
    beta_schedule: str = "linear",
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    num_train_timesteps: int = 1000,
    rescale_betas_zero_snr: bool = False,
    trained_betas: list[float] | None = None,
) -> Tensor:
    """The beta table of a DDPM-family scheduler, bit-for-bit as diffusers builds it (float32).

    The network was trained on diffusers' float32 table, so that table, not a float64 re-derivation, is the
    teacher's schedule; everything downstream is float64.
    """
    T = num_train_timesteps
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021, eq. 17: alpha_bar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2, betas capped at 0.999.
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)], dtype=torch.float32
        )
    else:
        raise ValueError(
            f"unknown beta_schedule {beta_schedule!r}; use one of 'linear', 'scaled_linear', 'squaredcos_cap_v2'"
        )
    if rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so the last step has alpha = 0."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True, eq=False)
class DiscreteVPSchedule(Schedule):
    """A DDPM-family table ``alpha_bar[k]`` over integer timesteps ``k = 0 .. T-1`` (native time ``tau = k``).

    ``alpha_k = sqrt(alpha_bar[k])``, ``sigma_k = sqrt(1 - alpha_bar[k])``. Between table points the path is
    interpolated linearly in its angle ``phi = atan2(sigma, alpha)`` (a monotone function of log-SNR, exact at the
    table points and finite at zero terminal SNR, where log-SNR is -inf) and extrapolated linearly beyond them;
    the network's timestep is clamped to the trained range ``[0, T-1]``.

    ``spacing``/``steps_offset``/``final_alpha_one`` describe the sampler's own timesteps (diffusers' DDIM
    ``timestep_spacing``, ``steps_offset`` and ``set_alpha_to_one``) for :meth:`training_grid`.
    """

    alphas_cumprod: Tensor
    spacing: str = "leading"
    steps_offset: int = 0
    final_alpha_one: bool = True
    name: ClassVar[str] = "discrete_vp"

    def __post_init__(self):
        ab = self.alphas_cumprod.to(F64)
        if ab.ndim != 1 or len(ab) < 2 or not bool(((ab >= 0) & (ab <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D table of values in [0, 1] with at least 2 entries")
        phi = torch.atan2((1 - ab).clamp_min(0).sqrt(), ab.sqrt())  # [T], increasing
        if not bool((phi[1:] > phi[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing (noise grows with the timestep)")
        object.__setattr__(self, "alphas_cumprod", ab)
        object.__setattr__(self, "_phi", phi)

    @classmethod
    def from_betas(cls, **config) -> DiscreteVPSchedule:
        """Build from a diffusers DDPM-family scheduler config (beta_schedule, beta_start, ...)."""
        table_keys = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "rescale_betas_zero_snr",
                      "trained_betas")
        betas = make_betas(**{k: config[k] for k in table_keys if k in config})
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float32, as diffusers
        grid_keys = ("spacing", "steps_offset", "final_alpha_one")
        return cls(alphas_cumprod, **{k: config[k] for k in grid_keys if k in config})

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def tau_range(self) -> tuple[float, float]:
        return 0.0, float(self.num_train_timesteps - 1)

    def _slopes(self, index: Tensor) -> Tensor:
        return self._phi[index + 1] - self._phi[index]

    def phi(self, tau: Tensor) -> Tensor:
        tau = _f64(tau)
        index = tau.floor().long().clamp(0, self.num_train_timesteps - 2)
        return self._phi[index] + (tau - index) * self._slopes(index)

    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        return _cos_sin(self.phi(tau))

    def alpha_sigma_derivatives(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = _f64(tau)
        index = tau.floor().long().clamp(0, self.num_train_timesteps - 2)
        dphi = self._slopes(index)
        alpha, sigma = self.alpha_sigma(tau)
        return -sigma * dphi, alpha * dphi

    def native_time(self, t: Tensor) -> Tensor:
        phi = torch.atan2(_f64(t), 1 - _f64(t))
        index = (torch.searchsorted(self._phi, phi.contiguous(), right=True) - 1).clamp(0, self.num_train_timesteps - 2)
        return index + (phi - self._phi[index]) / self._slopes(index)

    def model_timestep(self, tau: Tensor) -> Tensor:
        return tau.clamp(*self.tau_range)

    def table_times(self) -> Tensor:
        """Canonical time of every table entry, [T]."""
        return self.canonical_time(torch.arange(self.num_train_timesteps, dtype=F64))

    def training_timesteps(self, steps: int) -> Tensor:
        """Integer timesteps of diffusers' DDIM ``set_timesteps(steps)`` for this spacing, [steps]."""
        T = self.num_train_timesteps
        if not 0 < steps <= T:
            raise ValueError(f"steps must be in 1..{T}, got {steps}")
        if self.spacing == "linspace":
            k = torch.linspace(0, T - 1, steps, dtype=F64).round().flip(0)
        elif self.spacing == "leading":
            k = (torch.arange(steps, dtype=F64) * (T // steps)).round().flip(0) + self.steps_offset
        elif self.spacing == "trailing":
            k = torch.arange(T, 0, -T / steps, dtype=F64).round() - 1
        else:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; use 'linspace', 'leading' or 'trailing'")
        return k

    def training_grid(self, steps: int, **options) -> Tensor:
        """Canonical times of the DDIM timesteps, then the final time (0, or the first table entry)."""
        final = 0.0 if self.final_alpha_one else float(self.table_times()[0])
        return torch.cat([self.canonical_time(self.training_timesteps(steps)), _f64([final])])


@dataclass(frozen=True, eq=False)
class TrigFlowSchedule(Schedule):
    """TrigFlow (Lu & Song 2024, §2): ``x = cos(tau) x_data + sin(tau) sigma_data noise``, ``tau in [0, pi/2]``.

    Its ``flow_prediction`` is ``d x / d tau``; the network is conditioned on ``timestep_scale * tau``.
    """

    sigma_data: float = 1.0
    timestep_scale: float = 1.0
    name: ClassVar[str] = "trigflow"

    @property
    def tau_range(self) -> tuple[float, float]:
        return 0.0, HALF_PI

    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sin = _cos_sin(_f64(tau))
        return alpha, self.sigma_data * sin

    def alpha_sigma_derivatives(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = _f64(tau)
        return -torch.sin(tau), self.sigma_data * torch.cos(tau)

    def native_time(self, t: Tensor) -> Tensor:
        t = _f64(t)
        return torch.atan2(t, self.sigma_data * (1 - t))

    def model_timestep(self, tau: Tensor) -> Tensor:
        return self.timestep_scale * tau

    def training_grid(self, steps: int, **options) -> Tensor:
        return self.canonical_time(torch.linspace(HALF_PI, 0.0, steps + 1, dtype=F64))


@dataclass(frozen=True, eq=False)
class VESchedule(Schedule):
    """Variance-exploding / EDM path ``x = x_data + sigma noise`` with native time ``tau = sigma``.

    The network is conditioned on EDM's ``c_noise = log(sigma) / 4`` (Karras et al. 2022, Table 1), as
    diffusers' ``EDMEulerScheduler``. ``t_max < 1``: the VE path never reaches pure noise.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name: ClassVar[str] = "ve"

    @property
    def tau_range(self) -> tuple[float, float]:
        return self.sigma_min, self.sigma_max

    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = _f64(tau)
        return torch.ones_like(tau), tau

    def alpha_sigma_derivatives(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = _f64(tau)
        return torch.zeros_like(tau), torch.ones_like(tau)

    def native_time(self, t: Tensor) -> Tensor:
        t = _f64(t)
        return t / (1 - t)

    def model_timestep(self, tau: Tensor) -> Tensor:
        return 0.25 * torch.log(tau)

    def training_grid(self, steps: int, **options) -> Tensor:
        """EDM's rho-spaced sigmas (Karras et al. 2022, eq. 5) from sigma_max to sigma_min, then t = 0."""
        return karras_sigmas_grid(steps, self.sigma_min, self.sigma_max, options.get("rho", self.rho))


def karras_sigmas_grid(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Canonical times of EDM's ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0..N-1``, followed by ``t = 0``. ``sigma`` is the VE noise level ``t / (1 - t)``."""
    ramp = torch.linspace(0, 1, steps, dtype=F64) if steps > 1 else torch.zeros(1, dtype=F64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas / (1 + sigmas), _f64([0.0])])


@dataclass(frozen=True, eq=False)
class FlowMatchSchedule(Schedule):
    """Flow matching ``x = (1 - sigma) x_data + sigma noise`` (native time ``tau = sigma = t``), as diffusers'
    ``FlowMatchEulerDiscreteScheduler``.

    The path is already canonical; ``shift`` only moves the time grid, ``sigma -> shift sigma / (1 + (shift - 1)
    sigma)`` (Esser et al. 2024, eq. 23). With ``use_dynamic_shifting`` the grid is shifted by
    ``exp(mu) / (exp(mu) + (1/sigma - 1))`` with ``mu`` given at sampling time (FLUX). The network is conditioned on
    ``sigma * num_train_timesteps``.
    """

    shift: float = 1.0
    num_train_timesteps: int = 1000
    use_dynamic_shifting: bool = False
    name: ClassVar[str] = "flow_match"

    @property
    def tau_range(self) -> tuple[float, float]:
        lowest = 1.0 / self.num_train_timesteps
        return (lowest if self.use_dynamic_shifting else self.shift_sigma(lowest)), 1.0

    def shift_sigma(self, sigma, mu: float | None = None):
        if self.use_dynamic_shifting:
            if mu is None:
                raise ValueError("this flow-matching schedule uses dynamic shifting: pass mu (FLUX's calculate_shift)")
            return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = _f64(tau)
        return 1 - tau, tau

    def alpha_sigma_derivatives(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = _f64(tau)
        return -torch.ones_like(tau), torch.ones_like(tau)

    def native_time(self, t: Tensor) -> Tensor:
        return _f64(t)

    def model_timestep(self, tau: Tensor) -> Tensor:
        return tau * self.num_train_timesteps

    def training_grid(self, steps: int, **options) -> Tensor:
        """diffusers' ``set_timesteps(steps)``: linspace in the trained range, shifted, then ``t = 0``."""
        T = self.num_train_timesteps
        lo, hi = self.tau_range
        sigmas = torch.linspace(hi * T, lo * T, steps, dtype=F64) / T
        shifted = self.shift_sigma(sigmas, options.get("mu"))
        return torch.cat([_f64(shifted), _f64([0.0])])


# ------------------------------------------------------------------------------------------------------------
# Prediction types <-> the (x_data, noise) hub
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameterization:
    """How a network sees the canonical state and what it predicts: a schedule plus a prediction type.

    ``model_input(x, t)`` gives the network's input and timestep; ``velocity(output, x, t)`` turns its output
    into the canonical velocity; ``target(x_data, noise, t)`` is the output an exact network would give (the
    training target). ``x`` is [B, ...] in any float dtype, ``t`` is [B] canonical; scalars are float64.
    """

    schedule: Schedule
    prediction_type: str
    sigma_data: float = 0.5  # EDM preconditioning only

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction type {self.prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}"
            )
        if self.prediction_type in ("edm", "edm_v") and not isinstance(self.schedule, VESchedule):
            raise ValueError("EDM preconditioning ('edm', 'edm_v') needs a VESchedule")

    def _scalars(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tau = self.schedule.native_time(_f64(t))
        alpha, sigma = self.schedule.alpha_sigma(tau)
        return tau, alpha, sigma

    def _edm_coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Karras et al. 2022, Table 1 (VE, alpha = 1): c_skip, c_out, c_in.
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, (-c_out if self.prediction_type == "edm_v" else c_out), c_in

    def model_input(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Canonical ``(x, t)`` -> ``(network input, network timestep [B] float64)``."""
        tau, alpha, sigma = self._scalars(t)
        x_nat = x * per_example(alpha + sigma, x)
        if self.prediction_type in ("edm", "edm_v"):
            x_nat = x_nat * per_example(self._edm_coefficients(sigma)[2], x)
        return x_nat, self.schedule.model_timestep(tau)

    def to_hub(self, output: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Network output at canonical ``(x, t)`` -> ``(x_data_hat, noise_hat)``."""
        tau, alpha, sigma = self._scalars(t)
        x_nat = x * per_example(alpha + sigma, x)
        p = self.prediction_type

        def c(value: Tensor) -> Tensor:
            return per_example(value, x)

        if p == "epsilon":
            _require_nonzero(alpha, "epsilon prediction is undefined where alpha = 0 (t = 1); sample from t_max")
            return (x_nat - c(sigma) * output) / c(alpha), output
        if p in ("sample", "edm", "edm_v"):
            if p == "sample":
                x_data = output
            else:
                c_skip, c_out, _ = self._edm_coefficients(sigma)
                x_data = c(c_skip) * x_nat + c(c_out) * output
            _require_nonzero(sigma, f"{p} prediction cannot give the noise where sigma = 0 (t = 0)")
            return x_data, (x_nat - c(alpha) * x_data) / c(sigma)
        if p == "v_prediction":
            # v = alpha noise - sigma x_data and x_nat = alpha x_data + sigma noise, solved for the pair.
            norm = alpha**2 + sigma**2
            return ((c(alpha) * x_nat - c(sigma) * output) / c(norm), (c(sigma) * x_nat + c(alpha) * output) / c(norm))
        # flow_prediction: output = alpha' x_data + sigma' noise, solved with x_nat = alpha x_data + sigma noise.
        d_alpha, d_sigma = self.schedule.alpha_sigma_derivatives(tau)
        det = alpha * d_sigma - sigma * d_alpha
        return ((c(d_sigma) * x_nat - c(sigma) * output) / c(det), (c(alpha) * output - c(d_alpha) * x_nat) / c(det))

    def velocity(self, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Canonical velocity ``noise_hat - x_data_hat`` from the network output."""
        x_data, noise = self.to_hub(output, x, t)
        return noise - x_data

    def target(self, x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The output an exact network gives at ``x_t`` built from ``(x_data, noise)``: the training target."""
        tau, alpha, sigma = self._scalars(t)

        def c(value: Tensor) -> Tensor:
            return per_example(value, x_data)

        p = self.prediction_type
        if p == "epsilon":
            return noise
        if p == "sample":
            return x_data
        if p == "v_prediction":
            return c(alpha) * noise - c(sigma) * x_data
        if p == "flow_prediction":
            d_alpha, d_sigma = self.schedule.alpha_sigma_derivatives(tau)
            return c(d_alpha) * x_data + c(d_sigma) * noise
        c_skip, c_out, _ = self._edm_coefficients(sigma)
        x_nat = c(alpha) * x_data + c(sigma) * noise
        return (x_data - c(c_skip) * x_nat) / c(c_out)


def _require_nonzero(value: Tensor, message: str) -> None:
    if bool((value == 0).any()):
        raise ValueError(message)


def canonical_to_ve_sigma(t: Tensor) -> Tensor:
    """The VE noise level ``sigma / alpha = t / (1 - t)`` at canonical time ``t`` (inf at t = 1)."""
    t = _f64(t)
    return t / (1 - t)


def half_log_snr(t: Tensor) -> Tensor:
    """``lambda = log(alpha / sigma) = log((1 - t) / t)`` on the canonical path (+inf at t = 0, -inf at t = 1)."""
    t = _f64(t)
    return torch.log1p(-t) - torch.log(t)
