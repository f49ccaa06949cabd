"""Export a student at every runtime and precision and print the ratios, measured side by side in one run.

    distill quickstart                      # makes runs/quickstart/student (once)
    python scripts/bench_export.py [--student runs/quickstart/student] [--steps 1,2,4] [--samples 500]
                                   [--runtimes onnxruntime,openvino] [--threads 1] [--max-gain 4] [--peak]
                                   [--torchao] [--compile] [--json]

Printed: the export report (size, parity, latency at the latency batch and at batch 1 beside eager PyTorch, FD beside
the float student's on the same noise, integer / float kernels), then per artifact its ratios to the same sampler's
fp32 ONNX Runtime model and to eager PyTorch, ONNX Runtime's per-operator profile of the fp32 and int8 samplers, and
with ``--peak`` this CPU's measured int8 / fp32 and bf16 / fp32 ratios (the physical limit). Precisions a runtime has
no paying kernels for on this machine (fp16 on an x86 CPU provider, bf16 without bf16 instructions) are listed with
the reason instead. With ``--torchao``: the sampler in PyTorch with torchao int8 (dynamic and weight-only) beside
fp32, eager or compiled (``--compile``: slow to compile on a small CPU), latency and FD in the same run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from exporters.report import ExportConfig, export_student, markdown, side_by_side_ms


def ratios(report: dict) -> list[dict]:
    """Per artifact, beside the same sampler's fp32 ONNX Runtime model: latency at the latency batch and at batch 1,
    size, FD over the float student's; and latency over eager PyTorch fp32 (measured in the same loop)."""
    fp32 = {a["steps"]: a for a in report["artifacts"] if (a["runtime"], a["precision"]) == ("onnxruntime", "fp32")}
    rows = []
    for a in report["artifacts"]:
        base = fp32[a["steps"]]
        rows.append({"steps": a["steps"], "runtime": a["runtime"], "precision": a["precision"],
                     "latency_vs_eager": a["latency_ms"] / a["eager_latency_ms"],
                     "latency_vs_fp32_onnx": a["latency_ms"] / base["latency_ms"],
                     "b1_latency_vs_eager": a["latency_b1_ms"] / a["eager_latency_b1_ms"],
                     "b1_latency_vs_fp32_onnx": a["latency_b1_ms"] / base["latency_b1_ms"],
                     "size_vs_fp32": a["bytes"] / base["bytes"], "rel_err": a["rel_err"],
                     "fd_vs_float": None if a["fd"] is None else a["fd"] / a["float_fd"]})
    return rows


def peak_ratios(threads: int, size: int = 1024) -> dict:
    """This CPU's integer and bf16 headroom, measured: one ``size``-cube matrix product in ONNX Runtime as fp32
    ``MatMul`` and as uint8 x int8 ``QLinearMatMul`` (what the int8 sampler's kernels are), and in PyTorch as fp32
    and bf16; also one 3x3 convolution at the UNet's widest shape (batch 64, 128 -> 64 channels, 16x16) as fp32
    ``Conv`` and ``QLinearConv``. Ratios are fp32 time over the lower precision's (above 1: faster)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def session(nodes, inputs, initializers):
        output = helper.make_tensor_value_info("y", inputs[0].type.tensor_type.elem_type, None)
        graph = helper.make_graph(nodes, "peak", inputs, [output], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def scalar(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    def quantized(op, x_shape, w, extra_inputs=(), **attributes):
        """``op`` (QLinearMatMul / QLinearConv) on a uint8 input and int8 weights: (session, feed)."""
        initializers = [numpy_helper.from_array(w, "w"), scalar("xs", 0.02, np.float32), scalar("xz", 128, np.uint8),
                        scalar("ws", 0.01, np.float32), scalar("wz", 0, np.int8), scalar("ys", 0.5, np.float32),
                        scalar("yz", 128, np.uint8)]
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", *extra_inputs], ["y"], **attributes)
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)
        return session([node], [x], initializers), {"x": rng.integers(0, 255, x_shape, dtype=np.uint8)}

    def float_op(op, x_shape, w, **attributes):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
        node = helper.make_node(op, ["x", "w"], ["y"], **attributes)
        return session([node], [x], [numpy_helper.from_array(w, "w")]), {"x": rng.standard_normal(x_shape,
                                                                                                  np.float32)}

    w = rng.standard_normal((size, size), np.float32)
    conv_w = rng.standard_normal((64, 128, 3, 3), np.float32)
    conv_x = [64, 128, 16, 16]
    models = {
        "matmul fp32": float_op("MatMul", [size, size], w),
        "matmul u8s8": quantized("QLinearMatMul", [size, size], rng.integers(-127, 127, (size, size), dtype=np.int8)),
        "conv fp32": float_op("Conv", conv_x, conv_w, pads=[1, 1, 1, 1]),
        "conv u8s8": quantized("QLinearConv", conv_x, rng.integers(-127, 127, (64, 128, 3, 3), dtype=np.int8),
                               pads=[1, 1, 1, 1]),
    }
    calls = {name: (lambda s=s, f=f: s.run(None, f)) for name, (s, f) in models.items()}
    a = torch.randn(size, size)
    b, a16, b16 = torch.randn(size, size), a.bfloat16(), torch.randn(size, size).bfloat16()
    calls |= {"torch matmul fp32": lambda: a @ b, "torch matmul bf16": lambda: a16 @ b16}
    ms = side_by_side_ms(calls, repeats=5)
    del onnx  # (imported so a missing onnx fails here, not inside helper)
    return {"ms": ms, "size": size, "int8_matmul": ms["matmul fp32"] / ms["matmul u8s8"],
            "int8_conv": ms["conv fp32"] / ms["conv u8s8"],
            "bf16_matmul": ms["torch matmul fp32"] / ms["torch matmul bf16"]}


def profiles(report: dict, student_path: str, threads: int, batch: int) -> dict:
    """ONNX Runtime's per-operator profile of the fp32 and the int8 2-step (or first) sampler."""
    from distill.students import load_model
    from exporters.onnx import example_inputs
    from exporters.report import op_profile

    student, _ = load_model(student_path)
    inputs = {k: v.numpy() for k, v in example_inputs(student, "sampler", batch, seed=7).items()}
    steps = 2 if any(a["steps"] == 2 for a in report["artifacts"]) else report["artifacts"][0]["steps"]
    return {a["precision"]: op_profile(a["path"], inputs, threads) for a in report["artifacts"]
            if a["steps"] == steps and a["runtime"] == "onnxruntime" and a["precision"] in ("fp32", "int8")}


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
    parser.add_argument("--precisions", default="fp32,fp16,bf16,int8,int8-dynamic,int8-mixed")
    parser.add_argument("--runtimes", default="onnxruntime,openvino", help="onnxruntime and/or openvino")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="runs/bench-export")
    parser.add_argument("--max-gain", type=float, default=4.0,
                        help="int8 keeps steps amplifying output errors more than this in float (inf: none)")
    parser.add_argument("--torchao", action="store_true", help="also torchao int8 in PyTorch")
    parser.add_argument("--compile", action="store_true", help="torch.compile the torchao models (slow to compile)")
    parser.add_argument("--peak", action="store_true", help="also this CPU's int8 and bf16 matrix-product ratios")
    parser.add_argument("--peak-size", type=int, default=1024, help="the matrix size of --peak")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (Path(args.student) / "student.json").exists():
        sys.exit(f"error: no student at {args.student}; run `distill quickstart` first or pass --student")

    torch.set_num_threads(args.threads)
    config = ExportConfig(steps=tuple(int(s) for s in args.steps.split(",")),
                          precisions=tuple(args.precisions.split(",")), samples=args.samples,
                          latency_batch=args.batch, threads=args.threads, max_gain=args.max_gain,
                          runtimes=tuple(args.runtimes.split(",")),
                          tolerance={p: float("inf") for p in args.precisions.split(",")})  # measure, do not fail
    report = export_student(args.student, args.out, config)
    result = {"export": report, "ratios": ratios(report),
              "profile": profiles(report, args.student, args.threads, args.batch)}
    if args.peak:
        result["peak"] = peak_ratios(args.threads, args.peak_size)
    if args.torchao:
        result["torchao"] = torchao_rows(args.student, 2, args.samples, args.compile, args.batch)
    if args.json:
        print(json.dumps(result))
        return
    print_tables(result)


def print_tables(result: dict) -> None:
    """The report, the ratio table, the profiles and the CPU's limits as markdown (``--json`` output renders back
    with ``print_tables(json.load(f))``)."""
    report = result["export"]
    batch, threads = report["latency_batch"], report["threads"]
    print(markdown(report))
    print(f"\n| steps | runtime | precision | latency / ORT fp32 (batch {batch}) | (batch 1) | latency / eager fp32 "
          f"(batch {batch}) | (batch 1) | size / fp32 | rel err | FD / float FD |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["ratios"]:
        fd = "–" if r["fd_vs_float"] is None else f"{r['fd_vs_float']:.3f}"
        print(f"| {r['steps']} | {r['runtime']} | {r['precision']} | {r['latency_vs_fp32_onnx']:.2f} | "
              f"{r['b1_latency_vs_fp32_onnx']:.2f} | {r['latency_vs_eager']:.2f} | {r['b1_latency_vs_eager']:.2f} | "
              f"{r['size_vs_fp32']:.2f} | {r['rel_err']:.2g} | {fd} |")
    for precision, rows in result["profile"].items():
        top = ", ".join(f"{r['op']} {100 * r['share']:.0f}%" for r in rows[:10])
        print(f"\nwhere ONNX Runtime's {precision} sampler spends its kernel time (batch {batch}): {top}")
    if "peak" in result:
        peak = result["peak"]
        size = peak.get("size", 1024)
        print(f"\nthis CPU, {threads} thread(s): int8 / fp32 speed {peak['int8_matmul']:.2f}x on a {size}^3 "
              f"matrix product (ONNX Runtime QLinearMatMul / MatMul), {peak['int8_conv']:.2f}x on the UNet's widest "
              f"3x3 convolution (QLinearConv / Conv); bf16 / fp32 {peak['bf16_matmul']:.3g}x (PyTorch matmul)")
    for r in result.get("torchao", []):
        print(f"torchao {r['model']}: {r['latency_ms']:.1f} ms ({r['latency_vs_fp32']:.2f}x fp32 eager), "
              f"FD {r['fd']:.4g} ({r['fd_vs_fp32']:.3f}x)")

if __name__ == "__main__":
    main()
