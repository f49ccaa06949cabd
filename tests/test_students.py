"""Flow-map contract: X(x, t, t) = x; an untrained student is one Euler step of its teacher; save/load is exact."""

from __future__ import annotations

import pytest
import torch

import distill
from distill.nets import VelocityMLP
from distill.students import FlowMap, TwoTimeFlowMap, load_student
from distill.teachers import DiffusersTeacher, ModuleTeacher

from .conftest import tiny_dit, tiny_sd3, tiny_unet, tiny_unet_condition

FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0}


def teachers():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    sd3_cond = {"encoder_hidden_states": torch.randn(2, 3, 12, generator=generator),
                "pooled_projections": torch.randn(2, 6, generator=generator)}
    return {
        "unet": (DiffusersTeacher(tiny_unet(), DDIMScheduler()), (3, 8, 8), None),
        "unet_class": (DiffusersTeacher(tiny_unet(num_class_embeds=10), DDIMScheduler()), (3, 8, 8),
                       torch.tensor([2, 5])),
        "unet_condition": (DiffusersTeacher(tiny_unet_condition(), DDIMScheduler()), (4, 8, 8),
                           torch.randn(2, 5, 12, generator=generator)),
        "dit": (DiffusersTeacher(tiny_dit(), DDIMScheduler()), (4, 8, 8), torch.tensor([1, 2])),
        "sd3": (DiffusersTeacher(tiny_sd3(), FlowMatchEulerDiscreteScheduler(shift=3.0)), (4, 8, 8), sd3_cond),
        "mlp": (ModuleTeacher.from_scheduler_config(VelocityMLP(hidden=32), FLOW, (2,)), (2,), None),
    }


@pytest.mark.parametrize("name", ["unet", "unet_class", "unet_condition", "dit", "sd3", "mlp"])
def test_untrained_student_is_one_euler_step_and_identity_at_equal_times(name):
    teacher, shape, cond = teachers()[name]
    student = FlowMap.from_teacher(teacher)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    t, s = torch.tensor([0.9, 0.6]), torch.tensor([0.3, 0.0])
    with torch.no_grad():
        euler = x + (s - t).reshape(-1, *([1] * len(shape))) * teacher.velocity(x, t, cond)
        assert torch.allclose(student(x, t, s, cond), euler, atol=1e-5)
        assert torch.equal(student(x, t, t, cond), x)
    blocks = len(teacher.model.transformer_blocks) if name == "dit" else 1
    assert len(student.gap_embeddings) == blocks  # DiT embeds time in every block
    with torch.no_grad():
        for parameter in student.gap_embeddings.parameters():
            parameter.add_(0.05)  # once trained, the gap embedding must reach the output
        assert not torch.allclose(student(x, t, s, cond), euler, atol=1e-5)
        assert torch.equal(student(x, t, t, cond), x)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher's weights are copied, not shared


def test_save_load_round_trip_is_bit_exact(tmp_path):
    teacher, shape, cond = teachers()["unet_class"]
    teacher.info = {"data": {"name": "toy"}, "num_classes": 10, "null_label": 9}
    student = FlowMap.from_teacher(teacher)
    with torch.no_grad():
        for parameter in student.gap_embeddings.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # a trained gap embedding is non-zero
    student.save_pretrained(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    for name, value in student.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(student(x, 0.8, 0.1, cond), loaded(x, 0.8, 0.1, cond))
    assert loaded.info.num_classes == 10


def test_sampling_a_student_jumps_between_grid_times():
    teacher, shape, _ = teachers()["mlp"]
    student = FlowMap.from_teacher(teacher)
    noise = torch.randn(5, *shape)
    one_step = distill.sample(student, noise, steps=1)
    with torch.no_grad():
        assert torch.equal(one_step, student(student.t_max * noise, student.t_max, 0.0))
    # an untrained student on a grid is Euler on the teacher on the same grid
    assert torch.allclose(distill.sample(student, noise, steps=4), distill.sample(teacher, noise, steps=4), atol=1e-6)
    with pytest.raises(ValueError, match="takes no solver"):
        distill.sample(student, noise, steps=2, solver="heun")


def test_unsupported_network_is_named():
    from distill.conventions import FlowMatchSchedule

    teacher = ModuleTeacher(torch.nn.Linear(3, 2), FlowMatchSchedule(), "flow_prediction")
    with pytest.raises(ValueError, match="does not know where Linear embeds time"):
        FlowMap.from_teacher(teacher)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_from_scratch_two_time_network(tmp_path, kind):
    from distill.nets import TwoTimeMLP, TwoTimeUNet

    torch.manual_seed(0)
    if kind == "mlp":
        network, shape, cond = TwoTimeMLP(hidden=32), (2,), None
    else:
        network, shape, cond = TwoTimeUNet(channels=1, width=8, num_classes=3), (1, 8, 8), torch.tensor([0, 1, 2] * 2)
    student = TwoTimeFlowMap(network, sample_shape=shape)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        assert torch.equal(student(x, 0.7, 0.7, cond), x)
        moved = student(x, 0.7, 0.2, cond)
    assert not torch.allclose(moved, x)
    student.save_pretrained(tmp_path / "scratch")
    loaded = load_student(tmp_path / "scratch")
    with torch.no_grad():
        assert torch.equal(loaded(x, 0.7, 0.2, cond), moved)
    assert loaded.sample_shape == shape
    assert distill.sample(loaded, torch.randn(6, *shape), steps=2, cond=cond).shape == (6, *shape)


def test_gamma_sampling_ends_between_deterministic_and_consistency_multistep():
    from distill.nets import TwoTimeMLP

    torch.manual_seed(0)
    student = TwoTimeFlowMap(TwoTimeMLP(hidden=32), sample_shape=(2,))
    noise = torch.randn(8, 2)
    times = torch.tensor([1.0, 0.5, 0.0])
    deterministic = distill.sample(student, noise, times=times)
    assert torch.equal(distill.sample(student, noise, times=times, gamma=0.0), deterministic)
    # gamma = 1: jump to 0, then re-noise to 0.5 exactly as the canonical path does: (1 - s) x_0 + s z
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x_mid = 0.5 * student(noise, 1.0, 0.0) + 0.5 * z
        expected = student(x_mid, 0.5, 0.0)
    multistep = distill.sample(student, noise, times=times, gamma=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(multistep, expected, atol=1e-6)
    with pytest.raises(ValueError, match="gamma must lie in"):
        distill.sample(student, noise, times=times, gamma=1.5)
    with pytest.raises(ValueError, match="needs a flow map"):
        distill.sample(distill.load_teacher("eight-gaussians-exact"), noise, steps=2, gamma=0.5)


def test_derivatives_along_time_flow_through_a_student():
    """dF/dt (the JVP MeanFlow and sCD need) reaches the network through the schedule and the gap embedding."""
    from diffusers import DDIMScheduler

    from distill.jvp import jvp

    student = FlowMap.from_teacher(DiffusersTeacher(tiny_unet(), DDIMScheduler())).double()
    with torch.no_grad():
        for parameter in student.gap_embeddings.parameters():
            parameter.add_(0.05)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    t, s = torch.tensor([0.6, 0.8], dtype=torch.float64), torch.tensor([0.1, 0.3], dtype=torch.float64)
    tangents = (torch.zeros_like(x), torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    _, exact = jvp(student.average_velocity, (x, t, s), tangents, mode="double_backward")
    _, difference = jvp(student.average_velocity, (x, t, s), tangents, mode="finite_difference", eps=1e-4)
    assert exact.abs().max() > 0
    assert (exact - difference).abs().max() / exact.abs().max() < 1e-2  # timesteps are embedded in float32


@pytest.mark.parametrize("kind", ["from_teacher", "two_time"])
def test_diffusers_flow_map_scheduler_loop_equals_distill_sample(tmp_path, kind):
    from diffusers import DDIMScheduler, FlowMapEulerDiscreteScheduler

    from distill.nets import TwoTimeMLP

    torch.manual_seed(0)
    if kind == "from_teacher":  # a DDPM teacher: t_max < 1, so the grid is passed to the scheduler as sigmas
        student, shape = FlowMap.from_teacher(DiffusersTeacher(tiny_unet(), DDIMScheduler())), (3, 8, 8)
        for embedding in student.gap_embeddings:
            torch.nn.init.normal_(embedding.mlp[-1].weight, std=0.1)  # a student that is not one Euler step
    else:
        student, shape = TwoTimeFlowMap(TwoTimeMLP(hidden=32), sample_shape=(2,)), (2,)
    student.save_pretrained(tmp_path / "student")
    scheduler = FlowMapEulerDiscreteScheduler.from_pretrained(tmp_path / "student", subfolder="scheduler")
    noise = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    for steps in (1, 2, 4):
        times = distill.time_grid(student, steps)
        scheduler.set_timesteps(sigmas=times[:-1].tolist())
        x = float(times[0]) * noise
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):  # the diffusers sampling loop
                r = scheduler.sigmas[i + 1] * scheduler.config.num_train_timesteps
                x = scheduler.step(student.diffusers_output(x, t, r), t, x, r_timestep=r).prev_sample
        expected = distill.sample(student, noise, times=times)
        relative = float((x.float() - expected).abs().max() / expected.abs().max())
        assert relative < 1e-5, (steps, relative)  # float32 rounding in the scheduler's arithmetic
