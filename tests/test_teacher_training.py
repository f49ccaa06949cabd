"""``distill train-teacher`` writes a teacher that loads through the same path as users' pretrained models."""

from __future__ import annotations

import json

import torch

import distill
from distill.cli import main


def test_train_teacher_writes_a_loadable_diffusers_pipeline(tmp_path, capsys):
    overrides = ["train.steps=3", "train.batch_size=8", "train.progress=false", f"run_dir={tmp_path}/run",
                 f"output={tmp_path}/teacher", "model.block_out_channels=[8, 16]", "model.norm_num_groups=4",
                 "model.layers_per_block=1", "model.attention_head_dim=8"]
    assert main(["train-teacher", "digits-flow", *overrides, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 3
    teacher = distill.load_teacher(tmp_path / "teacher")
    assert type(teacher).__name__ == "DiffusersTeacher" and teacher.scheduler_class == "FlowMatchEulerDiscreteScheduler"
    assert teacher.info.data.name == "digits" and teacher.sample_shape == (1, 8, 8)
    assert torch.isfinite(teacher.velocity(torch.randn(2, 1, 8, 8), 0.5)).all()
    from diffusers import DDPMPipeline

    assert type(DDPMPipeline.from_pretrained(tmp_path / "teacher").unet).__name__ == "UNet2DModel"


def test_train_teacher_module_network(tmp_path):
    overrides = ["train.steps=2", "train.progress=false", "model.hidden=8", f"run_dir={tmp_path}/run",
                 f"output={tmp_path}/teacher"]
    assert main(["train-teacher", "eight-gaussians", *overrides]) == 0
    teacher = distill.load_teacher(tmp_path / "teacher")
    assert type(teacher).__name__ == "ModuleTeacher" and teacher.parameterization.prediction_type == "flow_prediction"
    x = torch.randn(4, 2)
    reloaded = distill.load_teacher(tmp_path / "teacher")
    assert torch.equal(teacher.velocity(x, 0.3), reloaded.velocity(x, 0.3))


def test_train_teacher_never_overwrites_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")
    overrides = ["train.steps=1", "train.progress=false", "model.hidden=8", f"run_dir={tmp_path}/run",
                 f"output={tmp_path}/precious"]
    assert main(["train-teacher", "eight-gaussians", *overrides]) == 2
    assert "does not hold a saved teacher" in capsys.readouterr().err
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"
