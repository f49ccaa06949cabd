"""Distil the bundled MNIST teacher with every objective under the same budget and judge each student beside it.

    python scripts/bench_distill.py [--steps 2000] [--samples 1000] [--only eulerian,ctm] [--json]

Each objective runs ``configs/distill/mnist.yaml`` with ``objective.name`` changed (that objective's defaults),
the same steps, batch, learning rate and seed, in ``runs/bench-distill/<objective>`` (rerunning resumes). Printed per
objective: FD at 1, 2 and 4 NFE, each over the teacher's best FD (any solver, at most 64 NFE, same samples), the
confident share and fidelity RMSE at 1 NFE, and training seconds.
"""

from __future__ import annotations

import argparse
import json
import sys

from distill.evaluate import Evaluation
from distill.objectives import OBJECTIVES
from distill.run import load_distill_config, run_distillation
from distill.teachers import load_teacher


def teacher_best(samples: int, seed: int) -> dict:
    """The teacher's best FD over its solvers at NFE <= 64 (rows from the cache after the first run)."""
    evaluation = Evaluation(load_teacher("mnist"), samples=samples, seed=seed)
    rows = evaluation.teacher_rows(("euler", "heun", "dpmpp2m"), (8, 16, 32, 64))
    best = min(rows, key=lambda row: row.fd)
    return {"fd": best.fd, "solver": best.solver, "nfe": best.nfe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(OBJECTIVES), help="comma-separated objective names")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    best = teacher_best(args.samples, args.seed)
    rows = []
    for name in args.only.split(","):
        overrides = [f"objective.name={name}", f"train.steps={args.steps}", f"eval.samples={args.samples}",
                     f"eval.seed={args.seed}", "eval.nfe=[1, 2, 4]", "eval.solvers=[dpmpp2m]", "eval.reference_nfe=[]",
                     f"run_dir=runs/bench-distill/{name}", f"name={name}", "train.progress=false"]
        if name == "progressive":  # 8 -> 1 steps in three rounds over the budget
            overrides += ["objective.start_steps=8", f"objective.steps_per_round={max(1, args.steps // 3)}"]
        report = run_distillation(load_distill_config("mnist", overrides))
        student = {row["nfe"]: row for row in report["eval"]["rows"] if row["kind"] == "student"}
        rows.append({"objective": name, "fd": {str(k): student[k]["fd"] for k in (1, 2, 4)},
                     "fd_ratio": {str(k): student[k]["fd"] / best["fd"] for k in (1, 2, 4)},
                     "confident_1": student[1]["confident"], "fidelity_rmse_1": student[1]["fidelity_rmse"],
                     "seconds": report["train_seconds"]})
        print(f"{name}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"teacher_best": best, "steps": args.steps, "samples": args.samples, "rows": rows}))
        return
    print(f"teacher best: FD {best['fd']:.4g} ({best['solver']}, {best['nfe']} NFE); {args.steps} steps, "
          f"{args.samples} samples")
    print("| objective | FD 1 NFE (x best) | FD 2 NFE (x best) | FD 4 NFE (x best) | confident 1 | fidelity 1 | s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(f"{row['fd'][k]:.3g} ({row['fd_ratio'][k]:.2f}x)" for k in ("1", "2", "4"))
        print(f"| {row['objective']} | {cells} | {row['confident_1']:.3f} | {row['fidelity_rmse_1']:.3f} | "
              f"{row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
