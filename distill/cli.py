"""The ``distill`` command: a thin shell over the library. Reports go to stdout (``--json``), logs to stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _teachers(args: argparse.Namespace) -> dict:
    from .teachers import BUNDLED_TEACHERS

    rows = [{"name": name, "description": (factory.__doc__ or "").strip().splitlines()[0]}
            for name, factory in BUNDLED_TEACHERS.items()]
    if not args.json:
        for row in rows:
            print(f"{row['name']:28s} {row['description']}")
    return {"teachers": rows}


def _sample(args: argparse.Namespace) -> dict:
    from .evaluate import save_samples
    from .solvers import sample, solver_nfe, time_grid
    from .teachers import GuidedTeacher, load_teacher

    teacher = load_teacher(args.model)
    if teacher.sample_shape is None:
        raise SystemExit(f"error: {args.model} does not declare its sample shape; sample it from Python instead")
    cond = None
    if args.class_label is not None:
        cond = torch.full((args.n,), args.class_label, dtype=torch.long)
    if args.guidance is not None:
        if cond is None or args.null_class is None:
            raise SystemExit("error: --guidance needs --class and --null-class (the teacher's unconditional label)")
        teacher = GuidedTeacher(teacher, args.guidance, args.null_class)
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, *teacher.sample_shape, generator=generator)
    times = time_grid(teacher, args.steps, args.grid)
    start = time.perf_counter()
    x = sample(teacher, noise, times=times, solver=args.solver, cond=cond)
    seconds = time.perf_counter() - start
    report = {"model": str(args.model), "solver": args.solver, "steps": args.steps,
              "nfe": solver_nfe(args.solver, times), "samples": args.n, "seconds": round(seconds, 4),
              "out": str(args.out), "reference_rmse": None}
    flow_map = getattr(teacher, "flow_map", None)
    if flow_map is not None:  # analytic teacher: error against its exact flow map from the same noise
        exact = flow_map(float(times[0]) * noise.double(), float(times[0]), 0.0)
        report["reference_rmse"] = float((x.double() - exact).pow(2).mean().sqrt())
    title = f"{args.model}: {args.solver}, {report['nfe']} NFE"
    save_samples(x, args.out, times=times.numpy(), title=title)
    if not args.json:
        extra = f", RMSE to the exact flow map {report['reference_rmse']:.4g}" if report["reference_rmse"] else ""
        print(f"{args.n} samples from {args.model} ({args.solver}, {report['nfe']} NFE) in {seconds:.2f} s "
              f"-> {args.out}{extra}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    teachers = commands.add_parser("teachers", help="list bundled teachers")
    teachers.set_defaults(run=_teachers)

    sample = commands.add_parser("sample", help="sample a teacher with an ODE solver")
    sample.add_argument("model", help="bundled name, diffusers folder or hub id")
    sample.add_argument("--steps", type=int, default=16)
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--solver", default="heun", choices=["euler", "heun", "dpmpp2m"])
    sample.add_argument("--grid", default="uniform", choices=["uniform", "shifted", "edm", "trained"])
    sample.add_argument("--class", dest="class_label", type=int, default=None, help="class label to condition on")
    sample.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    sample.add_argument("--null-class", type=int, default=None, help="the unconditional label, for --guidance")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png", help="grid.png or samples.npz")
    sample.set_defaults(run=_sample)

    for command in (teachers, sample):
        command.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = args.run(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
