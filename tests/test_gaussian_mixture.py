"""The analytic teacher: exact velocity, exact flow map, and the solvers' convergence orders on it."""

from __future__ import annotations

import pytest
import torch

import distill
from distill.solvers import SOLVERS, solve, uniform_grid
from distill.teachers import GaussianMixtureTeacher

F64 = torch.float64


@pytest.fixture(scope="module")
def mixture():
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=F64)
    stds = torch.tensor([[0.3, 0.5], [0.2, 0.2], [0.6, 0.25]], dtype=F64)
    return GaussianMixtureTeacher(means, stds, weights=[0.5, 0.3, 0.2])


def test_velocity_equals_score_velocity(mixture):
    """On x_t = (1 - t) x_data + t noise, v = -(x + t * score(x)) / (1 - t) (Tweedie); the score by autograd."""
    generator = torch.Generator().manual_seed(0)
    t = torch.rand(256, dtype=F64, generator=generator) * 0.98 + 0.01
    x = ((1 - t)[:, None] * mixture.sample_data(256, generator) + t[:, None] * torch.randn(256, 2, dtype=F64,
                                                                                          generator=generator))
    x.requires_grad_(True)
    score = torch.autograd.grad(mixture.log_density(x, t).sum(), x)[0]
    expected = -(x + t[:, None] * score) / (1 - t)[:, None]
    assert torch.allclose(mixture.velocity(x.detach(), t), expected, rtol=1e-10, atol=1e-10)


def test_single_gaussian_flow_map_is_closed_form():
    """One Gaussian: z = (x - (1 - t) mu) / sqrt(Sigma(t)) is constant along trajectories."""
    mu, s = torch.tensor([[0.7, -1.2]], dtype=F64), torch.tensor([[0.3, 1.5]], dtype=F64)
    teacher = GaussianMixtureTeacher(mu, s)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, dtype=F64, generator=generator)
    t, u = torch.rand(64, dtype=F64, generator=generator), torch.rand(64, dtype=F64, generator=generator)

    def std(time):
        return ((1 - time)[:, None] ** 2 * s**2 + time[:, None] ** 2).sqrt()

    exact = (1 - u)[:, None] * mu + std(u) / std(t) * (x - (1 - t)[:, None] * mu)
    assert torch.allclose(teacher.flow_map(x, t, u), exact, rtol=1e-10, atol=1e-10)


def test_reference_flow_map_is_a_semigroup(mixture):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(128, 2, dtype=F64, generator=generator)
    t = torch.full((128,), 0.9, dtype=F64)
    u, s = torch.full_like(t, 0.4), torch.full_like(t, 0.05)
    direct = mixture.flow_map(x, t, s)
    assert torch.allclose(mixture.flow_map(mixture.flow_map(x, t, u), u, s), direct, atol=1e-9)
    assert torch.allclose(mixture.flow_map(direct, s, t), x, atol=1e-9)  # and it inverts backwards in time


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp2m"])
def test_solver_error_falls_at_its_order(mixture, solver):
    """Halving the step divides the error by 2^order. On [0.95, 0.02]: at the ends of [0, 1] the log-SNR steps of a
    uniform grid do not shrink, which slows dpmpp2m's approach to its asymptotic rate. The median over samples
    keeps the few trajectories that sit on a boundary between modes from dominating."""
    noise = torch.randn(512, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    start = mixture.flow_map(noise, 1.0, 0.95)
    exact = mixture.flow_map(start, 0.95, 0.02, steps=2048)
    errors = [float((solve(mixture, start, uniform_grid(n, 0.95, 0.02), solver) - exact).norm(dim=1).median())
              for n in (32, 64, 128)]
    order = SOLVERS[solver].order
    for coarse, fine in zip(errors, errors[1:]):
        assert 2 ** (order - 0.2) < coarse / fine < 2 ** (order + 0.2), errors


def test_sample_starts_from_t_max_times_noise(mixture):
    noise = torch.randn(8, 2, dtype=F64)
    times = torch.tensor([0.8, 0.3, 0.0], dtype=F64)
    assert torch.equal(distill.sample(mixture, noise, times=times), solve(mixture, 0.8 * noise, times))
