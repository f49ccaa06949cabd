"""``distill finetune``: LoRA adapters fitted to new data on a frozen teacher, saved as a PEFT adapter and as a merged
teacher that the rest of the toolkit (distil, export) takes like any other."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from distill.cli import main  # noqa: E402
from distill.teachers import load_teacher  # noqa: E402

TINY = ["train.steps=3", "train.batch_size=8", "train.progress=false", "train.checkpoint_every=3",
        "train.learning_rate=0.01", "train.ema_decays=[0.5]"]


def test_finetune_writes_an_adapter_and_a_merged_teacher_that_distils_and_exports(tmp_path, capsys):
    from peft import PeftModel

    run_dir = tmp_path / "ft"
    assert main(["finetune", "mnist-digits", *TINY, "data.classes=[3, 7]", "eval_samples=20", f"run_dir={run_dir}",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 3 and report["adapter_bytes"] < 0.1 * report["teacher_bytes"]
    assert [r["model"] for r in report["eval"]["rows"]] == ["mnist", "mnist-digits"]
    assert report["eval"]["dataset"] == "digits"

    base, adapted = load_teacher("mnist"), load_teacher(report["teacher"])
    assert adapted.info.data.to_json() == {"name": "digits", "size": 16, "classes": [3, 7]}
    assert adapted.info.adapted_from == "mnist" and adapted.info.null_label == 10
    x, t, labels = torch.randn(4, 1, 16, 16), torch.full((4,), 0.5), torch.tensor([3, 7, 3, 10])
    with torch.no_grad():
        merged = adapted.velocity(x, t, labels)
        assert (merged - base.velocity(x, t, labels)).abs().max() > 1e-4  # the adapters were trained
        base.model = PeftModel.from_pretrained(base.model, report["adapter"])  # PEFT applies the adapter folder
        assert torch.allclose(base.velocity(x, t, labels), merged, atol=1e-4)

    # the adapted teacher is distilled and exported like any teacher; its classes are the subset it was tuned on
    overrides = ["train.steps=2", "train.batch_size=4", "objective.trajectories=8", "eval.samples=20",
                 "eval.nfe=[1]", "eval.reference_nfe=[]", "eval.solvers=[euler]", f"teacher={report['teacher']}"]
    assert main(["quickstart", *overrides, "--out", str(tmp_path / "qs"), "--export-steps", "1", "--json"]) == 0
    distilled = json.loads(capsys.readouterr().out)
    assert distilled["export"]["artifacts"][0]["rel_err"] < 1e-4
    assert distilled["eval"]["dataset"] == "digits"
    out = tmp_path / "s.npz"
    assert main(["sample", distilled["student"], "--steps", "1", "--n", "4", "--out", str(out)]) == 0


def test_resuming_a_finished_finetune_trains_nothing_more(tmp_path, capsys):
    args = ["finetune", "mnist-digits", *TINY, "eval_samples=0", "train.log_every=1", f"run_dir={tmp_path / 'ft'}",
            "--json"]
    assert main(args) == 0
    adapter, log = tmp_path / "ft" / "adapter" / "adapter_model.safetensors", tmp_path / "ft" / "log.jsonl"
    first, logged = adapter.read_bytes(), log.read_text()
    assert main(args) == 0  # the run resumes at its last checkpoint: no step is logged or trained again
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 3
    assert adapter.read_bytes() == first and log.read_text() == logged and logged.count("\n") == 3


@pytest.mark.parametrize("override, message", [
    ("lora.rnak=4", "unknown key 'lora.rnak'"),
    ("objective.label_drop=0.1", "unknown key 'objective.label_drop'"),
    ("lora.rank=0", "LoRA rank must be a positive integer"),
    ("data.size=8", "set data.size"),
    ("data.classes=[12]", "no examples of classes [12]"),
    ("lora.target_modules=[to_z]", "to_z not found in UNet2DModel"),
])
def test_finetune_mistakes_are_one_clear_line(tmp_path, override, message, capsys):
    assert main(["finetune", "mnist-digits", *TINY, override, f"run_dir={tmp_path / 'ft'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
