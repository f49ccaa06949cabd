"""Malformed configs, overrides and model paths: every one is refused with a one-line ``error:`` (never a traceback),
or, where the damage happens to leave a valid config, accepted. Seeded, so a failure reproduces."""

from __future__ import annotations

import json
import random
from importlib.resources import files

import pytest
import torch

from distill.cli import main
from distill.nets import TwoTimeMLP
from distill.students import TwoTimeFlowMap

QUICKSTART = (files("distill") / "configs" / "distill" / "quickstart.yaml").read_text()
JUNK = [":", "[", "{", "\t", "- ", "'", '"', "]", "}", "&", "*", "!", "%", "@", "`", ": :", "\n  - x", "\n x: ["]
BAD_VALUES = ["[1", "{a", "abc", "-5", "0", "[]", "{}", "null", "1e999", "[1, two]", "yes", "'", "x: 1", "1.5.2"]


def one_line_or_accepted(argv: list[str], capsys) -> bool:
    """True when ``argv`` was refused with one ``error:`` line; False when it was accepted."""
    code = main(argv)
    captured = capsys.readouterr()
    if code == 0:
        return False
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (argv, code, err[-2000:])
    return True


def mutated_configs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    lines = QUICKSTART.splitlines(keepends=True)
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:  # junk inserted somewhere
            at = rng.randrange(len(QUICKSTART))
            texts.append(QUICKSTART[:at] + rng.choice(JUNK) + QUICKSTART[at:])
        elif kind == 1:  # a line indented wrongly
            i = rng.randrange(len(lines))
            texts.append("".join(lines[:i] + [" " * rng.choice([1, 3, 5]) + lines[i]] + lines[i + 1:]))
        else:  # a value replaced by junk
            keyed = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]
            i = rng.choice(keyed)
            key = lines[i].split(":", 1)[0]
            texts.append("".join(lines[:i] + [f"{key}: {rng.choice(BAD_VALUES)}\n"] + lines[i + 1:]))
    return texts


def test_mutated_config_files(tmp_path, capsys):
    refused = 0
    for k, text in enumerate(mutated_configs(150)):
        path = tmp_path / f"bad{k}.yaml"
        path.write_text(text)
        refused += one_line_or_accepted(["run", str(path), "--dry-run"], capsys)
    assert refused >= 100, refused


def test_bad_overrides(capsys):
    keys = ["train.steps", "train.learning_rate", "train.batch_size", "train.lr_decay", "train.ema_decays",
            "objective.name", "objective.trajectories", "objective.generator_steps", "objective.solver",
            "student.kind", "student.output", "eval.samples", "eval.nfe", "teacher", "train"]
    refused = 0
    for key in keys:
        for value in BAD_VALUES:
            refused += one_line_or_accepted(["run", "quickstart", f"{key}={value}", "--dry-run"], capsys)
    for typo in ["train.stepz=3", "trian.steps=3", "objective.nmae=dmd", "eval.sample=3", "=3", "train.=3", "steps"]:
        refused += one_line_or_accepted(["run", "quickstart", typo, "--dry-run"], capsys)
    assert refused >= 120, refused


@pytest.fixture
def student_folder(tmp_path):
    student = TwoTimeFlowMap(TwoTimeMLP(hidden=8, depth=1, embedding_dim=4), sample_shape=(2,))
    return student.save_pretrained(tmp_path / "student")


def test_broken_model_paths(tmp_path, student_folder, capsys):
    cases = []
    cases.append(str(tmp_path / "missing"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model" * 10)
    cases.append(str(junk))
    not_json = tmp_path / "not_json"
    not_json.mkdir()
    (not_json / "student.json").write_text("{kind: oops")
    cases.append(str(not_json))
    unknown_kind = tmp_path / "unknown_kind"
    unknown_kind.mkdir()
    (unknown_kind / "student.json").write_text(json.dumps({"kind": "hologram", "info": {}}))
    cases.append(str(unknown_kind))
    weights = student_folder / "network.safetensors"
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for item in student_folder.iterdir():
        if item.is_file():
            (truncated / item.name).write_bytes(item.read_bytes())
    (truncated / "network.safetensors").write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases.append(str(truncated))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "student.json").write_text((student_folder / "student.json").read_text())
    cases.append(str(no_weights))
    torch.save({"a": 1}, tmp_path / "pickle.pt")
    cases.append(str(tmp_path / "pickle.pt"))
    refused = 0
    for path in cases:
        for argv in (["sample", path, "--n", "2", "--steps", "1", "--out", str(tmp_path / "s.npz")],
                     ["eval", path, "--samples", "8", "--nfe", "1", "--plot", "", "--quiet"],
                     ["export", path, "--steps", "1", "--precision", "fp32", "--samples", "0",
                      "--out", str(tmp_path / "export")]):
            assert one_line_or_accepted(argv, capsys), argv  # every one is refused
            refused += 1
    assert refused == 3 * len(cases)
