"""ONNX graphs of a flow-map student (docs/design.md §3, exporters).

Two graph kinds, both with a dynamic batch dimension:

- ``sampler``: ``noise [B, ...] (+ class_labels [B] or encoder_hidden_states [B, L, D]) -> sample [B, ...]``, the
  K-step time grid baked in: K jumps ``x <- X(x, t_k, t_{k+1})`` from ``x = t_0 * noise`` (the same arithmetic as
  ``distill.sample(student, noise, steps=K)``).
- ``jump``: ``x [B, ...], t [B], s [B] (+ class_labels [B]) -> X(x, t, s)``, one jump between any two times.

A student built on a teacher's network (``FlowMap.from_teacher``) converts canonical time to the network's own
timestep and input scale, and its output to a velocity, through float64 schedule arithmetic (searchsorted over the
training table for a DDPM). Both conversions are linear in the state and the network output at fixed ``t``
(docs/design.md §2), so one jump is ``X = p(t, s) x + q(t, s) out``, ``out = net(c_in(t) x, timestep(t), gap = t - s)``:
the sampler bakes these scalars per step (computed in float64); the jump graph interpolates them from a dense table
over ``t``. Every model carries its metadata (convention, time grid, precision, a hash of the source weights).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

GRAPHS = ("sampler", "jump")
EXPORTERS = ("dynamo", "torchscript")
CONVENTION = ("rectified flow: x_t = (1 - t) x_data + t noise, t = 0 data, t = 1 noise; "
              "X(x, t, s) = x + (s - t) F(x, t, s)")
TWO_GIB = 2 * 1024**3


@dataclass
class OnnxExportConfig:
    """What to export.

    Args:
        graph: ``"sampler"`` (K baked jumps) or ``"jump"`` (x, t, s -> X).
        steps: K, the sampler's number of jumps on the student's uniform grid (ignored by the jump graph).
        opset: ONNX opset (>= 18).
        exporter: ``"dynamo"`` (torch.export; falls back to TorchScript with a warning when it fails) or
            ``"torchscript"``.
        table_size: points of the jump graph's coefficient table over ``t`` (students on a teacher's network).
        float_steps: sampler steps that run on a separate network copy (scope ``float_copy``) a quantiser leaves
            in float.
    """

    graph: str = "sampler"
    steps: int = 1
    opset: int = 18
    exporter: str = "dynamo"
    table_size: int = 8193
    float_steps: tuple[int, ...] = ()

    def __post_init__(self):
        if self.graph not in GRAPHS:
            raise ValueError(f"unknown graph {self.graph!r}; use one of {', '.join(GRAPHS)}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"unknown exporter {self.exporter!r}; use one of {', '.join(EXPORTERS)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.opset < 18:
            raise ValueError(f"opset must be >= 18, got {self.opset}")


# --- the jump as scalars times tensors (each student kind's time_scalars / step_scalars / scalar_jump) ----------
FLOAT_COPY = "float_copy"  # name scope of the network copy that stays float in a mixed-precision sampler


class SamplerGraph(nn.Module):
    """``noise (+ class labels) -> sample``: ``x = t_0 noise``, then one jump per step of ``times``, each reading
    the student's per-step scalars (``FlowMap.step_scalars``, computed in float64 at construction, stored as float32
    buffers).

    Steps listed in ``float_steps`` call a separate copy of the student (module ``float_copy``), which a quantiser
    leaves in float: the steps whose jump amplifies the network's output error (see :func:`step_gains`)."""

    def __init__(self, student, times: Tensor, float_steps: tuple[int, ...] = ()):
        super().__init__()
        self.times, self.float_steps = times, tuple(float_steps)
        self.student = student
        self.float_copy = copy.deepcopy(student) if self.float_steps else None
        t, s = times[:-1].to(torch.float64), times[1:].to(torch.float64)
        scalars = student.step_scalars(student.time_scalars(t), t, s)
        self.names = tuple(scalars)
        for name, values in scalars.items():
            self.register_buffer(f"step_{name}", values.to(torch.float32), persistent=False)
        self.t_start = float(times[0])

    def forward(self, noise: Tensor, class_labels: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        x = noise * self.t_start
        for k in range(len(self.times) - 1):
            student = self.float_copy if k in self.float_steps else self.student
            scalars = {name: getattr(self, f"step_{name}")[k] for name in self.names}
            x = student.scalar_jump(x, scalars, class_labels, guidance)
        return x


def step_gains(student, times: Tensor) -> list[float]:
    """How much each jump of the grid amplifies an error in the network's raw output (``distill.students.jump_gains``):
    quantisation noise on a step with a large gain ruins the sample."""
    from distill.students import jump_gains

    return jump_gains(student, times).tolist()


class JumpGraph(nn.Module):
    """``(x, t, s (+ class labels)) -> X(x, t, s)`` for any ``t >= s`` in the student's range.

    The student's per-time scalars (``FlowMap.time_scalars``: for a student on a teacher's network ``c_in``,
    ``timestep`` and the velocity coefficients) come from a dense float64 table over ``t`` (linear interpolation;
    index = number of table points <= t, an ONNX-friendly searchsorted)."""

    def __init__(self, student, table_size: int = 8193):
        super().__init__()
        self.student = student
        # t = 0 is left out: a sample-predicting network gives no velocity there (X(x, 0, 0) = x anyway).
        grid = torch.linspace(max(student.t_min, 1e-5), student.t_max, table_size, dtype=torch.float64)
        columns = student.time_scalars(grid)
        self.names = tuple(columns)
        if columns:
            self.register_buffer("table_t", grid.to(torch.float32), persistent=False)
            self.register_buffer("table", torch.stack(list(columns.values()), 1).to(torch.float32), persistent=False)

    def _interpolate(self, t: Tensor) -> dict[str, Tensor]:
        if not self.names:
            return {}
        index = (self.table_t[None, :] <= t[:, None]).sum(1) - 1  # [B]
        index = index.clamp(0, len(self.table_t) - 2)
        t0, t1 = self.table_t[index], self.table_t[index + 1]
        w = ((t - t0) / (t1 - t0))[:, None]
        values = self.table[index] * (1 - w) + self.table[index + 1] * w  # [B, columns]
        return dict(zip(self.names, values.unbind(1)))

    def forward(self, x: Tensor, t: Tensor, s: Tensor, class_labels: Tensor | None = None,
                guidance: Tensor | None = None) -> Tensor:
        scalars = self.student.step_scalars(self._interpolate(t), t, s)
        return self.student.scalar_jump(x, scalars, class_labels, guidance)


# --- export ---------------------------------------------------------------------------------------------------
def graph_module(student, config: OnnxExportConfig) -> nn.Module:
    """The module that is exported: a :class:`SamplerGraph` on the student's uniform K-step grid, or a
    :class:`JumpGraph`."""
    from distill.solvers import time_grid

    if config.graph == "sampler":
        return SamplerGraph(student, time_grid(student, config.steps), config.float_steps).eval()
    return JumpGraph(student, config.table_size).eval()


def example_inputs(student, graph: str, batch: int = 2, seed: int = 0) -> dict[str, Tensor]:
    """Inputs of the right names, shapes and dtypes: standard normal states, times ``t > s`` in the student's
    range, class labels in ``[0, num_classes)``, and for a guidance-conditioned student scales ``w`` in the range it
    was distilled on."""
    if student.sample_shape is None:
        raise ValueError("the student does not declare its sample shape, so its ONNX inputs cannot be shaped")
    generator = torch.Generator().manual_seed(seed)
    state = torch.randn(batch, *student.sample_shape, generator=generator)
    inputs = {"noise": state} if graph == "sampler" else {"x": state}
    if graph == "jump":
        t = student.t_min + (student.t_max - student.t_min) * torch.rand(batch, generator=generator)
        inputs |= {"t": t, "s": t * torch.rand(batch, generator=generator)}
    classes = student.info.num_classes
    if classes:
        inputs["class_labels"] = torch.randint(0, classes, (batch,), generator=generator)
    elif (prompts := student.prompt_set("held_out")) is not None:  # a text-to-image student: its text states
        states = student.encode_prompts(prompts.prompts[:batch])
        if isinstance(states, dict):
            raise ValueError("ONNX export of a student conditioned on several tensors (SDXL, SD3, FLUX) is not "
                             "supported yet; SD1.5-style pipelines (one encoder_hidden_states input) are")
        inputs["encoder_hidden_states"] = states
    if student.guidance_conditioned:
        low, high = student.info.guidance_range or [student.default_guidance] * 2
        inputs["guidance"] = low + (high - low) * torch.rand(batch, generator=generator)
    return inputs


def weights_hash(student) -> str:
    """sha256 over the student's parameters and buffers (names, shapes, bytes): which weights an artifact holds."""
    digest = hashlib.sha256()
    for name, tensor in sorted(student.state_dict().items()):
        digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_onnx(student, path: str | Path, config: OnnxExportConfig | None = None, source: str = "") -> dict:
    """Export ``student`` to ``path`` (weights in an external ``.data`` file only above 2 GiB) and write its metadata.

    Returns the metadata written (also readable with :func:`read_metadata` and by ``exporters.runtime``).
    """
    config = config or OnnxExportConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = graph_module(student, config)
    inputs = example_inputs(student, config.graph)
    names = list(inputs)
    large = sum(p.numel() * p.element_size() for p in student.parameters()) > TWO_GIB
    exporter = _export(module, inputs, path, config, large)
    share_equal_initializers(path)
    metadata = {
        "format": "distill flow-map student", "convention": CONVENTION, "graph": config.graph,
        "steps": config.steps if config.graph == "sampler" else None,
        "times": [float(t) for t in module.times] if config.graph == "sampler" else None,
        "t_min": student.t_min, "t_max": student.t_max, "sample_shape": list(student.sample_shape),
        "num_classes": student.info.num_classes, "inputs": names, "output": _output_name(config.graph),
        "guidance": {"default": student.default_guidance, "range": student.info.guidance_range}
        if student.guidance_conditioned else None,
        "precision": "fp32", "exporter": exporter, "opset": config.opset, "source": source,
        "source_sha256": weights_hash(student), "teacher": student.info.teacher or student.info.name,
    }
    write_metadata(path, metadata, strip_node_metadata=not config.float_steps)
    return metadata


def _output_name(graph: str) -> str:
    return "sample" if graph == "sampler" else "x_s"


def _export(module: nn.Module, inputs: dict[str, Tensor], path: Path, config: OnnxExportConfig, large: bool) -> str:
    """Run torch.onnx.export with the dynamo exporter (or TorchScript); returns the exporter that succeeded."""
    args = tuple(inputs.values())
    names, output = list(inputs), [_output_name(config.graph)]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # not "torchvision is not installed" four times
    if config.exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} for _ in names)  # positional: a condition input renames the forward's cond slot
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), dynamo=True, opset_version=config.opset,
                                  input_names=names, output_names=output, dynamic_shapes=shapes,
                                  external_data=large, verbose=False)
            return "dynamo"
        except Exception as error:  # noqa: BLE001 - any exporter failure falls back, and says so
            print(f"exporters: the dynamo exporter failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
                  "falling back to the TorchScript exporter", file=sys.stderr)
            warnings.warn(f"dynamo ONNX export failed, used the TorchScript exporter: {error}", stacklevel=2)
    torchscript_export(module, inputs, path, output[0], config.opset)
    return "torchscript"


def torchscript_export(module: nn.Module, inputs: dict[str, Tensor], path: Path, output: str, opset: int = 18) -> None:
    """The TorchScript exporter, every input and the output with a dynamic batch dimension."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks inside diffusers and transformers
        torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False, opset_version=opset,
                          input_names=list(inputs), output_names=[output],
                          dynamic_axes={name: {0: "batch"} for name in [*inputs, output]})


def share_equal_initializers(path: str | Path) -> int:
    """Store every initializer once: the exporter folds a transposed copy of a weight for each call of the module, so
    a K-step sampler held K copies of some weights. Nodes read the first of a set of equal tensors (same dtype,
    shape and bytes); returns the bytes saved."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        return 0  # weights in a .data file (above 2 GiB): left as the exporter wrote them
    first, rename, saved = {}, {}, 0
    for tensor in graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(numpy_helper.to_array(tensor).tobytes()).digest())
        if key in first:
            rename[tensor.name] = first[key]
            saved += tensor.ByteSize()
        else:
            first[key] = tensor.name
    if not rename:
        return 0
    _rename_inputs(graph, rename)
    kept = [t for t in graph.initializer if t.name not in rename]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    return saved


def _rename_inputs(graph, rename: dict[str, str]) -> None:
    """Point every node input (in subgraphs too) named in ``rename`` at its new name."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                _rename_inputs(subgraph, rename)


# --- metadata -------------------------------------------------------------------------------------------------
def write_metadata(path: str | Path, metadata: dict, strip_node_metadata: bool = True) -> None:
    """Store ``metadata`` in the model's ``metadata_props`` (one JSON-encoded value per key); by default drop the
    exporter's per-node debug metadata (stack traces and FX nodes: a fifth of a small model's bytes)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if strip_node_metadata:
        for node in model.graph.node:
            del node.metadata_props[:]
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict:
    """The metadata :func:`export_onnx` wrote (JSON-decoded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: json.loads(entry.value) for entry in model.metadata_props}
