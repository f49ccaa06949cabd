"""Run folders that never lie: a folder holds one resolved config, recorded with its hash, and what was trained with it.

Rerunning the same config resumes (the trainer picks up its last checkpoint). Rerunning a different one in the same
folder stops before anything is written, naming the keys that differ; ``--restart`` moves the old run aside
(``<folder>.replaced-<UTC time>``) instead of deleting it. Keys that change nothing the folder holds (the progress
bar, the folder's own name) are not compared; the ``eval`` section is, because eval.json sits beside the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import yaml

from ..config import ConfigError, dump, to_dict

RECORD = "config.yaml"
NOT_COMPARED = ("run_dir", "train.progress")
UNSET = "<unset>"


class RunFolderError(ConfigError):
    """A run folder that holds a run of another config."""


def compared(values: dict) -> dict:
    """The flattened config without the keys that change nothing a folder holds."""
    return {k: v for k, v in flatten(values).items() if k not in NOT_COMPARED}


def config_hash(values: dict) -> str:
    """SHA-256 of the compared keys' canonical JSON."""
    return hashlib.sha256(json.dumps(compared(values), sort_keys=True, default=str).encode()).hexdigest()


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"train": {"steps": 3}}`` -> ``{"train.steps": 3}``."""
    flat = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        flat.update(flatten(value, path + ".") if isinstance(value, dict) and value else {path: value})
    return flat


def open_run_folder(config, restart: bool = False) -> Path:
    """The run folder of ``config`` (``config.run_dir`` with ``{name}``), claimed for it: created, or checked to hold
    a run of the same config, and the resolved config recorded with its hash."""
    run_dir = Path(config.run_dir.format(name=config.name))
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch, rank 0 writes
    new = to_dict(config)
    old = recorded_config(run_dir)
    if old is not None:
        old_flat, new_flat = compared(old), compared(new)
        changed = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k, UNSET) != new_flat.get(k, UNSET))
        if changed and not restart:
            shown = ", ".join(f"{k} ({_show(old_flat, k)} -> {_show(new_flat, k)})" for k in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise RunFolderError(f"{run_dir} holds a run of another config: {shown}{more}; pass run_dir=<new folder> "
                                 "to keep both, or --restart to move the old run aside and start over")
        if changed and main_process:
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            run_dir.rename(aside)
            print(f"--restart: the earlier run in {run_dir} is now {aside}", file=sys.stderr, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main_process:
        text = f"# config sha256 {config_hash(new)}\n" + dump(config)
        temporary = run_dir / f".{RECORD}.tmp"
        temporary.write_text(text)
        os.replace(temporary, run_dir / RECORD)
    return run_dir


def recorded_config(run_dir: Path) -> dict | None:
    """The config a folder's run was started with (``None``: a new or empty folder)."""
    path = run_dir / RECORD
    if not path.exists():
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise RunFolderError(f"{run_dir} is not empty and records no {RECORD}: it is not a run folder of this "
                                 "version; pass run_dir=<new folder>")
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        values = None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} is not a config this toolkit wrote; pass run_dir=<new folder>")
    return values


def _show(flat: dict, key: str) -> str:
    value = flat.get(key, UNSET)
    return value if isinstance(value, str) else json.dumps(value)
