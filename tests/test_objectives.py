"""Each objective's loss is ~0 when the student is the exact flow map of an analytic teacher, and clearly positive
for a perturbed one."""

from __future__ import annotations

import torch
from torch import nn

from distill.objectives import Batch, MeanFlow, MeanFlowConfig, TimePairs
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
        return F if output == "average_velocity" else x + (torch.as_tensor(s) - torch.as_tensor(t)) * F


def mixture():
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=F64)
    return GaussianMixtureTeacher(means, 0.3, weights=[0.5, 0.3, 0.2])


def test_meanflow_vanishes_at_the_exact_flow_map():
    teacher = mixture()
    torch.manual_seed(0)
    batch = Batch(teacher.sample_data(64, torch.Generator().manual_seed(0)))
    config = MeanFlowConfig(times=TimePairs(distribution="uniform", share_equal=0.25), adaptive_p=0.0,
                            jvp_mode="double_backward")
    objective = MeanFlow(teacher, config)
    exact = objective(ExactFlowMap(teacher), batch, step=0).metrics["mse"]
    torch.manual_seed(0)
    perturbed = objective(ExactFlowMap(teacher, scale=1.05), batch, step=0).metrics["mse"]
    assert exact < 1e-9 < 1e-3 < perturbed, (exact, perturbed)


def test_meanflow_trains_a_student_in_the_loop(tmp_path):
    from distill.data import Dataset
    from distill.nets import TwoTimeMLP
    from distill.students import FlowMap
    from distill.train import TrainConfig, train

    teacher = mixture()
    torch.manual_seed(0)
    student = FlowMap(TwoTimeMLP(hidden=32), sample_shape=(2,))
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
