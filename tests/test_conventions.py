"""Schedules, native <-> canonical maps and prediction-type conversions, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from distill.conventions import (
    PREDICTION_TYPES,
    DiscreteVPSchedule,
    FlowMatchSchedule,
    Parameterization,
    TrigFlowSchedule,
    VESchedule,
    make_betas,
)

F64 = torch.float64

SCHEDULES = {
    "linear": lambda: DiscreteVPSchedule.from_betas(beta_schedule="linear"),
    "scaled_linear": lambda: DiscreteVPSchedule.from_betas(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012),
    "cosine": lambda: DiscreteVPSchedule.from_betas(beta_schedule="squaredcos_cap_v2"),
    "zero_snr": lambda: DiscreteVPSchedule.from_betas(beta_schedule="scaled_linear", beta_start=0.00085,
                                                      beta_end=0.012, rescale_betas_zero_snr=True),
    "edm": lambda: VESchedule(0.002, 80.0),
    "flow_shift3": lambda: FlowMatchSchedule(shift=3.0),
    "trigflow": lambda: TrigFlowSchedule(sigma_data=0.5),
}


def native_times(schedule, n=257):
    lo, hi = schedule.tau_range
    return torch.linspace(lo, hi, n, dtype=F64)


@pytest.mark.parametrize("config", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
])
def test_beta_tables_equal_diffusers(config):
    from diffusers import DDPMScheduler

    ours = DiscreteVPSchedule.from_betas(**config).alphas_cumprod
    theirs = DDPMScheduler(**config).alphas_cumprod.to(F64)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", SCHEDULES)
def test_native_canonical_native_round_trip(name):
    schedule = SCHEDULES[name]()
    tau = native_times(schedule)
    t = schedule.canonical_time(tau)
    assert torch.allclose(schedule.native_time(t), tau, rtol=1e-12, atol=1e-9)
    x_nat = torch.randn(len(tau), 3, dtype=F64)
    x, t2 = schedule.to_canonical(x_nat, tau)
    x_back, tau_back = schedule.to_native(x, t2)
    assert torch.allclose(x_back, x_nat, rtol=1e-12, atol=1e-12)
    assert torch.allclose(tau_back, tau, rtol=1e-12, atol=1e-9)
    assert bool((t[1:] > t[:-1]).all()), "canonical time must increase with the noise level"


@pytest.mark.parametrize("name", SCHEDULES)
def test_derivatives_match_finite_differences(name):
    schedule = SCHEDULES[name]()
    lo, hi = schedule.tau_range
    # midpoints of table intervals, away from the kinks of the piecewise-linear interpolation
    offset = 0.37 if isinstance(schedule, DiscreteVPSchedule) else 3.7e-4
    tau = torch.linspace(lo, hi, 41, dtype=F64)[1:-1] + offset
    eps = 1e-6 * (hi - lo)
    (a_plus, s_plus), (a_minus, s_minus) = schedule.alpha_sigma(tau + eps), schedule.alpha_sigma(tau - eps)
    d_alpha, d_sigma = schedule.alpha_sigma_derivatives(tau)
    assert torch.allclose(d_alpha, (a_plus - a_minus) / (2 * eps), rtol=1e-5, atol=1e-9)
    assert torch.allclose(d_sigma, (s_plus - s_minus) / (2 * eps), rtol=1e-5, atol=1e-9)


def _valid_pairs():
    for name in SCHEDULES:
        for prediction in PREDICTION_TYPES:
            if (prediction in ("edm", "edm_v")) != (name == "edm"):
                continue
            yield name, prediction


@pytest.mark.parametrize(("name", "prediction"), list(_valid_pairs()))
def test_exact_output_gives_exact_velocity(name, prediction):
    """An exact network's output (the training target) converts to v = noise - x_data."""
    param = Parameterization(SCHEDULES[name](), prediction)
    lo, hi = param.schedule.t_range
    t = torch.linspace(max(lo, 1e-3), min(hi, 1 - 1e-3), 64, dtype=F64)
    x_data, noise = torch.randn(64, 2, 3, dtype=F64), torch.randn(64, 2, 3, dtype=F64)
    x = (1 - t)[:, None, None] * x_data + t[:, None, None] * noise
    output = param.target(x_data, noise, t)
    assert torch.allclose(param.velocity(output, x, t), noise - x_data, rtol=1e-9, atol=1e-9)
    x_data_hat, noise_hat = param.to_hub(output, x, t)
    assert torch.allclose(x_data_hat, x_data, atol=1e-8) and torch.allclose(noise_hat, noise, atol=1e-8)


def test_zero_terminal_snr_v_prediction_at_alpha_zero():
    schedule = SCHEDULES["zero_snr"]()
    alpha, sigma = schedule.alpha_sigma(torch.tensor([999.0], dtype=F64))
    assert float(alpha) == 0.0 and float(sigma) == 1.0
    assert schedule.t_range[1] == 1.0
    param = Parameterization(schedule, "v_prediction")
    t = torch.ones(4, dtype=F64)
    x_data, noise = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    v = param.velocity(param.target(x_data, noise, t), noise, t)  # at t = 1 the state is pure noise
    assert torch.isfinite(v).all() and torch.allclose(v, noise - x_data, atol=1e-12)
    with pytest.raises(ValueError, match="alpha = 0"):
        Parameterization(schedule, "epsilon").velocity(noise, noise, t)


def test_trigflow_and_flow_matching_are_consistent_paths():
    flow = FlowMatchSchedule(shift=3.0)
    t = torch.linspace(0, 1, 11, dtype=F64)
    assert torch.equal(flow.native_time(t), t)  # flow matching is the canonical path; shift moves only the grid
    trig = TrigFlowSchedule(sigma_data=1.0)
    assert torch.allclose(trig.canonical_time(torch.tensor([math.pi / 4], dtype=F64)), torch.tensor([0.5], dtype=F64))


def test_training_grids_match_diffusers():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    for spacing, offset in (("leading", 1), ("trailing", 0), ("linspace", 0)):
        ddim = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                             timestep_spacing=spacing, steps_offset=offset)
        ddim.set_timesteps(20)
        schedule = DiscreteVPSchedule.from_betas(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                 spacing=spacing, steps_offset=offset)
        assert torch.equal(schedule.training_timesteps(20), ddim.timesteps.to(F64))
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(12)
    grid = FlowMatchSchedule(shift=3.0).training_grid(12)
    assert torch.allclose(grid, flow.sigmas.to(F64), atol=1e-6)


def test_make_betas_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="unknown beta_schedule 'quadratic'"):
        make_betas("quadratic")


def test_unknown_prediction_type_is_named():
    with pytest.raises(ValueError, match="unknown prediction type 'noise'.*epsilon"):
        Parameterization(FlowMatchSchedule(), "noise")
