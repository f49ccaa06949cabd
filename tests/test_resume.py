"""A ``distill run`` killed with SIGKILL (mid-training, or while a checkpoint is being written) resumes when the same
command is rerun, and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

# The child runs the real command; a patched function sends SIGKILL to its own process at a chosen moment.
CHILD = """
import importlib, os, signal, sys
from distill.cli import main

loop = importlib.import_module("distill.train")  # the module (distill.train is also the function)

moment, count = sys.argv[1], int(sys.argv[2])
calls = []

def dying(original):
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapper

if moment == "training":  # after the optimiser step of a step, before its EMA update
    loop._update_ema = dying(loop._update_ema)
elif moment == "checkpoint":  # checkpoint files written, not yet synced, renamed or pointed to
    loop._fsync_tree = dying(loop._fsync_tree)
sys.exit(main(["run", "eight-gaussians", *sys.argv[3:]]))
"""

ARGS = ["student.network.hidden=16", "student.network.depth=2", "train.steps=9", "train.batch_size=32",
        "train.checkpoint_every=3", "train.log_every=1", "train.progress=false", "train.ema_decays=[0.9]",
        "eval.samples=0"]
OBJECTIVES = {
    # an EMA target network checkpointed with the run
    "consistency": ["objective.name=consistency", "objective.target_ema=0.5"],
    # a fake-score network and its optimiser owned by the objective, after a regression warm start
    "dmd": ["teacher=eight-gaussians", "objective.name=dmd", "objective.trajectories=64", "objective.steps=4",
            "objective.stride=1", "objective.warm_start_steps=2", "objective.regression_weight=0.5"],
}


def run(moment: str, count: int, run_dir, objective: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*ARGS, *OBJECTIVES[objective], f"run_dir={run_dir}"]
    return subprocess.run([sys.executable, "-c", CHILD, moment, str(count), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def student_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "student" / "network.safetensors")


@pytest.fixture(scope="module", params=list(OBJECTIVES))
def uninterrupted(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    straight = run("none", 0, run_dir, request.param)
    assert straight.returncode == 0, straight.stderr
    return request.param, student_weights(run_dir)


@pytest.mark.parametrize("moment, count", [("training", 5), ("checkpoint", 2)])
def test_sigkilled_run_resumes_to_the_uninterrupted_weights(tmp_path, moment, count, uninterrupted):
    objective, weights = uninterrupted
    killed = run(moment, count, tmp_path / "killed", objective)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "student").exists()
    resumed = run("none", 0, tmp_path / "killed", objective)  # the same command again
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    got = student_weights(tmp_path / "killed")
    assert all(torch.equal(weights[name], got[name]) for name in weights)
