"""Canonical solvers on wrapped diffusers models reproduce diffusers' own schedulers step for step.

Each scheduler-matrix teacher is loaded back from a folder written by ``save_pretrained``, through the real loading
path; the model-class tests call the model exactly as its diffusers pipeline does.
"""

from __future__ import annotations

import pytest
import torch

import distill
from distill.teachers import DiffusersTeacher

from .conftest import tiny_dit, tiny_flux, tiny_sd3, tiny_unet, tiny_unet_condition

F64 = torch.float64


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def diffusers_loop(scheduler, predict, x: torch.Tensor) -> torch.Tensor:
    """The loop every diffusers pipeline runs: scale the input, predict, step."""
    scale = getattr(scheduler, "scale_model_input", lambda sample, k: sample)
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(predict(scale(x, k), k), k, x).prev_sample
    return x


def ve_sigmas_to_times(sigmas: torch.Tensor) -> torch.Tensor:
    """diffusers' VE sigmas (sigma / alpha) -> canonical t = sigma / (alpha + sigma)."""
    sigmas = sigmas.to(F64)
    return sigmas / (1 + sigmas)


def canonical_start(teacher, x_nat: torch.Tensor, t0: float) -> torch.Tensor:
    """diffusers starts from a native state; ours from its canonical image x_nat / (alpha + sigma)."""
    alpha, sigma = teacher.schedule.alpha_sigma(teacher.schedule.native_time(torch.tensor(t0, dtype=F64)))
    return x_nat / float(alpha + sigma)


def save_pipeline(tmp_path, unet, scheduler):
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def noise_like(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


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

    noise = noise_like(2, 3, 8, 8, seed=1)
    theirs = diffusers_loop(ddim, lambda x, k: unet(x, k).sample, noise)
    ours = distill.solve(teacher, canonical_start(teacher, noise, float(times[0])), times, solver="euler")
    assert relative_error(ours, theirs) <= 1e-5  # at t = 0 canonical and native states coincide


def test_euler_reproduces_euler_discrete(tmp_path, unet):
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, euler))
    euler.set_timesteps(8)
    noise = noise_like(2, 3, 8, 8, seed=2) * euler.init_noise_sigma  # a VE state: x_nat / alpha
    theirs = diffusers_loop(euler, lambda x, k: unet(x, k).sample, noise)
    ours = distill.solve(teacher, noise / (1 + float(euler.sigmas[0])), ve_sigmas_to_times(euler.sigmas))
    assert relative_error(ours, theirs) <= 1e-5


def test_euler_reproduces_edm_euler(tmp_path, unet):
    from diffusers import EDMEulerScheduler

    edm = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, edm))
    assert teacher.parameterization.prediction_type == "edm"
    edm.set_timesteps(8)
    noise = noise_like(2, 3, 8, 8, seed=3)
    theirs = diffusers_loop(edm, lambda x, k: unet(x, k).sample, noise * float(edm.sigmas[0]))
    times = ve_sigmas_to_times(edm.sigmas)
    ours = distill.solve(teacher, noise * float(times[0]), times)  # x_ve / (1 + sigma) = t noise
    assert relative_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmpp2m_reproduces_dpm_solver_multistep(tmp_path, unet, prediction_type):
    from diffusers import DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      lower_order_final=True, final_sigmas_type="zero", prediction_type=prediction_type)
    teacher = distill.load_teacher(save_pipeline(tmp_path, unet, dpm))
    dpm.set_timesteps(10)
    noise = noise_like(2, 3, 8, 8, seed=5)
    theirs = diffusers_loop(dpm, lambda x, k: unet(x, k).sample, noise)
    times = ve_sigmas_to_times(dpm.sigmas)
    ours = distill.solve(teacher, canonical_start(teacher, noise, float(times[0])), times, solver="dpmpp2m")
    assert relative_error(ours, theirs) <= 1e-5


def test_euler_reproduces_flow_match_euler_on_sd3(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer, scheduler = tiny_sd3(), FlowMatchEulerDiscreteScheduler(shift=3.0)
    transformer.save_pretrained(tmp_path / "transformer")
    scheduler.save_pretrained(tmp_path / "scheduler")
    teacher = distill.load_teacher(tmp_path / "transformer")  # finds ../scheduler/scheduler_config.json
    assert teacher.t_max == 1.0 and teacher.t_min == pytest.approx(3e-3 / (1 + 2e-3))
    cond = {"encoder_hidden_states": noise_like(2, 3, 12, seed=6), "pooled_projections": noise_like(2, 6, seed=7)}
    scheduler.set_timesteps(6)
    times = teacher.training_grid(6)
    assert torch.allclose(times, scheduler.sigmas.to(F64), atol=1e-6)
    noise = noise_like(2, 4, 8, 8, seed=4)
    theirs = diffusers_loop(scheduler, lambda x, k: transformer(hidden_states=x, timestep=k.expand(2), **cond).sample,
                            noise)
    ours = distill.sample(teacher, noise, times=scheduler.sigmas, solver="euler", cond=cond)
    assert relative_error(ours, theirs) <= 1e-5


def test_flux_teacher_matches_the_flux_pipeline_call():
    """Packing, image ids and the timestep / 1000 convention, as FluxPipeline does them."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer, scheduler = tiny_flux(guidance_embeds=True), FlowMatchEulerDiscreteScheduler(shift=1.0)
    teacher = DiffusersTeacher(transformer, scheduler)
    text, pooled = noise_like(2, 3, 12, seed=8), noise_like(2, 6, seed=9)
    cond = {"encoder_hidden_states": text, "pooled_projections": pooled, "guidance": 3.5}
    scheduler.set_timesteps(4)
    latents = noise_like(2, 4, 8, 8, seed=10)
    image_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)

    def predict(packed, k):
        return transformer(hidden_states=packed, timestep=k.expand(2) / 1000, guidance=torch.full((2,), 3.5),
                           pooled_projections=pooled, encoder_hidden_states=text, txt_ids=torch.zeros(3, 3),
                           img_ids=image_ids).sample

    packed = diffusers_loop(scheduler, predict, FluxPipeline._pack_latents(latents, 2, 4, 8, 8))
    theirs = FluxPipeline._unpack_latents(packed, 64, 64, 8)  # 64 px with an 8x VAE -> the 8x8 latent
    ours = distill.sample(teacher, latents, times=scheduler.sigmas, cond=cond)
    assert relative_error(ours, theirs) <= 1e-5


CONDITIONED_MODELS = {
    # name: (model factory, state shape, cond, how the pipeline calls the model)
    "unet2d_class_conditional": (lambda: tiny_unet(num_class_embeds=10), (3, 8, 8), torch.tensor([3, 7]),
                                 lambda m, x, k, c: m(x, k, class_labels=c).sample),
    "unet2d_condition": (tiny_unet_condition, (4, 8, 8), noise_like(2, 5, 12, seed=11),
                         lambda m, x, k, c: m(x, k, encoder_hidden_states=c).sample),
    "dit": (tiny_dit, (4, 8, 8), torch.tensor([1, 2]),
            lambda m, x, k, c: m(x, timestep=k.expand(2), class_labels=c).sample[:, :4]),  # drop learned sigma
}


@pytest.mark.parametrize("name", CONDITIONED_MODELS)
def test_conditional_models_reproduce_ddim(name):
    from diffusers import DDIMScheduler

    factory, shape, cond, call = CONDITIONED_MODELS[name]
    model = factory()
    ddim = DDIMScheduler(timestep_spacing="trailing", clip_sample=False)
    teacher = distill.load_teacher((model, ddim))
    ddim.set_timesteps(5)
    noise = noise_like(2, *shape, seed=12)
    theirs = diffusers_loop(ddim, lambda x, k: call(model, x, k, cond), noise)
    times = teacher.training_grid(5)
    ours = distill.solve(teacher, canonical_start(teacher, noise, float(times[0])), times, cond=cond)
    assert relative_error(ours, theirs) <= 1e-5
