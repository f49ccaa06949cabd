"""``distill run``: a distillation run folder, its student and its eval report; config errors name the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.cli import main
from distill.students import load_student

TINY = ["student.network.hidden=16", "student.network.depth=2", "train.steps=12", "train.batch_size=32",
        "train.checkpoint_every=6", "train.log_every=3", "train.progress=false", "train.ema_decays=[0.9]",
        "eval.samples=64", "eval.nfe=[1, 2]", "eval.solvers=[euler]", "sample_every=6"]


def test_run_writes_a_student_that_sample_and_eval_accept(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "eight-gaussians", *TINY, f"run_dir={run_dir}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 12 and report["student"] == str(run_dir / "student")
    rows = report["eval"]["rows"]
    assert {(r["kind"], r["nfe"]) for r in rows} == {("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2)}
    keys = {"model", "kind", "solver", "nfe", "fd", "swd", "confident", "class_entropy", "fidelity_rmse", "seconds"}
    assert all(keys <= set(r) for r in rows) and report["eval"]["dataset"] == "eight-gaussians-exact"
    for name in ("config.yaml", "log.jsonl", "eval.json", "eval.md", "samples.png", "samples/step-00000006.png"):
        assert (run_dir / name).exists(), name
    assert load_student(run_dir / "student").info.teacher == "eight-gaussians-exact"

    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir / "student"), "--steps", "2", "--n", "8", "--out", str(out), "--json"]) == 0
    sampled = json.loads(capsys.readouterr().out)
    assert sampled["solver"] == "flow_map" and sampled["nfe"] == 2 and np.load(out)["samples"].shape == (8, 2)
    assert main(["eval", str(run_dir / "student"), "--nfe", "1", "--samples", "32", "--solvers", "heun",
                 "--plot", "", "--quiet", "--json"]) == 0
    kinds = [r["kind"] for r in json.loads(capsys.readouterr().out)["rows"]]
    assert kinds == ["teacher", "student"]

    # rerunning the finished run resumes at its last checkpoint: nothing is trained again
    assert main(["run", "eight-gaussians", *TINY, f"run_dir={run_dir}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 12
    assert (run_dir / "config.yaml").read_text().startswith("# config sha256 ")

    # another config in the same folder: one line naming the keys, and the folder is left byte-identical
    before = folder_bytes(run_dir)
    for override, named in (("train.learning_rate=0.002", "train.learning_rate (0.001 -> 0.002)"),
                            ("student.kind=TwoTimeUNet", "student.kind (TwoTimeMLP -> TwoTimeUNet)")):
        assert main(["run", "eight-gaussians", *TINY, f"run_dir={run_dir}", override]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and "holds a run of another config" in error and "--restart" in error, error
        assert named in error, error
    assert folder_bytes(run_dir) == before

    # --restart moves the old run aside (nothing is deleted) and trains from scratch
    assert main(["run", "eight-gaussians", *TINY, f"run_dir={run_dir}", "train.steps=6", "--restart", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    (aside,) = tmp_path.glob("run.replaced-*")
    assert folder_bytes(aside) == before


def folder_bytes(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("override, message", [
    ("objective.name=lagrangain", "did you mean 'lagrangian'"),
    ("objective.tims=3", "did you mean 'objective.times'"),
    ("trian.steps=3", "did you mean 'train'"),
    ("student.kind=resnet", "unknown student kind"),
])
def test_config_mistakes_are_one_clear_line(override, message, capsys):
    assert main(["run", "eight-gaussians", override, "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["run", "mnist", "objective.name=ctm", "train.steps=7", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "name: ctm" in printed and "steps: 7" in printed


def test_quickstart_report_has_the_contract_keys(tmp_path, capsys):
    overrides = ["train.steps=2", "train.batch_size=4", "objective.trajectories=8", "eval.samples=20", "eval.nfe=[1]",
                 "eval.reference_nfe=[]", "eval.solvers=[euler]"]
    assert main(["quickstart", *overrides, "--out", str(tmp_path / "qs"), "--export-steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"teacher", "student", "seconds", "eval", "export"} <= set(report) and report["teacher"] == "mnist-flow"
    (artifact,) = report["export"]["artifacts"]  # the 1-step ONNX sampler, checked against the PyTorch student
    assert artifact["graph"] == "sampler" and artifact["precision"] == "fp32" and artifact["rel_err"] < 1e-4
    assert artifact["fd"] == pytest.approx(artifact["float_fd"], rel=1e-3)
    assert [r["kind"] for r in report["eval"]["rows"]] == ["teacher", "student"]
    assert report["eval"]["rows"][1]["fd"] is not None
    assert load_student(report["student"]).info.teacher == "mnist-flow"


def test_a_new_objective_needs_only_its_class_and_registry_entry(tmp_path, capsys, monkeypatch):
    """docs/design.md: one objective class and its OBJECTIVES entry train, checkpoint and report through
    ``distill run`` like the built-in ones."""
    from dataclasses import dataclass

    from distill.objectives import OBJECTIVES, DistillationConfig
    from distill.objectives.base import DistillationObjective, noised

    @dataclass
    class ShortEulerConfig(DistillationConfig):
        shrink: float = 0.9

    class ShortEuler(DistillationObjective):
        """The student's jump t -> shrink * t matches one Euler step of the teacher."""

        config_class = ShortEulerConfig

        def loss(self, student, batch, step):
            t, _ = self.sample_times(batch.x.shape[0])
            x_t, s = noised(batch.x, t), self.config.shrink * t
            target = self.teacher_step(x_t, t, s, batch.cond, "euler")
            return self.compare(student(x_t, t, s, batch.cond), target)

    monkeypatch.setitem(OBJECTIVES, "short_euler", (ShortEuler, ShortEulerConfig))
    run_dir = tmp_path / "run"
    assert main(["run", "eight-gaussians", *TINY, "objective={name: short_euler, shrink: 0.8}", f"run_dir={run_dir}",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["objective"] == "short_euler" and report["steps"] == 12
    assert [r["kind"] for r in report["eval"]["rows"]].count("student") == 2
    assert "shrink: 0.8" in (run_dir / "config.yaml").read_text()
