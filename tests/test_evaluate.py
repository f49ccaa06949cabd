"""Quality versus NFE: the report's keys, metrics that improve with NFE, the cached reference, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import distill
from distill.cli import main
from distill.evaluation.tables import Evaluation, markdown_table, report, steps_for_nfe
from distill.teachers import DiffusersTeacher

from .conftest import tiny_unet

ROW_KEYS = {"model", "kind", "solver", "nfe", "fd", "swd", "confident", "class_entropy", "fidelity_rmse", "seconds"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))


def test_analytic_teacher_quality_improves_with_nfe():
    evaluation = Evaluation(distill.load_teacher("eight-gaussians-exact"), samples=500, progress=False)
    rows = evaluation.teacher_rows(["heun"], [1, 16])
    assert rows[1].swd < rows[0].swd and rows[1].fidelity_rmse < 0.1 * rows[0].fidelity_rmse
    result = report(evaluation, rows)
    assert set(result) >= {"dataset", "samples", "rows"} and set(result["rows"][0]) >= ROW_KEYS
    assert rows[1].swd < 1.5 * result["data_floor"]["swd"]  # a 15-NFE solve of the exact field is data-like
    assert "| teacher | heun | 15 |" in markdown_table(rows)  # 16 NFE buys heun 8 steps = 15 evaluations


def test_image_teacher_rows_and_reference_cache(tmp_path):
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    teacher = DiffusersTeacher(unet, DDIMScheduler())
    teacher.info = {"data": {"name": "mnist", "size": 16}}
    evaluation = Evaluation(teacher, samples=64, progress=False)
    row = evaluation.teacher_rows(["euler"], [2])[0]
    assert row.fd > 0 and 0 <= row.confident <= 1 and row.class_entropy >= 0 and row.swd is None
    cached = list((tmp_path / "cache" / "teacher_samples").glob("*.pt"))
    assert len(cached) == 2  # the euler samples and the reference solution
    again = Evaluation(teacher, samples=64, progress=False)
    assert torch.equal(again.reference(), evaluation.reference())
    assert again.teacher_rows(["euler"], [2])[0] == row  # served from the cache, generation time included


def test_bundled_trajectories_are_the_computed_ones(tmp_path, monkeypatch):
    """Trajectories shipped without their first state come back bit-identical, and nothing is solved again."""
    from safetensors.torch import save_file

    import distill.solvers
    import distill.teachers.loading
    from distill.data import REFERENCE_FOLDER, shippable, teacher_trajectories

    teacher = distill.load_teacher("eight-gaussians-exact")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    computed = teacher_trajectories(teacher, noise, solver="euler", steps=4, stride=2, progress=False)
    [cached] = (tmp_path / "cache" / "teacher_samples").glob("*.pt")
    folder = tmp_path / "assets" / "eight-gaussians-exact" / REFERENCE_FOLDER
    folder.mkdir(parents=True)
    save_file(shippable(torch.load(cached, weights_only=True), 1), folder / f"{cached.stem}.safetensors")
    cached.unlink()
    monkeypatch.setattr(distill.teachers.loading, "ASSET_DIR", tmp_path / "assets")
    monkeypatch.setattr(distill.solvers, "solve", lambda *args, **kwargs: pytest.fail("solved again"))
    shipped = teacher_trajectories(teacher, noise, solver="euler", steps=4, stride=2, progress=False)
    assert shipped.x.shape == (32, 3, 2) and torch.equal(shipped.x, computed.x)


def test_eval_command_json(tmp_path, capsys):
    plot = tmp_path / "quality.png"
    assert main(["eval", "eight-gaussians-exact", "--nfe", "2,4", "--solvers", "euler,dpmpp2m", "--samples", "300",
                 "--plot", str(plot), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["solver"], r["nfe"]) for r in result["rows"]] == [("euler", 2), ("euler", 4), ("dpmpp2m", 2),
                                                                  ("dpmpp2m", 4)]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_heun_budget():
    assert [steps_for_nfe("heun", n) for n in (1, 2, 4, 64)] == [1, 1, 2, 32]


def test_teacher_without_data_needs_data_argument():
    teacher = DiffusersTeacher(tiny_unet(), ("DDIMScheduler", {}))
    with pytest.raises(ValueError, match="unknown data for this teacher"):
        Evaluation(teacher, samples=8, progress=False)
