"""Typed configs: YAML overrides, key=value, closest-name errors, dry run."""

from __future__ import annotations

import pytest

from distill.cli import main
from distill.config import ConfigError, build, load_config, parse_overrides
from distill.teachers.training import TeacherConfig


def test_presets_resolve_and_overrides_apply():
    config = load_config(TeacherConfig, "mnist", "teachers", ["train.steps=7", "objective.label_dropout=0.2"])
    assert config.train.steps == 7 and config.objective.label_dropout == 0.2
    assert config.model["class"] == "UNet2DModel" and config.train.learning_rate == 1e-3


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
