"""Two CPU processes (gloo, launched by torchrun) train a JVP-based objective to identical weights on both ranks,
equal to one process accumulating the same two micro-batches per step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

CHILD = Path(__file__).with_name("distributed_child.py")


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(CHILD)]
    subprocess.run([*launch, str(tmp_path / "two"), "1"], check=True, capture_output=True, env=env, timeout=300)
    subprocess.run([sys.executable, str(CHILD), str(tmp_path / "one"), "2"], check=True, capture_output=True, env=env,
                   timeout=300)
    rank0, rank1 = load_file(tmp_path / "two" / "rank0.safetensors"), load_file(tmp_path / "two" / "rank1.safetensors")
    single = load_file(tmp_path / "one" / "rank0.safetensors")
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name
        # the same gradients, summed in another order
        assert torch.allclose(rank0[name], single[name], atol=1e-6, rtol=1e-5), (name, rank0[name] - single[name])
