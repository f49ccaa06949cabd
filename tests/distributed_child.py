"""Run by tests/test_distributed.py, alone or under torchrun: a tiny MeanFlow (JVP) distillation whose final weights
are written per rank. Arguments: OUT_DIR GRAD_ACCUMULATION."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from distill.data import Dataset
from distill.nets import TwoTimeMLP
from distill.objectives import MeanFlow
from distill.students import TwoTimeFlowMap
from distill.teachers import GaussianMixtureTeacher
from distill.train import TrainConfig, train


def main() -> None:
    out, accumulation = Path(sys.argv[1]), int(sys.argv[2])
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=torch.float64)
    teacher = GaussianMixtureTeacher(means, 0.3)
    data = Dataset(teacher.sample_data(256, torch.Generator().manual_seed(0)).float())
    torch.manual_seed(0)
    student = TwoTimeFlowMap(TwoTimeMLP(hidden=16, depth=2, embedding_dim=8, time_scale=100.0), sample_shape=(2,))
    config = TrainConfig(steps=4, batch_size=16, grad_accumulation=accumulation, learning_rate=1e-2, warmup_steps=1,
                         checkpoint_every=2, log_every=1, progress=False, ema_decays=[0.9])
    train(student, MeanFlow(teacher), data, config, out / "run")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, out / f"rank{rank}.safetensors")


if __name__ == "__main__":
    main()
