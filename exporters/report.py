"""``distill export``: write a student's ONNX graphs at each precision and prove each one against PyTorch.

For every (graph, steps, precision) the report (docs/design.md §4 ``export``) holds the file size, parity against the
PyTorch student (max-abs and relative error on the same inputs), latency per batch beside eager PyTorch measured in
the same loop (calls alternate, so machine noise hits both), and the FD of the artifact's samples beside the float
student's on the same noise. A parity failure raises :class:`ParityError`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .onnx import OnnxExportConfig, example_inputs, export_onnx, read_metadata
from .quantize import PRECISIONS, QuantizeConfig, kernel_counts, quantize_onnx, quantize_openvino

TOLERANCE = {name: precision.tolerance for name, precision in PRECISIONS.items()} | {"bf16": 0.1}  # see Precision
# What each runtime can run: ONNX Runtime the files quantize_onnx writes; OpenVINO the fp32 file (strict f32, or
# bf16 as an inference setting where the CPU has bf16 instructions) and NNCF's int8 IR.
RUNTIME_PRECISIONS = {"onnxruntime": tuple(PRECISIONS), "openvino": ("fp32", "int8", "bf16")}


class ParityError(ValueError):
    """An exported model disagrees with the PyTorch student beyond its precision's tolerance (a wrong value, so the
    command line reports it like any other bad input)."""


@dataclass
class ExportConfig:
    """What ``distill export`` writes and measures.

    Args:
        steps: sampler graphs to write, one per number of jumps.
        precisions: any of ``fp32``, ``fp16``, ``int8`` (static QDQ, per-channel, calibrated), ``int8-dynamic``,
            ``int8-mixed``.
        graphs: ``sampler`` and/or ``jump``.
        samples: samples for FD (0: skip FD).
        latency_batch: batch size of the latency measurement.
        repeats: timed calls per model (medians are reported).
        parity_batch: batch of the parity check.
        calibration: batches of calibration inputs for int8.
        threads: threads for both PyTorch and ONNX Runtime (None: PyTorch's current setting).
        tolerance: relative error allowed per precision.
        max_gain: int8 sampler steps that amplify the network's output error more than this stay float
            (``QuantizeConfig.max_gain``; ``inf`` quantises every step).
        exporter: ``OnnxExportConfig.exporter``, ``dynamo`` or ``torchscript`` (for the quickstart's 7 MB UNet
            sampler: 20 s against 1.2 s on 2 cores, the same graph to ONNX Runtime's parity check).
    """

    steps: tuple[int, ...] = (1, 2, 4)
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    graphs: tuple[str, ...] = ("sampler",)
    samples: int = 500
    latency_batch: int = 64
    repeats: int = 10
    parity_batch: int = 16
    calibration: int = 8
    threads: int | None = None
    tolerance: dict[str, float] = field(default_factory=lambda: dict(TOLERANCE))
    max_gain: float = 4.0
    exporter: str = "dynamo"
    runtimes: tuple[str, ...] = ("onnxruntime",)

    def __post_init__(self):
        known = sorted({p for names in RUNTIME_PRECISIONS.values() for p in names})
        unknown = [p for p in self.precisions if p not in known]
        if unknown:
            raise ValueError(f"unknown precision {unknown[0]!r}; use any of {', '.join(known)}")
        unknown = [r for r in self.runtimes if r not in RUNTIME_PRECISIONS]
        if unknown:
            raise ValueError(f"unknown runtime {unknown[0]!r}; use any of {', '.join(RUNTIME_PRECISIONS)}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _reference(student, graph: str, steps: int, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """What the PyTorch student computes on a graph's inputs (``distill.sample`` or one jump)."""
    from distill.conditions import with_scale
    from distill.solvers import sample

    labels = inputs.get("class_labels")
    if "guidance" in inputs:
        labels = with_scale(labels, inputs["guidance"])
    with torch.no_grad():
        if graph == "sampler":
            return sample(student, inputs["noise"], steps=steps, cond=labels).numpy()
        return student(inputs["x"], inputs["t"].double(), inputs["s"].double(), labels).numpy()


def _run(runtime, graph: str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    labels = inputs["class_labels"].numpy() if "class_labels" in inputs else None
    guidance = inputs["guidance"].numpy() if "guidance" in inputs else None
    if graph == "sampler":
        return runtime(inputs["noise"].numpy(), labels, guidance)
    return runtime.jump(inputs["x"].numpy(), inputs["t"].numpy(), inputs["s"].numpy(), labels, guidance)


def parity(student, runtime, graph: str, steps: int, batch: int = 16, seed: int = 1) -> tuple[float, float]:
    """``(max_abs_err, rel_err)`` of the ONNX model against the PyTorch student on fresh inputs."""
    inputs = example_inputs(student, graph, batch=batch, seed=seed)
    expected, got = _reference(student, graph, steps, inputs), _run(runtime, graph, inputs)
    if got.shape != expected.shape or not np.isfinite(got).all():
        return float("inf"), float("inf")
    difference = got.astype(np.float64) - expected
    return float(np.abs(difference).max()), float(np.linalg.norm(difference) / np.linalg.norm(expected))


def check_parity(student, runtime, graph: str, steps: int, precision: str, tolerance: float,
                 batch: int = 16) -> tuple[float, float]:
    """:func:`parity`, raising :class:`ParityError` above ``tolerance``."""
    max_abs, rel = parity(student, runtime, graph, steps, batch)
    if not rel <= tolerance:
        raise ParityError(f"{runtime.path} ({precision}) disagrees with the PyTorch student: relative error {rel:.3g} "
                          f"> {tolerance:g} (max abs {max_abs:.3g}); the export is broken, do not ship it")
    return max_abs, rel


def side_by_side_ms(calls: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median milliseconds per call for each callable, their calls interleaved (one warm-up each)."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values) * 1000) for name, values in times.items()}


def _artifact_fd(evaluation, runtime, graph: str, steps: int, name: str) -> float | None:
    """FD of the artifact's samples from the evaluation's noise and labels (``None`` without a classifier)."""
    if evaluation.classifier is None:
        return None
    labels = None if evaluation.cond is None else evaluation.cond.numpy()
    noise = evaluation.noise.numpy()
    chunks = []
    for start in range(0, len(noise), 250):
        part = None if labels is None else labels[start:start + 250]
        chunks.append(runtime.generate(noise[start:start + 250], part, steps))
    samples = torch.from_numpy(np.concatenate(chunks))
    return evaluation.score(samples, name, "student", "onnx", steps, 0.0).fd


def _lower(student, graph: str, steps: int, fp32_path: Path, path: Path, quantize: QuantizeConfig,
           config: ExportConfig) -> None:
    """Write ``path``: the fp32 model lowered to ``quantize.precision``. An int8 sampler whose jumps amplify the
    network's output error beyond ``quantize.max_gain`` is re-exported with those steps on a float network copy."""
    import tempfile

    from distill.solvers import time_grid

    from .onnx import step_gains

    calibration = _calibration(student, graph, config)
    float_steps = ()
    if quantize.precision.startswith("int8") and graph == "sampler":
        gains = step_gains(student, time_grid(student, steps))
        float_steps = tuple(k for k, gain in enumerate(gains) if gain > quantize.max_gain)
    if not float_steps:
        quantize_onnx(fp32_path, path, quantize, calibration)
        return
    _log(f"  {path.name}: step(s) {', '.join(map(str, float_steps))} amplify output errors beyond "
         f"{quantize.max_gain:g}x (gains {', '.join(f'{g:.3g}' for g in gains)}): kept in float")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.onnx"
        settings = OnnxExportConfig(graph=graph, steps=steps, float_steps=float_steps, exporter=config.exporter)
        export_onnx(student, source, settings, source=read_metadata(fp32_path)["source"])
        quantize_onnx(source, path, quantize, calibration)


def _runtime_model(student, graph: str, steps: int, fp32_path: Path, runtime: str, precision: str,
                   config: ExportConfig) -> tuple[dict | None, str | None]:
    """``OnnxSampler`` arguments for one (runtime, precision) of a graph, writing its file when it is lowered, or
    ``(None, reason)`` where this machine has no kernels that would pay for it."""
    import platform

    if precision not in RUNTIME_PRECISIONS[runtime]:
        return None, f"{runtime} has no {precision} path here"
    if runtime == "onnxruntime":
        if precision == "fp32":
            return {"path": fp32_path}, None
        if precision == "fp16" and platform.machine().lower() in ("x86_64", "amd64") and not _gpu_provider():
            return None, ("ONNX Runtime's x86 CPU provider has no fp16 kernels (it casts around every operator, "
                          "slower than fp32); fp16 is for GPU providers")
        path = fp32_path.with_name(fp32_path.name.replace("fp32", precision))
        _lower(student, graph, steps, fp32_path, path, QuantizeConfig(precision, max_gain=config.max_gain), config)
        return {"path": path}, None
    if not importlib.util.find_spec("openvino"):
        raise ValueError("--runtime openvino needs OpenVINO and NNCF: pip install 'distill[openvino]'")
    if precision == "int8":
        path = fp32_path.with_name(fp32_path.name.replace("fp32", "int8")).with_suffix(".openvino.xml")
        quantize_openvino(fp32_path, path, _calibration(student, graph, config))
        return {"path": path, "backend": "openvino"}, None
    if precision == "bf16":
        import openvino

        if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return None, "this CPU has no bf16 instructions (AVX512-BF16 / AMX): OpenVINO would run bf16 in float32"
    return {"path": fp32_path, "backend": "openvino", "inference_precision": precision}, None


def _gpu_provider() -> bool:
    from .runtime import choose_providers

    return choose_providers()[0] != "CPUExecutionProvider"


def _calibration(student, graph: str, config: ExportConfig) -> list[dict[str, np.ndarray]]:
    """The int8 calibration inputs, the same for every runtime: ``config.calibration`` batches of the graph's inputs."""
    return [{k: v.numpy() for k, v in example_inputs(student, graph, config.latency_batch, 100 + i).items()}
            for i in range(config.calibration)]


def export_student(model: str | Path, out: str | Path, config: ExportConfig | None = None) -> dict:
    """Export the student folder ``model`` into ``out`` and measure every artifact; returns the export report
    (also written to ``out/report.json`` and ``out/report.md``)."""
    from distill.evaluation.tables import Evaluation
    from distill.students import FlowMap, load_model

    config = config or ExportConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    student, teacher = load_model(model)
    if not isinstance(student, FlowMap):
        raise ValueError(f"{model} is a teacher, not a flow-map student: distil one with `distill run` first")
    student = student.merged().eval().requires_grad_(False)
    threads = config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    evaluation = Evaluation(teacher, samples=config.samples, progress=False) if teacher and config.samples else None
    float_fd = {}
    artifacts, skipped = [], []
    for graph in config.graphs:
        for steps in (config.steps if graph == "sampler" else (1,)):
            fp32_path = out / f"{graph}-{steps}step-fp32.onnx" if graph == "sampler" else out / "jump-fp32.onnx"
            _log(f"exporting the {graph} graph ({steps} step{'s' * (steps > 1)}) -> {fp32_path}")
            export_onnx(student, fp32_path, OnnxExportConfig(graph=graph, steps=steps, exporter=config.exporter),
                        source=str(model))
            if evaluation is not None and steps not in float_fd:
                float_fd[steps] = evaluation.student_rows(student, [steps])[0].fd
            for runtime, precision in ((r, p) for r in config.runtimes for p in config.precisions):
                settings, reason = _runtime_model(student, graph, steps, fp32_path, runtime, precision, config)
                if settings is None:
                    skipped.append({"graph": graph, "steps": steps, "runtime": runtime, "precision": precision,
                                    "reason": reason})
                    _log(f"  {runtime} {precision}: skipped, {reason}")
                    continue
                artifacts.append(_measure(student, graph, steps, runtime, precision, settings, config, evaluation,
                                          float_fd.get(steps), threads))
                _log("  " + _artifact_text(artifacts[-1]))
    report = {"model": str(model), "threads": threads, "latency_batch": config.latency_batch,
              "samples": config.samples, "artifacts": [asdict(a) for a in artifacts], "skipped": skipped}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report) + "\n")
    return report


def _measure(student, graph: str, steps: int, runtime: str, precision: str, settings: dict, config: ExportConfig,
             evaluation, float_fd: float | None, threads: int) -> Artifact:
    """Parity (raising :class:`ParityError`), latency beside eager PyTorch at the latency batch and at batch 1 (calls
    interleaved), FD and, for ONNX Runtime, the integer / float kernel counts of one artifact."""
    from .runtime import OnnxSampler

    path = Path(settings["path"])
    model = OnnxSampler(threads=threads, **settings)
    tolerance = config.tolerance.get(precision, TOLERANCE.get(precision, 0.1))
    max_abs, rel = check_parity(student, model, graph, steps, f"{runtime} {precision}", tolerance, config.parity_batch)
    latency = {}
    for batch, repeats in ((config.latency_batch, config.repeats), (1, 5 * config.repeats)):
        inputs = example_inputs(student, graph, batch, seed=7)
        latency[batch] = side_by_side_ms({"onnx": lambda i=inputs: _run(model, graph, i),
                                          "eager": lambda i=inputs: _reference(student, graph, steps, i)}, repeats)
    fd = None if evaluation is None else _artifact_fd(evaluation, model, graph, steps, f"{path.stem}-{runtime}")
    kernels = kernel_counts(path) if runtime == "onnxruntime" else {"integer": None, "float": None}
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    batch = config.latency_batch
    return Artifact(str(path), graph, steps, precision, size, max_abs, rel, round(latency[batch]["onnx"], 3),
                    round(latency[batch]["eager"], 3), fd, float_fd, kernels["integer"], kernels["float"], runtime,
                    round(latency[1]["onnx"], 3), round(latency[1]["eager"], 3))


def op_profile(path: str | Path, inputs: dict[str, np.ndarray], threads: int = 1, repeats: int = 5) -> list[dict]:
    """Where an ONNX Runtime model's time goes: milliseconds per call and share of the kernel time for each operator
    type, from ONNX Runtime's own profiler (after one warm-up call), slowest first."""
    import collections
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling, options.profile_file_prefix = True, str(Path(folder) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
        for _ in range(repeats + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total[event["args"]["op_name"]] += event["dur"]
            calls[event["args"]["op_name"]] += 1
    kernel_time = sum(total.values())
    return [{"op": op, "ms": round(us / 1000 / (repeats + 1), 3), "share": round(us / kernel_time, 4),
             "nodes": calls[op] // (repeats + 1)} for op, us in total.most_common()]


@dataclass
class Artifact:
    """One exported model (keys of docs/design.md §4's export report)."""

    path: str
    graph: str
    steps: int
    precision: str
    bytes: int
    max_abs_err: float
    rel_err: float
    latency_ms: float
    eager_latency_ms: float
    fd: float | None
    float_fd: float | None
    integer_ops: int | None  # convolutions and matrix products with weights run as integer kernels after ORT's
    float_ops: int | None  # optimisations, and in float (None: another runtime)
    runtime: str = "onnxruntime"
    latency_b1_ms: float | None = None  # one sample per call
    eager_latency_b1_ms: float | None = None


def _artifact_text(a: Artifact) -> str:
    fd = "" if a.fd is None else f", FD {a.fd:.4g} (float {a.float_fd:.4g})"
    kernels = "" if a.integer_ops is None else f", {a.integer_ops} integer / {a.float_ops} float conv+matmul"
    return (f"{Path(a.path).name} ({a.runtime}): {a.bytes / 1e6:.2f} MB, rel err {a.rel_err:.2g}, "
            f"{a.latency_ms:.1f} ms vs eager {a.eager_latency_ms:.1f} ms, batch 1 {a.latency_b1_ms:.2f} vs "
            f"{a.eager_latency_b1_ms:.2f} ms{fd}{kernels}")


def markdown(report: dict) -> str:
    batch = report["latency_batch"]
    header = (f"| artifact | runtime | graph | steps | precision | MB | rel err | ms (batch {batch}) | eager ms | "
              "ms (batch 1) | eager ms | FD | float FD | int / float ops |")
    lines = [f"{report['threads']} thread(s); FD over {report['samples']} samples; int / float ops: convolutions and "
             "matrix products with weights as integer or float kernels after ONNX Runtime's optimisations.", "",
             header, "|" + "---|" * (header.count("|") - 1)]

    def cell(value, form):
        return "–" if value is None else format(value, form)

    for a in report["artifacts"]:
        ops = "–" if a.get("integer_ops") is None else f"{a['integer_ops']} / {a['float_ops']}"
        lines.append(f"| {Path(a['path']).name} | {a.get('runtime', 'onnxruntime')} | {a['graph']} | {a['steps']} | "
                     f"{a['precision']} | {a['bytes'] / 1e6:.2f} | {a['rel_err']:.2g} | {a['latency_ms']:.1f} | "
                     f"{a['eager_latency_ms']:.1f} | {cell(a.get('latency_b1_ms'), '.2f')} | "
                     f"{cell(a.get('eager_latency_b1_ms'), '.2f')} | {cell(a['fd'], '.4g')} | "
                     f"{cell(a['float_fd'], '.4g')} | {ops} |")
    reasons = {}  # one line per (runtime, precision) not written, with the graphs it concerns
    for row in report.get("skipped", []):
        reasons.setdefault((row["runtime"], row["precision"], row["reason"]), []).append(
            f"{row['steps']}-step {row['graph']}" if row["graph"] == "sampler" else row["graph"])
    if reasons:
        lines.append("")
    for (runtime, precision, reason), graphs in reasons.items():
        lines.append(f"- {runtime} {precision} not written ({', '.join(graphs)}): {reason}.")
    return "\n".join(lines)
