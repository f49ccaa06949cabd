"""Ship a bundled teacher's evaluation samples with it, so a fresh machine does not recompute what cannot change.

    python scripts/bundle_reference.py mnist-flow [--samples 500] [--seed 0] [--solvers euler,dpmpp2m]
                                       [--nfe 1,2,4] [--reference-nfe 64] [--trajectories-of quickstart]

Runs the teacher rows of ``distill.evaluation.tables.Evaluation`` (what ``distill quickstart`` and ``distill run``
judge a student beside) into a private cache and writes every sample set it made to
``distill/assets/teachers/<name>/reference/<cache key>.safetensors``. The cache key hashes the teacher's weights, the
noise and labels (from the seed), the solver and its steps, so the files are used only where they are exact.
``--trajectories-of PRESET`` also ships the teacher trajectories that preset's objective trains on (without their
first state, ``t_max * noise``, which the loader rebuilds from the seed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from distill.data import REFERENCE_FOLDER, shippable
from distill.evaluation.tables import Evaluation
from distill.recipes.distillation import build_objective, load_distill_config
from distill.teachers import load_teacher
from distill.teachers.loading import ASSET_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="a bundled teacher name")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solvers", default="euler,dpmpp2m")
    parser.add_argument("--nfe", default="1,2,4")
    parser.add_argument("--reference-nfe", default="64")
    parser.add_argument("--trajectories-of", default=None, metavar="PRESET",
                        help="also ship the training trajectories of this distill preset (on the same teacher)")
    parser.add_argument("--out", type=Path, default=None, help="default: the teacher's own reference/ folder")
    args = parser.parse_args()

    folder = ASSET_DIR / args.teacher
    if not folder.is_dir():
        raise SystemExit(f"{args.teacher} is not a bundled teacher ({ASSET_DIR})")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DISTILL_CACHE"] = cache
        teacher = load_teacher(args.teacher)
        shape = teacher.sample_shape
        evaluation = Evaluation(teacher, samples=args.samples, seed=args.seed)
        evaluation.side_by_side(None, args.solvers.split(","), [int(n) for n in args.nfe.split(",")],
                                [int(n) for n in args.reference_nfe.split(",")])
        if args.trajectories_of:
            preset_trajectories(teacher.requires_grad_(False), args.teacher, args.trajectories_of)
        out = args.out or folder / REFERENCE_FOLDER
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted((Path(cache) / "teacher_samples").glob("*.pt")):
            stored = torch.load(path, weights_only=True)
            target = out / f"{path.stem}.safetensors"
            save_file(shippable(stored, len(shape)), target)
            print(f"{target} ({target.stat().st_size / 1e6:.2f} MB)")


def preset_trajectories(teacher, name: str, preset: str) -> None:
    """Build (into the current cache) the trajectories that ``distill run PRESET`` trains on."""
    config = load_distill_config(preset)
    if config.teacher != name:
        raise SystemExit(f"{preset} distils {config.teacher}, not {name}")
    objective = build_objective(teacher, config.objective)
    if objective.training_data() is None:
        raise SystemExit(f"{preset}'s objective ({config.objective['name']}) trains on no teacher trajectories")


if __name__ == "__main__":
    main()
