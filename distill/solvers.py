"""ODE solvers for velocity fields and the time grids they run on, all in canonical time (docs/design.md §2).

Generation integrates ``dx/dt = v(x, t)`` from ``t_max`` down to ``t = 0``. A grid is a 1-D float64 tensor of
decreasing canonical times ending at the final time (usually 0). A solver has one signature:
``solver(velocity, x, times) -> x`` where ``velocity(x, t_scalar) -> v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .conventions import F64, half_log_snr, karras_sigmas_grid, per_example

Velocity = Callable[[Tensor, float], Tensor]


# ------------------------------------------------------------------------------------------------------------
# Solvers
# ------------------------------------------------------------------------------------------------------------
def euler(velocity: Velocity, x: Tensor, times: Tensor, states: list | None = None) -> Tensor:
    """First-order Euler: ``x <- x + (t_next - t) v(x, t)``. One evaluation per step.

    Every solver appends its state at each later grid time to ``states`` when given one."""
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        x = x + (t_next - t) * velocity(x, t)
        _keep(states, x)
    return x


def heun(velocity: Velocity, x: Tensor, times: Tensor, states: list | None = None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1) on a grid, step by step with ``heun_step``; the
    step into ``t = 0`` is Euler. Two evaluations per step, one on the last step if it ends at 0.
    """
    for t, t_next in zip(times[:-1], times[1:]):
        x = heun_step(lambda y, u: velocity(y, float(u)), x, t, t_next, t_min=SMALLEST_POSITIVE)
        _keep(states, x)
    return x


SMALLEST_POSITIVE = math.nextafter(0.0, 1.0)  # as heun_step's t_min: the corrector runs at every t > 0


def heun_step(velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, s: Tensor, t_min: float,
              v: Tensor | None = None) -> Tensor:
    """One Heun step from ``t`` to ``s`` (0-d, or [B] per example), ``velocity(x, t_tensor) -> v``; ``v``: the
    velocity at ``(x, t)`` when the caller has it already.

    The one end rule of every Heun step here: Euler where the step ends below ``t_min`` (the least time the
    corrector may evaluate the field at: a teacher's ``t_min``, or ``SMALLEST_POSITIVE`` for EDM's Euler step into
    ``sigma = 0``), or has zero length. The corrector is not evaluated when no example uses it.
    """
    h = per_example(s - t, x)
    v = velocity(x, t) if v is None else v
    x_euler = x + h * v
    corrects = (s >= t_min) & (s != t)
    if not bool(corrects.any()):
        return x_euler
    v_end = velocity(x_euler, torch.where(corrects, s, t))
    return torch.where(corrects.reshape(-1, *[1] * (x.ndim - 1)), x + h * (v + v_end) / 2, x_euler)


def dpmpp2m(velocity: Velocity, x: Tensor, times: Tensor, states: list | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2, midpoint form as in diffusers) in the half log-SNR
    ``lambda = log((1 - t) / t)`` of the canonical path, with the data prediction ``x_data = x - t v``.

    The canonical path has ``alpha = 1 - t`` and ``sigma = t``; the update
    ``x_next = (t_next / t) x - (1 - t_next) (exp(-h) - 1) D`` is invariant to rescaling the path, so it equals the
    solver run on any native path of the same SNR. The first step and a step into ``t = 0`` are first order.
    """
    lam = half_log_snr(times)
    previous = None  # (data prediction, lambda) of the previous step
    for i, (t, t_next) in enumerate(zip(times[:-1].tolist(), times[1:].tolist())):
        x_data = x - t * velocity(x, t)
        # exp(-h) = exp(lambda_t - lambda_next) = (1 - t) t_next / (t (1 - t_next)), finite at t = 1 and t_next = 0.
        exp_neg_h = ((1 - t) * t_next) / (t * (1 - t_next))
        d = x_data
        if previous is not None and t_next > 0:
            h = float(lam[i + 1] - lam[i])
            h_prev = float(lam[i] - previous[1])
            d = x_data + (0.5 * h / h_prev) * (x_data - previous[0])  # D0 + D1/2 with D1 = (m0 - m1) / r0
        x = (t_next / t) * x - (1 - t_next) * (exp_neg_h - 1) * d
        previous = (x_data, lam[i])
        _keep(states, x)
    return x


def _keep(states: list | None, x: Tensor) -> None:
    if states is not None:
        states.append(x)


@dataclass(frozen=True)
class Solver:
    """What is known of a solver in one place: ``run(velocity, x, times, states=None) -> x``, its ``order``, its
    network calls per step, whether a step into ``t = 0`` saves one (Heun's last step is Euler), and whether it
    needs the previous step's history (a multistep method cannot take one step of a batch of its own times)."""

    run: Callable[..., Tensor]
    order: int
    calls_per_step: int = 1
    euler_into_zero: bool = False
    multistep: bool = False

    def nfe(self, times: Tensor) -> int:
        """Network evaluations on a grid."""
        steps = len(times) - 1
        return self.calls_per_step * steps - int(self.euler_into_zero and float(times[-1]) == 0.0)

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps within ``nfe`` evaluations on a grid that ends at 0 (heun: 2 steps - 1 <= nfe)."""
        return max(1, (nfe + int(self.euler_into_zero)) // self.calls_per_step)


SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, order=1),
    "heun": Solver(heun, order=2, calls_per_step=2, euler_into_zero=True),
    "dpmpp2m": Solver(dpmpp2m, order=2, multistep=True),
}
ONE_STEP_SOLVERS = tuple(name for name, solver in SOLVERS.items() if not solver.multistep)


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; use one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


def solver_nfe(solver: str, times: Tensor) -> int:
    """Network evaluations ``solver`` spends on a grid."""
    return get_solver(solver).nfe(times)


def steps_for_nfe(solver: str, nfe: int) -> int:
    """The most steps ``solver`` can take within ``nfe`` evaluations."""
    return get_solver(solver).steps_for_nfe(nfe)


# ------------------------------------------------------------------------------------------------------------
# Time grids: decreasing float64 canonical times, first = start, last = end.
# ------------------------------------------------------------------------------------------------------------
def uniform_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """Equal steps in canonical time."""
    _check_steps(steps)
    return torch.linspace(t_start, t_end, steps + 1, dtype=F64)


def shifted_grid(steps: int, shift: float, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """Equal steps in ``u``, mapped by ``t = shift u / (1 + (shift - 1) u)`` (SD3's timestep shift; shift > 1
    spends more steps near noise)."""
    u = uniform_grid(steps, t_start, t_end)
    return shift * u / (1 + (shift - 1) * u)


def edm_grid(steps: int, t_min: float, t_max: float, rho: float = 7.0, sigma_cap: float = 80.0) -> Tensor:
    """EDM's rho-spacing (Karras et al. 2022, eq. 5) between the VE noise levels of ``t_max`` and ``t_min``, then
    ``t = 0``. A ``t_max`` of 1 (infinite VE sigma) starts at ``sigma_cap`` instead, as EDM does."""
    _check_steps(steps)
    sigma_max = sigma_cap if t_max >= 1 else min(t_max / (1 - t_max), sigma_cap)
    sigma_min = max(t_min, 1e-6) / (1 - max(t_min, 1e-6))
    return karras_sigmas_grid(steps, sigma_min, sigma_max, rho)


GRIDS = ("uniform", "shifted", "edm", "trained")


def time_grid(model, steps: int, grid: str = "uniform", **options) -> Tensor:
    """A grid of ``steps`` steps over ``model``'s range ``[t_min, t_max]`` ending at ``t = 0``.

    Args:
        model: anything with ``t_min`` and ``t_max`` (a teacher); ``"trained"`` also needs ``training_grid``.
        steps: number of steps.
        grid: ``"uniform"``, ``"shifted"`` (``shift=``), ``"edm"`` (``rho=``) or ``"trained"`` (the teacher's own
            scheduler timesteps, e.g. DDIM's spacing or the flow-matching shift).
    """
    _check_steps(steps)
    if grid == "uniform":
        return uniform_grid(steps, model.t_max)
    if grid == "shifted":
        return shifted_grid(steps, options.get("shift", 3.0), model.t_max)
    if grid == "edm":
        return edm_grid(steps, model.t_min, model.t_max, options.get("rho", 7.0))
    if grid == "trained":
        return model.training_grid(steps, **options)
    raise ValueError(f"unknown time grid {grid!r}; use one of {', '.join(GRIDS)}")


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def check_times(times: Tensor) -> Tensor:
    """Validate a user grid: 1-D, at least two points, strictly decreasing, inside [0, 1]."""
    times = torch.as_tensor(times, dtype=F64).cpu()
    if times.ndim != 1 or len(times) < 2:
        raise ValueError(f"times must be a 1-D tensor of at least 2 canonical times, got shape {list(times.shape)}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must be strictly decreasing (canonical t = 1 is noise, t = 0 is data)")
    if float(times.max()) > 1 or float(times.min()) < 0:
        raise ValueError(f"times must lie in [0, 1], got [{float(times.min())}, {float(times.max())}]")
    return times


# ------------------------------------------------------------------------------------------------------------
# The public entry points
# ------------------------------------------------------------------------------------------------------------
def solve(model, x: Tensor, times: Tensor, solver: str | None = None, cond=None, gamma: float = 0.0,
          generator: torch.Generator | None = None, states: list | None = None) -> Tensor:
    """Move ``x`` from ``times[0]`` to ``times[-1]``: a flow map jumps from grid time to grid time; a velocity field's
    probability-flow ODE is integrated with ``solver``.

    Args:
        model: a flow map with ``jump(x, t, s, cond)`` (a :class:`~distill.students.FlowMap`) or a velocity field
            with ``velocity(x, t, cond)`` (a :class:`~distill.teachers.Teacher`).
        x: state at ``times[0]``, [B, ...].
        times: decreasing canonical times.
        solver: for velocity fields ``"euler"`` (default), ``"heun"`` or ``"dpmpp2m"``; none for flow maps.
        cond: conditioning passed to every call.
        gamma: flow maps only: CTM's gamma-sampling (0 deterministic, 1 consistency-model multistep).
        generator: seeds the fresh noise of gamma-sampling.
        states: velocity fields only: a list that receives the state at each later grid time (a trajectory).
    """
    times = check_times(times)
    if callable(getattr(model, "jump", None)):
        if solver is not None:
            raise ValueError("a flow map jumps between grid times: it takes no solver")
        with torch.no_grad():
            for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
                x = _flow_map_step(model, x, t, s, cond, gamma, generator)
        return x
    if gamma:
        raise ValueError("gamma-sampling needs a flow map; an ODE solver is deterministic")
    if not callable(getattr(model, "velocity", None)):
        raise TypeError(f"{type(model).__name__} is neither a flow map (jump) nor a velocity field (velocity)")
    step = get_solver(solver or "euler").run
    batch = x.shape[0]

    def velocity(state: Tensor, t: float) -> Tensor:
        return model.velocity(state, torch.full((batch,), t, dtype=F64), cond)

    with torch.no_grad():
        return step(velocity, x, times, states)


def _flow_map_step(model, x: Tensor, t: float, s: float, cond, gamma: float, generator) -> Tensor:
    """Jump from t to s; with gamma > 0 jump past s to u = (1 - gamma) s and re-noise to s with the exact canonical
    kernel x_s = ((1 - s) / (1 - u)) x_u + sqrt(s^2 - ((1 - s) u / (1 - u))^2) z (Kim et al. 2023, §4.2)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    u = (1.0 - gamma) * s
    x_u = model.jump(x, t, u, cond)
    if u == s:
        return x_u
    z = torch.randn(x_u.shape, generator=generator, dtype=x_u.dtype).to(x_u.device)
    keep = (1 - s) / (1 - u)
    return keep * x_u + math.sqrt(max(s**2 - (keep * u) ** 2, 0.0)) * z


def sample(
    model,
    noise: Tensor,
    *,
    steps: int | None = None,
    times: Tensor | None = None,
    solver: str | None = None,
    grid: str = "uniform",
    cond=None,
    gamma: float = 0.0,
    generator: torch.Generator | None = None,
    **grid_options,
) -> Tensor:
    """Generate from ``noise``: start at the grid's first time ``t_0`` from ``x = t_0 * noise`` and move to the grid's
    end (``t = 0``: data) by flow-map jumps (a student) or an ODE solver (a teacher).

    Give either ``steps`` (a ``grid`` over the model's ``[t_min, t_max]``) or an explicit decreasing ``times``.
    Flow maps may sample stochastically with ``gamma`` in [0, 1] (see :func:`solve`).

    Returns:
        The final state, [B, ...] like ``noise``.
    """
    if (steps is None) == (times is None):
        raise ValueError("give exactly one of steps=K or times=<decreasing canonical times>")
    times = time_grid(model, steps, grid, **grid_options) if times is None else check_times(times)
    x = float(times[0]) * noise
    return solve(model, x, times, solver=solver, cond=cond, gamma=gamma, generator=generator)
