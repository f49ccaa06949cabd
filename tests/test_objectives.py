"""Each objective's loss is ~0 when the student is the exact flow map of an analytic teacher, and clearly positive
for a perturbed one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.conventions import per_example
from distill.objectives import (
    CTM,
    Batch,
    ConsistencyDistillation,
    ConsistencyDistillationConfig,
    ContinuousConsistency,
    ContinuousConsistencyConfig,
    CTMConfig,
    DistributionMatching,
    DMDConfig,
    EulerianMap,
    EulerianMapConfig,
    LagrangianMap,
    LagrangianMapConfig,
    MeanFlow,
    MeanFlowConfig,
    Progressive,
    ProgressiveConfig,
    Shortcut,
    ShortcutConfig,
    TimePairs,
)
from distill.teachers import GaussianMixtureTeacher

F64 = torch.float64


class ExactFlowMap(nn.Module):
    """A 'student' that calls the teacher's reference flow map; ``scale`` != 1 perturbs its jumps."""

    def __init__(self, teacher: GaussianMixtureTeacher, scale: float = 1.0, steps: int = 64):
        super().__init__()
        self.teacher, self.scale, self.steps = teacher, scale, steps
        self.t_min, self.t_max = 0.0, 1.0

    def average_velocity(self, x, t, s, cond=None):
        t = torch.as_tensor(t, dtype=F64).expand(x.shape[0])
        s = torch.as_tensor(s, dtype=F64).expand(x.shape[0])
        gap = torch.where(s == t, torch.ones_like(t), s - t)[:, None]
        equal = (s == t)[:, None]
        jumped = (self.teacher.flow_map(x, t, s, steps=self.steps) - x) / gap
        return self.scale * torch.where(equal, self.teacher.velocity(x, t), jumped)

    def forward(self, x, t, s, cond=None, output="map"):
        F = self.average_velocity(x, t, s, cond)
        if output == "average_velocity":
            return F
        return x + per_example(torch.as_tensor(s, dtype=F64) - torch.as_tensor(t, dtype=F64), x) * F


def mixture():
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=F64)
    return GaussianMixtureTeacher(means, 0.3, weights=[0.5, 0.3, 0.2])


UNIFORM = TimePairs(distribution="uniform", share_equal=0.25)

# name -> (objective, the exact map's mse bound: its constant part, where the target uses the teacher's solver)
EXACT_CASES = {
    "meanflow": (lambda g: MeanFlow(g, MeanFlowConfig(times=UNIFORM, adaptive_p=0.0, jvp_mode="double_backward")),
                 1e-9),
    "eulerian_continuous": (lambda g: EulerianMap(g, EulerianMapConfig(times=UNIFORM, epsilon=0.0,
                                                                       jvp_mode="double_backward")), 1e-9),
    # one Heun step over 5% of t - s: its local error
    "eulerian_discrete": (lambda g: EulerianMap(g, EulerianMapConfig(times=UNIFORM, epsilon=0.05)), 1e-8),
    "continuous_consistency": (lambda g: ContinuousConsistency(g, ContinuousConsistencyConfig(
        jvp_mode="double_backward", warmup_steps=0)), 1e-9),
    # the central difference in s with h = 1e-3
    "lagrangian": (lambda g: LagrangianMap(g, LagrangianMapConfig(times=UNIFORM)), 1e-9),
    "shortcut": (lambda g: Shortcut(g, ShortcutConfig(times=UNIFORM)), 1e-12),
    # one Heun step of a 64-step grid
    "consistency": (lambda g: ConsistencyDistillation(g, ConsistencyDistillationConfig(target_ema=0.0)), 1e-9),
    # 8 Heun steps from t to u
    "ctm": (lambda g: CTM(g, CTMConfig(times=UNIFORM, teacher_substeps=8)), 1e-5),
    # two Heun steps of a 128-step grid (round 0)
    "progressive": (lambda g: Progressive(g, ProgressiveConfig()), 1e-5),
}


@pytest.mark.parametrize("name", sorted(EXACT_CASES))
def test_objective_vanishes_at_the_exact_flow_map(name):
    make, bound = EXACT_CASES[name]
    teacher = mixture()
    objective = make(teacher)
    batch = Batch(teacher.sample_data(64, torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    exact = objective(ExactFlowMap(teacher), batch, step=0).metrics["mse"]
    torch.manual_seed(0)
    perturbed = objective(ExactFlowMap(teacher, scale=1.05), batch, step=0).metrics["mse"]
    assert exact < bound and perturbed > 100 * bound, (exact, perturbed)


def test_progressive_later_rounds_compose_the_frozen_student():
    teacher = mixture()
    objective = Progressive(teacher, ProgressiveConfig(start_steps=8, steps_per_round=10))
    assert [objective.student_steps(k) for k in (0, 9, 10, 25, 1000)] == [4, 4, 2, 1, 1]
    batch = Batch(teacher.sample_data(64, torch.Generator().manual_seed(0)))
    exact = objective(ExactFlowMap(teacher), batch, step=10).metrics["mse"]  # the semigroup of the exact map
    assert objective.previous_round == 1 and exact < 1e-12
    state = objective.state_dict()
    resumed = Progressive(teacher, ProgressiveConfig(start_steps=8, steps_per_round=10))
    resumed.load_state_dict(state, ExactFlowMap(teacher))
    assert resumed.previous_round == 1 and resumed.previous is not None


def test_meanflow_trains_a_student_in_the_loop(tmp_path):
    from distill.data import Dataset
    from distill.nets import TwoTimeMLP
    from distill.students import TwoTimeFlowMap
    from distill.train import TrainConfig, train

    teacher = mixture()
    torch.manual_seed(0)
    student = TwoTimeFlowMap(TwoTimeMLP(hidden=32), sample_shape=(2,))
    data = Dataset(teacher.sample_data(512, torch.Generator().manual_seed(1)).float())
    objective = MeanFlow(teacher)
    loss = objective(student, Batch(data.x[:64]), step=0).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    config = TrainConfig(steps=40, batch_size=128, learning_rate=3e-3, warmup_steps=1, progress=False,
                         checkpoint_every=100, log_every=10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = train(student, objective, data, config, tmp_path / "run")
    assert result.skipped_steps == 0 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    # (whether the student approaches the exact map is scripts/bench_objectives.py's question, not a unit test's)


def test_time_pairs_are_ordered_with_the_requested_shares():
    pairs = TimePairs(share_equal=0.3, share_zero=0.2)
    t, s = pairs.sample(20000, 0.01, 0.99, torch.Generator().manual_seed(0))
    assert bool((s <= t).all()) and float(t.min()) >= 0.01 and float(t.max()) <= 0.99
    assert abs(float((s == t).double().mean()) - 0.3) < 0.02 and abs(float((s == 0).double().mean()) - 0.2) < 0.02


ALL_OBJECTIVES = {
    "meanflow": lambda g: MeanFlow(g),
    "eulerian_continuous": lambda g: EulerianMap(g, EulerianMapConfig(epsilon=0.0)),
    "eulerian_discrete": lambda g: EulerianMap(g, EulerianMapConfig(epsilon=0.1, target_ema=0.9)),
    "continuous_consistency": lambda g: ContinuousConsistency(g),
    "lagrangian": lambda g: LagrangianMap(g),
    "shortcut": lambda g: Shortcut(g),
    "consistency": lambda g: ConsistencyDistillation(g),
    "ctm": lambda g: CTM(g),
    "progressive": lambda g: Progressive(g, ProgressiveConfig(start_steps=4, steps_per_round=1)),
    "dmd": lambda g: DistributionMatching(g, DMDConfig(trajectories=1)),
}


@pytest.mark.parametrize("name", sorted(ALL_OBJECTIVES))
def test_every_objective_backpropagates_through_a_diffusers_unet_student(name):
    from diffusers import DDIMScheduler

    from distill.students import FlowMap
    from distill.teachers import DiffusersTeacher

    from .conftest import tiny_unet

    teacher = DiffusersTeacher(tiny_unet(num_class_embeds=4), DDIMScheduler())
    teacher.info = {"null_label": 3}
    student = FlowMap.from_teacher(teacher)
    objective = ALL_OBJECTIVES[name](teacher)
    batch = Batch(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0]))
    for step in range(2):  # the second step uses targets (EMA, previous round) built on the first
        student.zero_grad()
        out = objective(student, batch, step)
        out.loss.backward()
    assert torch.isfinite(out.loss) and out.metrics["loss"] == pytest.approx(out.loss.item())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_guidance_scale_reaches_the_teacher():
    from distill.teachers import GuidedTeacher

    teacher = mixture()
    with pytest.raises(ValueError, match="null_label"):
        MeanFlow(teacher, MeanFlowConfig(guidance=2.0))
    teacher.info = {"null_label": 3}
    guided = CTM(teacher, CTMConfig(guidance=2.0)).teacher
    assert isinstance(guided, GuidedTeacher) and guided.guidance_scale == 2.0 and guided.null_cond == 3
    with pytest.raises(TypeError, match="MeanFlowConfig"):
        MeanFlow(teacher, CTMConfig())


def test_ema_target_resumes_with_the_run(tmp_path):
    from distill.data import Dataset
    from distill.nets import TwoTimeMLP
    from distill.students import TwoTimeFlowMap
    from distill.train import TrainConfig, train

    teacher = mixture()
    data = Dataset(teacher.sample_data(256, torch.Generator().manual_seed(1)).float())

    def run(steps, folder):
        torch.manual_seed(0)
        student = TwoTimeFlowMap(TwoTimeMLP(hidden=16, depth=2, embedding_dim=8), sample_shape=(2,))
        objective = ConsistencyDistillation(teacher, ConsistencyDistillationConfig(target_ema=0.9, intervals=8))
        config = TrainConfig(steps=steps, batch_size=32, learning_rate=1e-2, warmup_steps=1, progress=False,
                             checkpoint_every=3, log_every=1)
        train(student, objective, data, config, folder)
        return student, objective

    straight, straight_objective = run(6, tmp_path / "straight")
    run(3, tmp_path / "resumed")
    resumed, resumed_objective = run(6, tmp_path / "resumed")  # a new process: the EMA target comes from disk
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(straight_objective.state_dict().values(),
                                                 resumed_objective.state_dict().values()))


def test_trajectory_distillation_vanishes_on_the_exact_map_and_caches_its_data(tmp_path, monkeypatch):
    from distill.objectives import TrajectoryConfig, TrajectoryDistillation

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    teacher = mixture()
    objective = TrajectoryDistillation(teacher, TrajectoryConfig(trajectories=64, steps=64, stride=16))
    data = objective.training_data(progress=False)
    assert data.x.shape == (64, 5, 2) and len(list(tmp_path.rglob("*.pt"))) == 1
    assert torch.equal(objective.training_data(progress=False).x, data.x)  # from the cache
    batch = Batch(data.x)
    # the stored states are the teacher's Heun solution (64 steps): the exact map misses them by that error only
    torch.manual_seed(0)
    exact = objective(ExactFlowMap(teacher, steps=256), batch, step=0).metrics["mse"]
    torch.manual_seed(0)
    perturbed = objective(ExactFlowMap(teacher, scale=1.05, steps=256), batch, step=0).metrics["mse"]
    assert exact < 1e-5 and perturbed > 100 * exact, (exact, perturbed)
    with pytest.raises(ValueError, match="unknown solver"):
        TrajectoryConfig(solver="rk4")


def test_trajectory_jumps_draw_the_samplers_jumps_in_their_shares():
    """``jumps=[1, 2, 4]`` on five stored times: the one-step jump (0 -> 4) a third of the time, each of the two-step
    sampler's jumps a sixth, each four-step jump a twelfth, and no other pair; a length that does not divide the
    stored intervals is refused."""
    from distill.objectives import TrajectoryConfig, TrajectoryDistillation

    teacher = mixture()
    objective = TrajectoryDistillation(teacher, TrajectoryConfig(trajectories=4, steps=16, stride=4, jumps=[1, 2, 4]))
    pairs, weights = objective.pairs(5)
    drawn = pairs[:, torch.multinomial(weights, 120_000, replacement=True, generator=torch.Generator().manual_seed(0))]
    counts = {(int(i), int(j)): 0 for i, j in pairs.T}
    for i, j in drawn.T.tolist():
        counts[(i, j)] += 1
    expected = {(0, 4): 1 / 3, (0, 2): 1 / 6, (2, 4): 1 / 6, (0, 1): 1 / 12, (1, 2): 1 / 12, (2, 3): 1 / 12,
                (3, 4): 1 / 12}
    assert set(counts) == set(expected)
    for pair, share in expected.items():
        assert abs(counts[pair] / 120_000 - share) < 0.005, (pair, counts[pair])
    assert objective.pairs(5)[1] is not None and TrajectoryDistillation(teacher, TrajectoryConfig()).pairs(5)[1] is None
    with pytest.raises(ValueError, match="jumps must be sampler lengths"):
        TrajectoryConfig(steps=16, stride=4, jumps=[3])
    to_data = TrajectoryDistillation(teacher, TrajectoryConfig(steps=16, stride=4, to_data=True))
    assert to_data.pairs(5)[0].tolist() == [[0, 1, 2, 3], [4, 4, 4, 4]]  # a consistency-form student: ends at t = 0
    with pytest.raises(ValueError, match="leave jumps unset"):
        TrajectoryConfig(steps=16, stride=4, jumps=[1], to_data=True)


def test_multistep_trajectories_keep_the_states_of_one_solve(tmp_path, monkeypatch):
    """DPM-Solver++(2M) trajectories: each kept state is the solver's own state at that time (the solve on the grid's
    prefix ends there: its history depends on earlier steps only), and they follow the exact flow map closely."""
    from distill.objectives import TrajectoryConfig, TrajectoryDistillation
    from distill.solvers import solve, time_grid

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    teacher = mixture()
    config = TrajectoryConfig(trajectories=32, solver="dpmpp2m", steps=32, stride=8)
    objective = TrajectoryDistillation(teacher, config)
    data = objective.training_data(progress=False)
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(config.seed))
    times = time_grid(teacher, 32)
    for m in range(1, 5):
        prefix = solve(teacher, float(times[0]) * noise, times[: 8 * m + 1], "dpmpp2m")
        torch.testing.assert_close(data.x[:, m], prefix, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    exact = objective(ExactFlowMap(teacher, steps=256), Batch(data.x), step=0).metrics["mse"]
    assert exact < 1e-4, exact
