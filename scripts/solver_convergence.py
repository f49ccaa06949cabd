"""Error of each ODE solver against the exact flow map of the bundled analytic teacher, by NFE.

    python scripts/solver_convergence.py [--samples 4000] [--json]

Prints a Markdown table: RMSE between the solver's sample and the exact ODE solution from the same noise,
relative to the data's standard deviation.
"""

from __future__ import annotations

import argparse
import json

import torch

import distill
from distill.solvers import SOLVERS, solve, solver_nfe, uniform_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="eight-gaussians-exact")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    teacher = distill.load_teacher(args.teacher)
    noise = torch.randn(args.samples, *teacher.sample_shape, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    exact = teacher.flow_map(noise, 1.0, 0.0, steps=2048)
    data_std = float(exact.std())
    rows = []
    for solver in SOLVERS:
        for steps in (1, 2, 4, 8, 16, 32, 64):
            times = uniform_grid(steps)
            error = float((solve(teacher, noise, times, solver) - exact).pow(2).mean().sqrt()) / data_std
            rows.append({"solver": solver, "steps": steps, "nfe": solver_nfe(solver, times), "rel_rmse": error})
    if args.json:
        print(json.dumps({"teacher": args.teacher, "samples": args.samples, "rows": rows}))
        return
    print(f"| solver | steps | NFE | RMSE / data std ({args.teacher}, {args.samples} samples) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['solver']} | {row['steps']} | {row['nfe']} | {row['rel_rmse']:.2e} |")


if __name__ == "__main__":
    main()
