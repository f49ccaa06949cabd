"""The documented scripts in ``scripts/`` run end to end at a tiny size, so a command in the docs cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, *args: str, cwd: Path) -> str:
    """Run a script in ``cwd`` with its own cache there; its stdout."""
    env = {**os.environ, "DISTILL_CACHE": str(cwd / "cache")}
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, cwd=cwd,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_objectives_runs_every_kind_of_objective(tmp_path):
    """A bootstrapped objective and the trajectory objective (which builds its own data) at a tiny size."""
    out = run_script("bench_objectives.py", "--steps", "20", "--batch", "32", "--hidden", "32", "--samples", "200",
                     "--only", "trajectory,meanflow", "--json", cwd=tmp_path)
    rows = json.loads(out)["rows"]
    assert [r["objective"] for r in rows] == ["trajectory", "meanflow"]
    assert all(r["flow_map_rel_rmse"] > 0 and set(r["swd"]) == {"1", "2", "4"} for r in rows)


def test_make_model_card_writes_a_card(tmp_path):
    out = run_script("make_model_card.py", "mnist-flow", "--samples", "20", "--nfe", "1,2", "--out", "card",
                     cwd=tmp_path)
    card = (tmp_path / "card" / "README.md").read_text()
    assert "| mnist-flow | dpmpp2m | 2 |" in card and "distill train-teacher mnist-flow" in card, out
    assert {p.name for p in (tmp_path / "card").iterdir()} == {"README.md", "eval.json", "samples.png", "quality.png"}


def test_solver_convergence_runs(tmp_path):
    out = run_script("solver_convergence.py", "--samples", "100", "--json", cwd=tmp_path)
    assert json.loads(out)


def test_samples_figure_draws_student_and_teacher_rows(tmp_path):
    """A tiny class-conditional student on the bundled teacher (untrained: one teacher Euler step)."""
    import distill
    from distill.recipes.distillation import StudentConfig, build_student

    build_student(distill.load_teacher("mnist-flow"), StudentConfig(), "mnist-flow").save_pretrained(
        tmp_path / "student")
    out = run_script("samples_figure.py", str(tmp_path / "student"), "--per-class", "1", "--teacher-steps", "2",
                     "--out", "figure.png", cwd=tmp_path)
    assert out.count("classified as the requested class") == 3 and (tmp_path / "figure.png").stat().st_size > 0


def test_dmd_finetune_prints_progress_and_the_final_rows(tmp_path):
    import distill
    from distill.recipes.distillation import StudentConfig, build_student

    build_student(distill.load_teacher("mnist-flow"), StudentConfig(), "mnist-flow").save_pretrained(
        tmp_path / "student")
    out = run_script("dmd_finetune.py", str(tmp_path / "student"), "--teacher", "mnist-flow", "--trajectories", "8",
                     "--steps", "4", "--eval-every", "2", "--samples", "20", "--batch", "4", "--generator-steps",
                     "1,2", "--out", "run", cwd=tmp_path)
    progress, final = out.strip().splitlines()
    assert set(json.loads(progress)) == {"step", "fd1", "fd2"}
    assert [(r["model"], r["nfe"]) for r in json.loads(final)][-3:] == [("dmd", 1), ("dmd", 2), ("dmd", 4)]
    assert (tmp_path / "run" / "student").is_dir()


def test_bench_distill_prints_a_row_with_speed_at_equal_quality(tmp_path):
    out = run_script("bench_distill.py", "--rows", "mnist-flow:trajectory", "--steps", "4", "--samples", "20",
                     "--trajectories", "8", "--json", cwd=tmp_path)
    row = json.loads(out)["rows"][0]
    assert row["objective"] == "trajectory" and set(row["fd_ratio"]) == {"1", "2", "4"}
    assert set(row["equal_quality"]) == {"1", "2"} and row["teacher_best"]["nfe"] <= 64


def test_bench_export_reports_every_precision(tmp_path):
    import distill
    from distill.recipes.distillation import StudentConfig, build_student

    build_student(distill.load_teacher("mnist-flow"), StudentConfig(), "mnist-flow").save_pretrained(
        tmp_path / "student")
    runtimes = ["onnxruntime"] + ["openvino"] * bool(importlib.util.find_spec("openvino"))
    out = run_script("bench_export.py", "--student", str(tmp_path / "student"), "--steps", "1", "--precisions",
                     "fp32,int8", "--runtimes", ",".join(runtimes), "--samples", "20", "--batch", "4", "--out",
                     "export", "--peak", "--peak-size", "128", "--json", cwd=tmp_path)
    result = json.loads(out)
    ratios = result["ratios"]
    assert {(r["runtime"], r["precision"]) for r in ratios} == {(r, p) for r in runtimes for p in ("fp32", "int8")}
    assert all(r["size_vs_fp32"] > 0 and r["fd_vs_float"] is not None for r in ratios)
    profile = result["profile"]["int8"]
    assert abs(sum(row["share"] for row in profile) - 1) < 0.01 and any(row["op"] == "QLinearConv" for row in profile)
    assert result["peak"]["int8_matmul"] > 0 and result["peak"]["bf16_matmul"] > 0


def test_bundle_reference_writes_the_teacher_samples(tmp_path):
    out = run_script("bundle_reference.py", "mnist-flow", "--samples", "8", "--solvers", "euler", "--nfe", "1",
                     "--reference-nfe", "2", "--out", str(tmp_path / "reference"), cwd=tmp_path)
    written = sorted((tmp_path / "reference").glob("*.safetensors"))
    assert len(written) == 3 and all(str(path) in out for path in written)  # euler 1, dpmpp2m 2, the fidelity reference


def test_train_classifiers_writes_a_card(tmp_path):
    run_script("train_classifiers.py", "digits8", "--epochs", "1", "--out", str(tmp_path / "classifiers"),
               cwd=tmp_path)
    card = json.loads((tmp_path / "classifiers" / "digits8" / "card.json").read_text())
    assert 0 <= card["holdout_accuracy"] <= 1 and card["epochs"] == 1


def test_train_t2i_teacher_writes_a_pipeline_folder_diffusers_loads(tmp_path):
    """Two steps of each stage; the folder loads in ``StableDiffusionPipeline`` and draws a 32x32 image."""
    result = json.loads(run_script("train_t2i_teacher.py", "--smoke", cwd=tmp_path).strip().splitlines()[-1])
    assert result["files"] == ["distill.json", "model_index.json", "prompts.json", "scheduler", "text_encoder",
                               "tokenizer", "unet", "vae"]
    assert result["image"] == [1, 32, 32, 1]
    assert 0 <= result["judge"]["held_out_agreement"] <= 1 and result["judge"]["fd_mnist16"] > 0
