"""``distill export``: write a student's ONNX graphs at each precision and prove each one against PyTorch.

For every (graph, steps, precision) the report (docs/design.md §4 ``export``) holds the file size, parity against the
PyTorch student (max-abs and relative error on the same inputs), latency per batch beside eager PyTorch measured in
the same loop (calls alternate, so machine noise hits both), and the FD of the artifact's samples beside the float
student's on the same noise. A parity failure raises :class:`ParityError`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .onnx import OnnxExportConfig, example_inputs, export_onnx, read_metadata
from .quantize import PRECISIONS, QuantizeConfig, kernel_counts, quantize_onnx

TOLERANCE = {name: precision.tolerance for name, precision in PRECISIONS.items()}  # quantize.Precision says why


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

    def __post_init__(self):
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"unknown precision {unknown[0]!r}; use any of {', '.join(PRECISIONS)}")


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

    calibration = [{k: v.numpy() for k, v in example_inputs(student, graph, config.latency_batch, 100 + i).items()}
                   for i in range(config.calibration)]
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


def export_student(model: str | Path, out: str | Path, config: ExportConfig | None = None) -> dict:
    """Export the student folder ``model`` into ``out`` and measure every artifact; returns the export report
    (also written to ``out/report.json`` and ``out/report.md``)."""
    from distill.evaluation.tables import Evaluation
    from distill.students import FlowMap, load_model

    from .runtime import OnnxSampler

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
    artifacts = []
    for graph in config.graphs:
        for steps in (config.steps if graph == "sampler" else (1,)):
            fp32_path = out / f"{graph}-{steps}step-fp32.onnx" if graph == "sampler" else out / "jump-fp32.onnx"
            _log(f"exporting the {graph} graph ({steps} step{'s' * (steps > 1)}) -> {fp32_path}")
            export_onnx(student, fp32_path, OnnxExportConfig(graph=graph, steps=steps, exporter=config.exporter),
                        source=str(model))
            if evaluation is not None and steps not in float_fd:
                float_fd[steps] = evaluation.student_rows(student, [steps])[0].fd
            for precision in config.precisions:
                path = fp32_path.with_name(fp32_path.name.replace("fp32", precision))
                if precision != "fp32":
                    _lower(student, graph, steps, fp32_path, path, QuantizeConfig(precision, max_gain=config.max_gain),
                           config)
                runtime = OnnxSampler(path, threads=threads)
                max_abs, rel = check_parity(student, runtime, graph, steps, precision,
                                            config.tolerance.get(precision, 0.1), config.parity_batch)
                inputs = example_inputs(student, graph, config.latency_batch, seed=7)
                latency = side_by_side_ms({"onnx": lambda r=runtime, i=inputs, g=graph: _run(r, g, i),
                                           "eager": lambda i=inputs, g=graph, k=steps: _reference(student, g, k, i)},
                                          config.repeats)
                fd = None if evaluation is None else _artifact_fd(evaluation, runtime, graph, steps, path.stem)
                kernels = kernel_counts(path)
                artifacts.append(Artifact(str(path), graph, steps, precision, path.stat().st_size, max_abs, rel,
                                          round(latency["onnx"], 3), round(latency["eager"], 3), fd,
                                          float_fd.get(steps), kernels["integer"], kernels["float"]))
                _log("  " + _artifact_text(artifacts[-1]))
    report = {"model": str(model), "threads": threads, "latency_batch": config.latency_batch,
              "samples": config.samples, "artifacts": [asdict(a) for a in artifacts]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report) + "\n")
    return report


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
    integer_ops: int  # convolutions and matrix products run as integer kernels after ORT's optimisations
    float_ops: int  # ... and in float


def _artifact_text(a: Artifact) -> str:
    fd = "" if a.fd is None else f", FD {a.fd:.4g} (float {a.float_fd:.4g})"
    return (f"{Path(a.path).name}: {a.bytes / 1e6:.2f} MB, rel err {a.rel_err:.2g}, {a.latency_ms:.1f} ms vs eager "
            f"{a.eager_latency_ms:.1f} ms{fd}, {a.integer_ops} integer / {a.float_ops} float conv+matmul")


def markdown(report: dict) -> str:
    header = ("| artifact | graph | steps | precision | MB | max abs err | rel err | ms | eager ms | FD | float FD | "
              "int / float ops |")
    lines = [f"Batch {report['latency_batch']}, {report['threads']} thread(s); FD over {report['samples']} samples; "
             "int / float ops: convolutions and matrix products as integer or float kernels after ONNX Runtime's "
             "optimisations.", "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        fd = "–" if a["fd"] is None else f"{a['fd']:.4g}"
        float_fd = "–" if a["float_fd"] is None else f"{a['float_fd']:.4g}"
        lines.append(f"| {Path(a['path']).name} | {a['graph']} | {a['steps']} | {a['precision']} | "
                     f"{a['bytes'] / 1e6:.2f} | {a['max_abs_err']:.2g} | {a['rel_err']:.2g} | {a['latency_ms']:.1f} | "
                     f"{a['eager_latency_ms']:.1f} | {fd} | {float_fd} | {a['integer_ops']} / {a['float_ops']} |")
    return "\n".join(lines)
