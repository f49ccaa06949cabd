"""Distribution matching distillation (distill.objectives.dmd): it moves a one-step generator onto the teacher's
distribution, its generator gradient is the score difference, and it checkpoints what it owns."""

from __future__ import annotations

import pytest
import torch

import distill
from distill.evaluation.metrics import sliced_wasserstein
from distill.objectives import DistributionMatching, DMDConfig
from distill.objectives.base import Batch
from distill.students import FlowMap

from .conftest import tiny_unet


def test_dmd_moves_a_one_step_generator_onto_the_teachers_distribution():
    """The eight-Gaussian flow teacher's single Euler step collapses the ring towards its centre; DMD alone (no
    regression, no GAN) spreads it back out."""
    torch.manual_seed(0)
    teacher = distill.load_teacher("eight-gaussians")
    reference = distill.load_teacher("eight-gaussians-exact").sample_data(2000, torch.Generator().manual_seed(1))
    student = FlowMap.from_teacher(teacher)
    objective = DistributionMatching(teacher, DMDConfig(trajectories=1, fake_updates=2, fake_learning_rate=1e-3))
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))

    def swd() -> float:
        with torch.no_grad():
            return sliced_wasserstein(distill.sample(student, noise, steps=1), reference.float())

    before = swd()
    for step in range(250):
        torch.manual_seed(step)
        out = objective(student, Batch(torch.zeros(256, 5, 2)), step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert swd() < 0.3 * before, (before, swd())


def digits_teacher():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from distill.teachers import DiffusersTeacher

    teacher = DiffusersTeacher(tiny_unet(channels=1), FlowMatchEulerDiscreteScheduler())
    teacher.info = {"data": {"name": "digits"}}
    return teacher


def test_generator_gradient_is_the_score_difference():
    """Before the fake score has learnt anything it equals the teacher, so the DMD gradient vanishes; the loss's
    gradient on the sample is g = (D_fake - D_real) / mean|x_hat - D_real| (DMD eq. 7)."""
    teacher = digits_teacher()
    objective = DistributionMatching(teacher, DMDConfig(trajectories=1))
    objective._build("cpu")
    x_hat = torch.randn(4, 1, 8, 8, requires_grad=True)
    torch.manual_seed(0)
    loss, metrics = objective.generator_loss(x_hat, None)
    loss.backward()
    # A copy's kernels may round differently from the original's (memory alignment), hence not exactly zero.
    assert metrics["score_gap"] < 1e-10 and float(x_hat.grad.abs().max()) < 1e-6
    with torch.no_grad():
        for p in objective.fake.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.manual_seed(0)
    x_tau, tau, _ = objective.diffuse(x_hat.detach())
    with torch.no_grad():
        D_real = x_tau - tau.view(-1, 1, 1, 1).float() * teacher.velocity(x_tau, tau)
        D_fake = x_tau - tau.view(-1, 1, 1, 1).float() * objective.fake.velocity(x_tau, tau)
        g = (D_fake - D_real) / (x_hat - D_real).abs().mean((1, 2, 3), keepdim=True)
    x_hat.grad = None
    torch.manual_seed(0)
    objective.generator_loss(x_hat, None)[0].backward()
    torch.testing.assert_close(x_hat.grad * x_hat.numel(), g, rtol=1e-4, atol=1e-6)


def test_state_dict_resumes_the_auxiliary_networks_bit_identically():
    """Fake network, GAN head and their optimiser moments round-trip, so the next steps are identical."""
    teacher = digits_teacher()
    config = DMDConfig(trajectories=1, gan_weight=0.5, fake_updates=1)
    batch = Batch(torch.zeros(4, 5, 1, 8, 8))

    def step(objective, student, index):
        torch.manual_seed(index)
        out = objective(student, batch, index)
        out.loss.backward()
        return out.metrics

    student = FlowMap.from_teacher(teacher)
    first = DistributionMatching(teacher, config)
    for index in range(2):
        step(first, student, index)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert any(k.startswith("head.") for k in state) and any(k.startswith("adam.") for k in state)
    second = DistributionMatching(teacher, config)
    second.load_state_dict(state, student)
    assert step(first, student, 2) == step(second, student, 2)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_gan_head_needs_a_unet():
    teacher = distill.load_teacher("eight-gaussians")
    objective = DistributionMatching(teacher, DMDConfig(trajectories=1, gan_weight=0.1))
    with pytest.raises(ValueError, match="mid_block"):
        objective(FlowMap.from_teacher(teacher), Batch(torch.zeros(4, 5, 2)), 0)
