"""Time grids and evaluation counts."""

from __future__ import annotations

import pytest
import torch

import distill
from distill.conventions import VESchedule
from distill.solvers import edm_grid, shifted_grid, solver_nfe, steps_for_nfe, time_grid, uniform_grid

F64 = torch.float64


@pytest.mark.parametrize("grid", ["uniform", "shifted", "edm"])
def test_grids_run_from_t_max_to_zero(grid):
    teacher = distill.load_teacher("eight-gaussians-exact")
    times = time_grid(teacher, 7, grid)
    assert len(times) == 8 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    assert float(times[0]) == pytest.approx(1.0 if grid != "edm" else 80 / 81)


def test_edm_grid_equals_diffusers_karras_sigmas():
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0)
    scheduler.set_timesteps(9)
    expected = scheduler.sigmas.to(F64) / (1 + scheduler.sigmas.to(F64))
    assert torch.allclose(VESchedule(0.002, 80.0).training_grid(9), expected, rtol=1e-6)
    assert torch.allclose(edm_grid(9, 0.002 / 1.002, 80 / 81), expected, rtol=1e-6)


def test_shifted_grid_spends_steps_near_noise():
    plain, shifted = uniform_grid(10), shifted_grid(10, shift=3.0)
    assert torch.equal(shifted[[0, -1]], plain[[0, -1]]) and bool((shifted[1:-1] > plain[1:-1]).all())


def test_nfe_counts():
    times = uniform_grid(4)
    assert (solver_nfe("euler", times), solver_nfe("heun", times), solver_nfe("dpmpp2m", times)) == (4, 7, 4)
    for solver in ("euler", "heun", "dpmpp2m"):  # steps_for_nfe is the inverse: the longest grid within the budget
        for nfe in range(1, 9):
            steps = steps_for_nfe(solver, nfe)
            assert solver_nfe(solver, uniform_grid(steps)) <= nfe < solver_nfe(solver, uniform_grid(steps + 1))
    calls = []
    teacher = distill.load_teacher("eight-gaussians-exact")

    class Counting(type(teacher)):
        def velocity(self, x, t, cond=None):
            calls.append(1)
            return super().velocity(x, t, cond)

    counting = Counting(teacher.means, teacher.stds)
    distill.sample(counting, torch.randn(3, 2), times=times, solver="heun")
    assert len(calls) == 7
