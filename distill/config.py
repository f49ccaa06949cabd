"""Typed dataclass configs. YAML files hold overrides only; ``key=value`` on the command line overrides further.

An unknown key fails with the closest valid name; a value of the wrong type fails naming the key and the type.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")
CONFIG_ROOT = Path(__file__).resolve().parent / "configs"  # package data: presets work from any install


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


def build(cls: type[C], data: dict | None = None, where: str = "") -> C:
    """Instantiate dataclass ``cls`` from a nested dict of overrides, checking keys and types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint} (valid: {', '.join(fields)})")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where or cls.__name__}: {error}") from error


def check_keys(values: dict, cls: type, where: str) -> None:
    """A config section kept as a plain dict (built into ``cls`` later): fail on a key that is not a field of it."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(f"unknown key '{where}.{unknown[0]}'; use one of {', '.join(fields)}")


FLOAT_WITHOUT_DOT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _coerce(hint, value, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_error = None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as error:
                last_error = error
        raise last_error
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 2e-5 (no dot) as a string; the field says it is a number
    wrong_scalar = not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    if hint in (int, float, str, bool) and wrong_scalar:
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.steps=100", "data.name=digits"]`` -> nested dict; values are parsed as YAML scalars."""
    result: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value (nested keys with dots: train.steps=100)")
        key, text = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {pair!r}: empty key part; write nested keys as train.steps=100")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {part!r} was given a value by another override, so it "
                                  "cannot also hold keys; drop one of the two")
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {pair!r}: the value is not valid YAML ({_yaml_problem(error)}); quote it, "
                              f"e.g. {key}='...'") from None
    return result


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line from a YAML error: what went wrong and where (1-based line and column)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def merge(base: dict, overrides: dict) -> dict:
    """Recursive dict merge; ``overrides`` wins."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def resolve_config_file(name_or_path: str | Path, kind: str) -> Path:
    """A YAML path, or a preset name in ``distill/configs/<kind>/``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise FileNotFoundError(f"no such config file: {path}")
        return path
    preset = CONFIG_ROOT / kind / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    presets = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise FileNotFoundError(f"no config {name_or_path!r}: pass a .yaml file or a preset ({', '.join(presets)})")


def read_config(name_or_path: str | Path, kind: str) -> dict:
    """The overrides a YAML file or preset holds, as a nested dict."""
    path = resolve_config_file(name_or_path, kind)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML: {_yaml_problem(error)}; fix the syntax there (nested keys are "
                          "indented with spaces, each line reads key: value)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; pass a YAML config") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys (key: value), got a YAML "
                          f"{type(data).__name__}")
    return data or {}


def load_config(cls: type[C], name_or_path: str | Path, kind: str, overrides: list[str] | None = None) -> C:
    """YAML overrides, then command-line ``key=value`` overrides, on top of ``cls``'s defaults."""
    return build(cls, merge(read_config(name_or_path, kind), parse_overrides(overrides or [])))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def dump(config) -> str:
    """The resolved config as YAML (what ``--dry-run`` prints and a run folder keeps)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
