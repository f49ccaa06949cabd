"""Canonical solvers on wrapped diffusers models reproduce diffusers' own schedulers step for step.

Each teacher is loaded back from a folder written by ``save_pretrained``, through the real loading path.
"""

from __future__ import annotations

import pytest
import torch

import distill
from distill.conventions import canonical_to_ve_sigma

from .conftest import tiny_sd3

F64 = torch.float64


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def save_pipeline(tmp_path, unet, scheduler):
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def canonical_start(teacher, x_nat: torch.Tensor, t0: float) -> torch.Tensor:
    """diffusers starts from a native state; ours from its canonical image at the same time."""
    x, _ = teacher.schedule.to_canonical(x_nat.to(F64), torch.tensor(teacher.schedule.native_time(
        torch.tensor([t0], dtype=F64))))
    return x.to(x_nat.dtype)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_reproduces_ddim(tmp_path, unet, prediction_type, beta_schedule, spacing):
    from diffusers import DDIMScheduler

    betas = dict(beta_start=0.00085, beta_end=0.012) if beta_schedule == "scaled_linear" else {}
    ddim = DDIMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing,
                         steps_offset=1 if spacing == "leading" else 0, clip_sample=False, **betas)
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, ddim))
    steps = 10  # divides the 1000 training steps, so DDIM's previous timestep is the next listed one
    ddim.set_timesteps(steps)
    times = teacher.training_grid(steps)
    assert torch.allclose(times[:-1], teacher.schedule.canonical_time(ddim.timesteps.to(F64))) and times[-1] == 0

    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_nat = noise.clone()
    with torch.no_grad():
        for k in ddim.timesteps:
            x_nat = ddim.step(unet(x_nat, k).sample, k, x_nat).prev_sample
    ours = distill.solve(teacher, canonical_start(teacher, noise, float(times[0])), times, solver="euler")
    assert relative_error(ours, x_nat) <= 1e-4  # at t = 0 canonical and native states coincide


def test_euler_reproduces_euler_discrete(tmp_path, unet):
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, euler))
    euler.set_timesteps(8)
    times = (euler.sigmas.to(F64) / (1 + euler.sigmas.to(F64)))  # VE sigma -> canonical t
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = noise * euler.init_noise_sigma
    with torch.no_grad():
        for k in euler.timesteps:
            x = euler.step(unet(euler.scale_model_input(x, k), k).sample, k, x).prev_sample
    start = noise * euler.init_noise_sigma / (1 + float(euler.sigmas[0]))  # VE state -> canonical
    ours = distill.solve(teacher, start, times, solver="euler")
    assert relative_error(ours, x) <= 1e-4


def test_euler_reproduces_edm_euler(tmp_path, unet):
    from diffusers import EDMEulerScheduler

    edm = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, edm))
    assert teacher.parameterization.prediction_type == "edm"
    edm.set_timesteps(8)
    times = edm.sigmas.to(F64) / (1 + edm.sigmas.to(F64))
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = noise * float(edm.sigmas[0])
    with torch.no_grad():
        for k in edm.timesteps:
            x = edm.step(unet(edm.scale_model_input(x, k), k).sample, k, x).prev_sample
    ours = distill.solve(teacher, noise * float(times[0]), times, solver="euler")  # x_ve / (1 + sigma) = t noise
    assert relative_error(ours, x) <= 1e-4


def test_euler_reproduces_flow_match_euler(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer = tiny_sd3()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    transformer.save_pretrained(tmp_path / "transformer")
    scheduler.save_pretrained(tmp_path / "scheduler")
    teacher = distill.load_teacher(tmp_path / "transformer")  # finds ../scheduler/scheduler_config.json
    assert teacher.t_max == 1.0 and teacher.t_min == pytest.approx(3e-3 / (1 + 2e-3))
    generator = torch.Generator().manual_seed(4)
    cond = {"encoder_hidden_states": torch.randn(2, 3, 12, generator=generator),
            "pooled_projections": torch.randn(2, 6, generator=generator)}
    scheduler.set_timesteps(6)
    times = teacher.training_grid(6)
    assert torch.allclose(times, scheduler.sigmas.to(F64), atol=1e-6)
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    x = noise.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            out = transformer(hidden_states=x, timestep=k.expand(2), **cond).sample
            x = scheduler.step(out, k, x).prev_sample
    ours = distill.sample(teacher, noise, times=scheduler.sigmas, solver="euler", cond=cond)
    assert relative_error(ours, x) <= 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmpp2m_reproduces_dpm_solver_multistep(tmp_path, unet, prediction_type):
    from diffusers import DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      lower_order_final=True, final_sigmas_type="zero", prediction_type=prediction_type)
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, dpm))
    dpm.set_timesteps(10)
    times = dpm.sigmas.to(F64) / (1 + dpm.sigmas.to(F64))
    assert torch.allclose(canonical_to_ve_sigma(times[:-1]), dpm.sigmas[:-1].to(F64), rtol=1e-9)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    x = noise * dpm.init_noise_sigma
    with torch.no_grad():
        for k in dpm.timesteps:
            x = dpm.step(unet(dpm.scale_model_input(x, k), k).sample, k, x).prev_sample
    ours = distill.solve(teacher, canonical_start(teacher, noise, float(times[0])), times, solver="dpmpp2m")
    assert relative_error(ours, x) <= 1e-3
