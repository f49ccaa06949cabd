"""Distil the bundled MNIST teachers (flow matching and epsilon) with each objective and student output rule under
one budget, and judge each student beside its teacher: quality, and speed at equal quality.

    python scripts/bench_distill.py [--rows mnist-flow:trajectory,mnist:trajectory:preconditioned,...]
                                    [--steps 2000] [--samples 500] [--trajectories N] [--json]

A row is ``teacher:objective[:output]`` (output: a ``student.output`` rule, default ``auto``). Each runs the
``quickstart`` preset with that teacher, objective (its defaults, plus the settings in ``OBJECTIVE_SETTINGS``) and
output, the same steps, batch, learning rate and seed, in ``runs/bench-distill/<row>`` (``--out``; rerunning
resumes). Printed per row: FD at 1, 2 and 4 NFE, each over the teacher's best FD (any solver, at most 64 NFE, same
samples); class agreement at 1 NFE beside the teacher's best row's; the smallest teacher NFE (euler, heun or dpmpp2m)
whose FD is at most the student's at 1 and 2 NFE; and the wall-time ratio of that teacher sampler to the student's,
timed side by side on the same batch in this run (median of three interleaved calls).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict

import torch

from distill.evaluation.tables import Evaluation
from distill.recipes.distillation import load_distill_config, run_distillation
from distill.solvers import sample, steps_for_nfe
from distill.students import load_student
from distill.teachers import load_teacher

DEFAULT_ROWS = ("mnist-flow:trajectory", "mnist:trajectory:teacher", "mnist:trajectory:velocity",
                "mnist:trajectory:data", "mnist:trajectory:preconditioned", "mnist-flow:dmd", "mnist:dmd")
SOLVERS = ("euler", "heun", "dpmpp2m")
TEACHER_NFE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# objective -> overrides beside objective.name (a share of the budget, where an objective works in phases)
OBJECTIVE_SETTINGS = {
    "progressive": lambda steps: ["objective.start_steps=8", f"objective.steps_per_round={max(1, steps // 3)}"],
    "dmd": lambda steps: [f"objective.warm_start_steps={steps // 2}"],
}


def parse_row(spec: str) -> tuple[str, str, str]:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"a row is teacher:objective[:output], got {spec!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else "auto"


def teacher_curve(teacher_name: str, samples: int, seed: int) -> list:
    """The teacher's rows at every solver and NFE <= 64 (served from the cache after the first run)."""
    evaluation = Evaluation(load_teacher(teacher_name), samples=samples, seed=seed, progress=False)
    return evaluation.teacher_rows(SOLVERS, TEACHER_NFE)


def equal_quality(curve: list, fd: float) -> dict | None:
    """The cheapest teacher row whose FD is at most ``fd`` (``None``: none within 64 NFE)."""
    good = [row for row in curve if row.fd <= fd]
    return None if not good else asdict(min(good, key=lambda row: (row.nfe, row.fd)))


def timed_ratio(student, teacher, solver: str, steps: int, nfe: int, batch: int = 100) -> float:
    """Teacher wall time over the student's, same noise and labels, interleaved calls (median of three)."""
    from distill.data import class_cycle

    noise = torch.randn(batch, *teacher.sample_shape, generator=torch.Generator().manual_seed(5))
    cond = class_cycle(teacher.info, batch)
    ratios = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            sample(student, noise, steps=nfe, cond=cond)
            middle = time.perf_counter()
            sample(teacher, noise, steps=steps, solver=solver, cond=cond)
            ratios.append((time.perf_counter() - middle) / (middle - start))
    return statistics.median(ratios)


def run_row(spec: str, args) -> dict:
    teacher_name, objective, output = parse_row(spec)
    name = spec.replace(":", "-")
    overrides = [f"teacher={teacher_name}", f"objective.name={objective}", f"student.output={output}",
                 f"train.steps={args.steps}", f"eval.samples={args.samples}", f"eval.seed={args.seed}",
                 "eval.nfe=[1, 2, 4]", "eval.solvers=[dpmpp2m]", "eval.reference_nfe=[]",
                 f"run_dir={args.out}/{name}", f"name={name}", "train.progress=false",
                 *([f"objective.trajectories={args.trajectories}"] if args.trajectories else []),
                 *OBJECTIVE_SETTINGS.get(objective, lambda steps: [])(args.steps)]
    report = run_distillation(load_distill_config("quickstart", overrides))
    student_rows = {row["nfe"]: row for row in report["eval"]["rows"] if row["kind"] == "student"}
    curve = teacher_curve(teacher_name, args.samples, args.seed)
    best = min(curve, key=lambda row: row.fd)
    row = {"row": spec, "teacher": teacher_name, "objective": objective, "output": output,
           "teacher_best": {"fd": best.fd, "solver": best.solver, "nfe": best.nfe, "agreement": best.agreement},
           "fd": {str(k): student_rows[k]["fd"] for k in (1, 2, 4)},
           "fd_ratio": {str(k): student_rows[k]["fd"] / best.fd for k in (1, 2, 4)},
           "agreement_1": student_rows[1]["agreement"], "train_seconds": report["train_seconds"], "equal_quality": {}}
    student, teacher = load_student(report["student"]), load_teacher(teacher_name)
    for k in (1, 2):
        match = equal_quality(curve, student_rows[k]["fd"])
        if match is not None:
            steps = steps_for_nfe(match["solver"], match["nfe"])
            match["nfe_ratio"] = match["nfe"] / k
            match["time_ratio"] = timed_ratio(student, teacher, match["solver"], steps, k)
        row["equal_quality"][str(k)] = match
    return row


def cell_equal(match: dict | None) -> str:
    if match is None:
        return "> 64"
    return f"{match['nfe']} ({match['solver']}; {match['time_ratio']:.1f}x time)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated teacher:objective[:output]")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trajectories", type=int, default=None, help="teacher trajectories (default: the preset's)")
    parser.add_argument("--out", default="runs/bench-distill", help="the rows' run folders go here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = []
    for spec in args.rows.split(","):
        rows.append(run_row(spec, args))
        print(f"{spec}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"steps": args.steps, "samples": args.samples, "rows": rows}))
        return
    print(f"{args.steps} steps, {args.samples} samples; ratios are to the teacher's best FD (any solver, <= 64 NFE)")
    print("| teacher | objective | output | FD 1 NFE (x best) | FD 2 NFE (x best) | FD 4 NFE (x best) | "
          "agreement 1 NFE (teacher) | teacher NFE at the 1-step FD | at the 2-step FD | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(f"{row['fd'][k]:.3g} ({row['fd_ratio'][k]:.2f}x)" for k in ("1", "2", "4"))
        agreement = f"{row['agreement_1']:.1%} ({row['teacher_best']['agreement']:.1%})"
        print(f"| {row['teacher']} | {row['objective']} | {row['output']} | {cells} | {agreement} | "
              f"{cell_equal(row['equal_quality']['1'])} | {cell_equal(row['equal_quality']['2'])} | "
              f"{row['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
