"""Export the MNIST student at every precision and print the ratios issue 6 asks for, measured side by side.

    distill quickstart                      # makes runs/quickstart/student (once)
    python scripts/bench_export.py [--student runs/quickstart/student] [--steps 1,2,4] [--samples 500]
                                   [--threads 1] [--max-gain 4] [--torchao] [--compile] [--json]

Printed: the export report (size, parity, latency beside eager PyTorch, FD beside the float student) and, per
sampler, the ratios fp32 ONNX / eager, int8 / fp32 ONNX (latency and size) and FD of each lowering / float FD. With
``--torchao``: the student's sampler in PyTorch with torchao int8 (dynamic and weight-only) beside fp32, eager or
compiled (``--compile``: slow to compile on a small CPU), latency and FD in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from exporters.report import ExportConfig, export_student, markdown, side_by_side_ms


def ratios(report: dict) -> list[dict]:
    """Per sampler steps: fp32 ONNX / eager latency, and each lowering's latency and size over fp32 ONNX and FD
    over the float student's."""
    rows = []
    by_steps = {}
    for artifact in report["artifacts"]:
        by_steps.setdefault(artifact["steps"], {})[artifact["precision"]] = artifact
    for steps, artifacts in sorted(by_steps.items()):
        fp32 = artifacts["fp32"]
        for precision, a in artifacts.items():
            rows.append({"steps": steps, "precision": precision,
                         "latency_vs_eager": a["latency_ms"] / a["eager_latency_ms"],
                         "latency_vs_fp32_onnx": a["latency_ms"] / fp32["latency_ms"],
                         "size_vs_fp32": a["bytes"] / fp32["bytes"], "rel_err": a["rel_err"],
                         "fd_vs_float": None if a["fd"] is None else a["fd"] / a["float_fd"]})
    return rows


def torchao_rows(student_path: str, steps: int, samples: int, compile_: bool, batch: int) -> list[dict]:
    """Eager fp32 beside torchao int8 (dynamic, weight-only), compiled or not: latency ratio and FD ratio."""
    from distill.data import class_cycle
    from distill.evaluation.tables import Evaluation
    from distill.solvers import sample
    from distill.students import load_model
    from exporters.quantize import TorchaoConfig, quantize_torch

    student, teacher = load_model(student_path)
    student.eval().requires_grad_(False)
    evaluation = Evaluation(teacher, samples=samples, progress=False)
    noise = torch.randn(batch, *student.sample_shape, generator=torch.Generator().manual_seed(7))
    labels = class_cycle(student.info, batch)
    models = {"fp32": student}
    for mode in ("int8-dynamic", "int8-weight"):
        model, _ = load_model(student_path)
        models[mode] = quantize_torch(model.eval().requires_grad_(False), TorchaoConfig(mode=mode, compile=False))
    if compile_:  # in place (nn.Module.compile), so the FlowMap's jumps run compiled; eager fp32 stays beside them
        eager, _ = load_model(student_path)
        for model in models.values():
            model.compile()
        models = {f"{name}+compile": model for name, model in models.items()} | {"fp32": eager.eval()}

    def call(model):
        def run():
            with torch.no_grad():
                sample(model, noise, steps=steps, cond=labels)
        return run

    latency = side_by_side_ms({name: call(model) for name, model in models.items()}, repeats=10)
    rows = []
    for name, model in models.items():
        with torch.no_grad():
            fd = evaluation.student_rows(model, [steps], name=name)[0].fd
        rows.append({"model": name, "latency_ms": latency[name], "latency_vs_fp32": latency[name] / latency["fp32"],
                     "fd": fd})
    for row in rows:
        row["fd_vs_fp32"] = row["fd"] / rows[0]["fd"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="runs/quickstart/student")
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--precisions", default="fp32,fp16,int8,int8-dynamic,int8-mixed")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="runs/bench-export")
    parser.add_argument("--max-gain", type=float, default=4.0,
                        help="int8 keeps steps amplifying output errors more than this in float (inf: none)")
    parser.add_argument("--torchao", action="store_true", help="also torchao int8 in PyTorch")
    parser.add_argument("--compile", action="store_true", help="torch.compile the torchao models (slow to compile)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (Path(args.student) / "student.json").exists():
        sys.exit(f"error: no student at {args.student}; run `distill quickstart` first or pass --student")

    torch.set_num_threads(args.threads)
    config = ExportConfig(steps=tuple(int(s) for s in args.steps.split(",")),
                          precisions=tuple(args.precisions.split(",")), samples=args.samples,
                          latency_batch=args.batch, threads=args.threads, max_gain=args.max_gain,
                          tolerance={p: float("inf") for p in args.precisions.split(",")})  # measure, do not fail
    report = export_student(args.student, args.out, config)
    result = {"export": report, "ratios": ratios(report)}
    if args.torchao:
        result["torchao"] = torchao_rows(args.student, 2, args.samples, args.compile, args.batch)
    if args.json:
        print(json.dumps(result))
        return
    print(markdown(report))
    print("\n| steps | precision | latency / eager | latency / fp32 ONNX | size / fp32 | rel err | FD / float FD |")
    print("|---|---|---|---|---|---|---|")
    for r in result["ratios"]:
        fd = "–" if r["fd_vs_float"] is None else f"{r['fd_vs_float']:.3f}"
        print(f"| {r['steps']} | {r['precision']} | {r['latency_vs_eager']:.2f} | {r['latency_vs_fp32_onnx']:.2f} | "
              f"{r['size_vs_fp32']:.2f} | {r['rel_err']:.2g} | {fd} |")
    for r in result.get("torchao", []):
        print(f"torchao {r['model']}: {r['latency_ms']:.1f} ms ({r['latency_vs_fp32']:.2f}x fp32 eager), "
              f"FD {r['fd']:.4g} ({r['fd_vs_fp32']:.3f}x)")


if __name__ == "__main__":
    main()
