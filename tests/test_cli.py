"""The distill command on the bundled analytic teacher."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from distill.cli import main


def test_sample_writes_npz_and_reports_error_to_exact_map(tmp_path, capsys):
    out = tmp_path / "samples.npz"
    assert main(["sample", "eight-gaussians-exact", "--steps", "8", "--n", "32", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nfe"] == 15 and report["samples"] == 32
    assert 0 < report["reference_rmse"] < 0.2
    samples = np.load(out)["samples"]
    assert samples.shape == (32, 2) and np.isfinite(samples).all()


def test_sample_png_and_teachers_listing(tmp_path):
    out = tmp_path / "plot.png"
    command = [sys.executable, "-m", "distill.cli", "sample", "eight-gaussians-exact", "--steps", "4", "--n", "64",
               "--solver", "dpmpp2m", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listing = subprocess.run([sys.executable, "-m", "distill.cli", "teachers", "--json"], check=True,
                             capture_output=True, text=True).stdout
    assert "eight-gaussians-exact" in [row["name"] for row in json.loads(listing)["teachers"]]


def test_missing_teacher_is_one_clear_line(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no such folder") and "\n" not in error


def test_sample_class_conditional_teacher_with_guidance(tmp_path, capsys):
    overrides = ["train.steps=2", "train.batch_size=4", "train.progress=false", f"run_dir={tmp_path}/run",
                 f"output={tmp_path}/teacher", "model.block_out_channels=[8, 16, 16]", "model.norm_num_groups=4",
                 "model.layers_per_block=1", "model.attention_head_dim=8"]
    assert main(["train-teacher", "mnist", *overrides]) == 0
    out = tmp_path / "guided.npz"
    args = ["sample", str(tmp_path / "teacher"), "--steps", "2", "--n", "4", "--class", "7", "--guidance", "2",
            "--out", str(out), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["nfe"] == 3 and np.load(out)["samples"].shape == (4, 1, 16, 16)
    assert main(["sample", "eight-gaussians-exact", "--guidance", "2", "--out", str(out)]) == 2
    assert "--guidance needs a class-conditional teacher" in capsys.readouterr().err
