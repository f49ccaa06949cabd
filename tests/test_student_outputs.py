"""Students that read the teacher's network output by another rule (distill.students.outputs): the flow-map rules, the
error gains the exporters bake, persistence, the automatic choice and the conversion that teaches the new output."""

from __future__ import annotations

import pytest
import torch

from distill.objectives import TrajectoryConfig, TrajectoryDistillation
from distill.objectives.base import Batch
from distill.recipes.distillation import output_rule
from distill.solvers import time_grid
from distill.students import (
    OUTPUT_RULES,
    DataFlowMap,
    PreconditionedFlowMap,
    TeacherFlowMap,
    VelocityFlowMap,
    jump_gains,
    load_student,
    student_class,
)
from distill.teachers import DiffusersTeacher

from .conftest import tiny_unet

# the rules that re-read the network output (the consistency form keeps the teacher's, and its gain, on purpose)
NEW_RULES = [name for name, rule in OUTPUT_RULES.items()
             if rule.velocity_from_output is not TeacherFlowMap.velocity_from_output]


def epsilon_teacher() -> DiffusersTeacher:
    """A linear-beta DDPM epsilon teacher, the ill-conditioned case (first-jump gain ~157)."""
    from diffusers import DDPMScheduler

    teacher = DiffusersTeacher(tiny_unet(num_class_embeds=4), DDPMScheduler(beta_schedule="linear"))
    teacher.info = {"num_classes": 3, "null_label": 3}
    return teacher


def flow_teacher() -> DiffusersTeacher:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return DiffusersTeacher(tiny_unet(), FlowMatchEulerDiscreteScheduler())


@pytest.mark.parametrize("rule", list(OUTPUT_RULES))
def test_every_rule_is_a_flow_map_linear_in_the_network_output(rule):
    teacher = epsilon_teacher()
    student = student_class(rule).from_teacher(teacher)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    t, s = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.0], dtype=torch.float64)
    with torch.no_grad():
        X = student(x, t, s, labels)
        out = teacher(x, t, labels, raw=True)  # the untrained student's network output is the teacher's
    torch.testing.assert_close(X[1], x[1])  # X(x, t, t) = x
    a, b = student.output_coefficients(t)
    expected = x + (s - t).view(-1, 1, 1, 1).float() * (a.view(-1, 1, 1, 1).float() * x + b.view(-1, 1, 1, 1).float()
                                                          * out)
    torch.testing.assert_close(X, expected, rtol=1e-5, atol=1e-5)


def test_data_rules_are_the_ddim_form():
    """X = (s / t) x + (1 - s / t) D with D = c_skip x + c_out out (CTM's form; EDM's coefficients)."""
    t = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    preconditioned = PreconditionedFlowMap.from_teacher(epsilon_teacher())
    for student, (c_skip, c_out) in ((DataFlowMap.from_teacher(epsilon_teacher()), (torch.zeros(3), torch.ones(3))),
                                     (preconditioned, preconditioned.data_coefficients(t))):
        a, b = student.output_coefficients(t)
        torch.testing.assert_close(a, (1 - c_skip.double()) / t)
        torch.testing.assert_close(b, -c_out.double() / t)
    c_skip, c_out = preconditioned.data_coefficients(t)
    sd = preconditioned.sigma_data
    # unit-variance target: c_skip^2 Var[x] + c_out^2 = ... EDM eq. (7): Var[x_data - c_skip x] = c_out^2
    variance = (1 - c_skip * (1 - t)) ** 2 * sd**2 + (c_skip * t) ** 2
    torch.testing.assert_close(variance, c_out**2)


def test_new_rules_keep_every_jump_gain_below_one_where_epsilon_needs_157():
    teacher = epsilon_teacher()
    grids = [time_grid(teacher, steps) for steps in (1, 2, 4)]
    native = TeacherFlowMap.from_teacher(teacher)
    assert float(jump_gains(native, grids[0])[0]) > 100
    for rule in NEW_RULES:
        student = student_class(rule).from_teacher(teacher)
        assert max(float(jump_gains(student, grid).max()) for grid in grids) <= 1.0 + 1e-9, rule


def test_auto_choice_keeps_a_flow_teachers_rule_and_replaces_epsilon():
    assert output_rule(flow_teacher()) == TeacherFlowMap.output_rule
    assert output_rule(epsilon_teacher()) == VelocityFlowMap.output_rule
    assert output_rule(epsilon_teacher(), "data") == "data"
    with pytest.raises(ValueError, match="unknown student output 'eps'"):
        student_class("eps")


@pytest.mark.parametrize("rule", NEW_RULES)
def test_save_load_keeps_the_rule(tmp_path, rule):
    student = student_class(rule).from_teacher(epsilon_teacher())
    student.save_pretrained(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    assert type(loaded) is type(student)
    x, labels = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.9, 0.0, labels), student(x, 0.9, 0.0, labels), rtol=0, atol=0)


def test_conversion_teaches_the_network_its_new_output():
    """conversion_steps fit F(x_t, t, t) to the teacher's velocity: the student's jumps approach the teacher's Euler
    steps, which the untrained preconditioned student is far from."""
    teacher = epsilon_teacher()
    student = PreconditionedFlowMap.from_teacher(teacher)
    objective = TrajectoryDistillation(teacher, TrajectoryConfig(conversion_steps=10**6))
    data = torch.randn(16, 5, 3, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    batch = Batch(data, torch.tensor([0, 1, 2, 0] * 4))
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-2)

    def error() -> float:  # the conversion loss on fixed times and noise
        torch.manual_seed(123)
        with torch.no_grad():
            return objective.conversion_loss(student, batch).metrics["mse"]

    before = error()
    torch.manual_seed(0)
    for step in range(100):
        out = objective(student, batch, step)
        assert out.metrics["conversion"] == 1.0
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert error() < 0.3 * before, (before, error())


class HalfDataFlowMap(TeacherFlowMap):
    """A contributor's new rule: the network predicts half the data, ``D = 2 out``."""

    output_rule = "half_data"

    def velocity_from_output(self, out, x, t):
        from distill.conventions import per_example

        return (x - 2 * out) / per_example(t.to(torch.float64), x)


def test_a_new_output_rule_needs_only_its_class_and_registry_entry(tmp_path, monkeypatch):
    """docs/design.md: one class and its OUTPUT_RULES entry give a rule that the run config builds, that saves, loads
    and reports its gains, and that the exporters' sampler graph reproduces."""
    from distill.recipes.distillation import StudentConfig, build_student
    from exporters.onnx import SamplerGraph

    monkeypatch.setitem(OUTPUT_RULES, HalfDataFlowMap.output_rule, HalfDataFlowMap)
    teacher = epsilon_teacher()
    student = build_student(teacher, StudentConfig(output="half_data"), "tiny").eval()
    assert type(student) is HalfDataFlowMap
    a, b = student.output_coefficients(torch.tensor([0.5], dtype=torch.float64))
    assert (float(a), float(b)) == pytest.approx((2.0, -4.0))
    student.save_pretrained(tmp_path / "student")
    loaded = load_student(tmp_path / "student").eval()
    noise, labels = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with torch.no_grad():
        expected = distill_sample(student, noise, labels)
        torch.testing.assert_close(distill_sample(loaded, noise, labels), expected, rtol=0, atol=0)
        graph = SamplerGraph(student, time_grid(student, 2)).eval()
        torch.testing.assert_close(graph(noise, labels), expected, rtol=1e-4, atol=1e-4)


def distill_sample(student, noise, labels):
    from distill.solvers import sample

    return sample(student, noise, steps=2, cond=labels)
