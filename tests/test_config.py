"""Typed configs: YAML overrides, key=value, closest-name errors, dry run."""

from __future__ import annotations

import re

import pytest

from distill.cli import main
from distill.config import ConfigError, build, load_config, parse_overrides
from distill.recipes.teacher_training import TeacherConfig


def test_presets_resolve_and_overrides_apply():
    config = load_config(TeacherConfig, "mnist", "teachers", ["train.steps=7", "objective.label_dropout=0.2",
                                                              "train.learning_rate=2e-5"])
    assert config.train.steps == 7 and config.objective.label_dropout == 0.2
    assert config.train.learning_rate == 2e-5  # YAML 1.1 reads "2e-5" as a string; a float field takes it
    assert config.model["class"] == "UNet2DModel"


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match="unknown config key 'train.stpes'; did you mean 'train.steps'"):
        build(TeacherConfig, parse_overrides(["train.stpes=3"]))


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match="train.steps must be int, got 'many'"):
        build(TeacherConfig, parse_overrides(["train.steps=many"]))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        build(TeacherConfig, parse_overrides(["train.mixed_precision=fp8"]))


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train-teacher", "checkerboard", "train.steps=11", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 11" in printed and "class: VelocityMLP" in printed


def test_missing_preset_lists_the_presets(capsys):
    assert main(["train-teacher", "nonexistent"]) == 2
    assert "no config 'nonexistent'" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("train:\n  steps: 10\n lr: 3\n", r"bad\.yaml: malformed YAML: .* at line 3, column 2; fix the syntax"),
    ("train: [1, 2\n", r"bad\.yaml: malformed YAML: expected ',' or '\]'.* at line 2"),
    ("- train\n- steps\n", r"bad\.yaml: a config must be a mapping of keys \(key: value\), got a YAML list"),
    ("3\n", r"got a YAML int"),
])
def test_malformed_yaml_is_one_line_naming_the_file_and_line(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(expected, err), err


@pytest.mark.parametrize("override, expected", [
    ("train.steps=[1", r"override 'train\.steps=\[1': the value is not valid YAML .*; quote it"),
    ("train..steps=3", r"empty key part"),
])
def test_malformed_override_is_one_line(capsys, override, expected):
    assert main(["run", "quickstart", override, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err), err


def test_an_override_cannot_give_a_section_both_a_value_and_keys():
    with pytest.raises(ConfigError, match="'train' was given a value by another override"):
        parse_overrides(["train=3", "train.steps=4"])


def test_start_up_is_quiet_but_own_warnings_show():
    """Importing the package and loading a bundled diffusers teacher prints nothing from third parties."""
    import subprocess
    import sys

    code = ("import warnings, distill; distill.load_teacher('mnist-flow'); import exporters.quantize; "
            "warnings.warn('own warning')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.strip().splitlines() == ["<string>:1: UserWarning: own warning"], err
