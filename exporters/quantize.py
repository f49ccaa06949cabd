"""Lower-precision students: ONNX fp16 and int8 for ONNX Runtime, torchao for PyTorch serving (docs/design.md §3).

One verb per runtime, each with a config (torchao's ``quantize_(model, Config())`` shape):

- ``quantize_onnx(src, dst, QuantizeConfig(precision), calibration)``: ``fp16`` (inputs and outputs stay float32;
  normalisations, softmax, exp/log/pow and the time-embedding trigonometry stay float32), ``int8`` (static QDQ,
  per-channel symmetric weights, activations calibrated on the student's own inputs at its deployed times),
  ``int8-dynamic`` (int8 weights, activations quantised per call with their own ranges) and ``int8-mixed``
  (static, with the layers whose quantised output is least faithful — measured signal-to-quantisation-noise ratio
  on the calibration data — kept in float). A sampler exported with ``float_steps`` (``exporters.onnx``) keeps
  those steps' network copy in float32 in every mode.
- ``quantize_torch(module, TorchaoConfig(mode))``: torchao int8 dynamic, int8 / int4 weight-only, float8 (where
  the hardware has it), optionally compiled; ``save_torchao`` / ``load_torchao`` round-trip the weights.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACTIVATION_TYPES = ("uint8", "int8")
# After ONNX Runtime's optimisations, the operators that carry a UNet's compute, in integer and in float form.
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul")
FLOAT_KERNELS = ("Conv", "FusedConv", "NhwcFusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")
SENSITIVITY_EXAMPLES = 16  # calibration examples int8-mixed compares float and quantised activations on


@dataclass(frozen=True)
class Precision:
    """One ONNX precision: its name, whether lowering needs calibration inputs, and the relative error
    (||onnx - torch|| / ||torch||) its artifacts may show against the PyTorch student. A broken export is off by ~1;
    a lowered one by its precision times the jump's error gain (up to ~160 for an epsilon student's first jump, see
    ``exporters.onnx.step_gains``): 2-7% for fp16 there, so quality is judged by the FD column."""

    name: str
    tolerance: float
    calibrated: bool = False


PRECISIONS = {p.name: p for p in (Precision("fp32", 1e-4), Precision("fp16", 0.1),
                                  Precision("int8", 0.25, calibrated=True), Precision("int8-dynamic", 0.25),
                                  Precision("int8-mixed", 0.25, calibrated=True))}
# Kept in float32 by the fp16 conversion: their ranges or accumulations overflow or lose too much in half precision.
FP16_KEEP_FLOAT = ("GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
                   "ReduceMean", "ReduceSum", "ReduceSumSquare", "Pow", "Sqrt", "Reciprocal", "Div", "Exp", "Log",
                   "Softmax", "Sin", "Cos", "Erf")


@dataclass
class QuantizeConfig:
    """How to lower an fp32 ONNX model.

    Args:
        precision: one of :data:`PRECISIONS` other than ``fp32``.
        op_types: operators int8 quantises (convolutions and matrix products carry the compute).
        per_channel: per-output-channel weight scales (static int8).
        activation_type: static int8's activation type, ``uint8`` or ``int8``. On x86, ONNX Runtime fuses a
            QDQ convolution into ``QLinearConv`` only with uint8 activations (its S8->U8 rewrite misses a Q with
            several consumers): on the mnist-flow UNet's 2-step sampler, uint8 fuses 100 of 100 convolutions, int8
            74 (:func:`kernel_counts` counts them).
        reduce_range: 7-bit weights. x86 CPUs without VNNI multiply uint8 by int8 with ``vpmaddubsw``, whose int16
            pair sums saturate with full-range weights: on an AVX2 CPU the mnist-flow sampler's relative error was
            5.5% without it and 1.4% with it (as int8 activations give), at the same speed.
        activation_products: also quantise the products of two activations (attention's ``Q K^T`` and
            ``softmax V``). Off: they and the softmax between them stay float, which measured faster (ONNX Runtime's
            QLinearSoftmax costs 5x the float one) at the same error.
        keep_float_share: ``int8-mixed``: share of the quantised operators kept in float, least faithful first.
        max_gain: int8 sampler steps whose jump amplifies the network's output error by more than this
            (``exporters.onnx.step_gains``) run on a float copy of the network.
    """

    precision: str = "int8"
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    per_channel: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = True
    activation_products: bool = False
    keep_float_share: float = 0.1
    max_gain: float = 4.0

    def __post_init__(self):
        if self.precision not in PRECISIONS or self.precision == "fp32":
            lowered = ", ".join(p for p in PRECISIONS if p != "fp32")
            raise ValueError(f"unknown precision {self.precision!r}; use one of {lowered}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ValueError(f"unknown activation_type {self.activation_type!r}; use one of "
                             f"{', '.join(ACTIVATION_TYPES)}")
        if not 0 <= self.keep_float_share < 1:
            raise ValueError(f"keep_float_share must lie in [0, 1), got {self.keep_float_share}")


def _reader(feeds: list[dict[str, np.ndarray]]):
    """onnxruntime's CalibrationDataReader over a list of input dicts (defined here: onnxruntime loads lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.iterator = iter(feeds)

        def get_next(self):
            return next(self.iterator, None)

        def rewind(self):
            self.iterator = iter(feeds)

    return Reader()


def quantize_onnx(src: str | Path, dst: str | Path, config: QuantizeConfig,
                  calibration: Iterable[dict[str, np.ndarray]] | None = None) -> Path:
    """Write ``src`` (an fp32 model from ``exporters.onnx``) lowered to ``config.precision`` at ``dst``, with its
    metadata carried over and ``precision`` updated. Static int8 needs ``calibration``: input dicts of the model."""
    import onnxruntime

    from .onnx import read_metadata, write_metadata

    onnxruntime.set_default_logger_severity(3)  # errors only: the quantiser's sessions warn about every fold
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    feeds = list(calibration or [])
    if not feeds and PRECISIONS[config.precision].calibrated:
        raise ValueError(f"{config.precision} needs calibration inputs (a list of input dicts)")
    with tempfile.TemporaryDirectory() as folder:
        separated = Path(folder) / "separated.onnx"
        exclude = _separate_float_copy(src, separated)  # nodes of the float copy stay float32 in every mode
        if config.precision == "fp16":
            _to_fp16(separated, dst, exclude)
        else:
            pre = _preprocessed(separated, Path(folder))
            if config.precision == "int8-dynamic":
                _to_int8_dynamic(pre, dst, config, exclude)
            else:
                if not config.activation_products:
                    exclude += _activation_products(pre)
                if config.precision == "int8-mixed":
                    exclude += _least_faithful(pre, feeds, config, exclude)
                _to_int8_static(pre, dst, config, feeds, exclude)
        compact(dst)
    metadata = read_metadata(src) | {"precision": config.precision}
    write_metadata(dst, metadata)
    return dst


def quantize_openvino(src: str | Path, dst: str | Path, calibration: Iterable[dict[str, np.ndarray]]) -> Path:
    """Write ``src`` (an fp32 model from ``exporters.onnx``) as an OpenVINO IR (``dst``: ``.xml`` beside its ``.bin``)
    quantised to int8 by NNCF's post-training quantisation on the ``calibration`` inputs (the same ones ONNX Runtime's
    static int8 reads); the metadata is carried over with ``precision`` int8. Every step is quantised: for a student
    whose jumps amplify output errors (``QuantizeConfig.max_gain``) use ONNX Runtime's int8, which keeps those
    steps in float."""
    import contextlib
    import sys

    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout stays the caller's (--json)
            import nncf
            import openvino
    except ImportError as error:
        raise ValueError("OpenVINO int8 needs OpenVINO and NNCF: pip install 'distill[openvino]'") from error
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    if dst.suffix != ".xml":
        raise ValueError(f"an OpenVINO model is written as .xml (+ .bin), got {dst.name}")
    feeds = list(calibration)
    if not feeds:
        raise ValueError("OpenVINO int8 needs calibration inputs (a list of input dicts)")
    model = openvino.Core().read_model(str(src))
    # subset: batches, not examples. MIXED: asymmetric activations, as ONNX Runtime's int8. TRANSFORMER: NNCF's
    # pattern set that leaves the residual additions and attention's elementwise glue in float; on the quickstart
    # student's 1-step sampler the relative error was 3.5% with it and 13.8% with the default (convolution-network)
    # patterns, which quantise every elementwise input too.
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                                  preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER)
    quantized.set_rt_info(json.dumps("int8"), ["framework", "precision"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(quantized, str(dst), compress_to_fp16=False)
    return dst


def _to_fp16(src: Path, dst: Path, exclude: list[str]) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=exclude,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FLOAT))
    onnx.save(half, str(dst))


def _preprocessed(src: Path, folder: Path) -> Path:
    """Shape inference and graph optimisation before quantisation (onnxruntime's recommended pre-processing)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = folder / "preprocessed.onnx"
    quant_pre_process(str(src), str(path), skip_symbolic_shape=True)
    return path


def _to_int8_dynamic(pre: Path, dst: Path, config: QuantizeConfig, exclude: list[str]) -> None:
    """``pre``: a model after :func:`_preprocessed`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(config.op_types),
                     reduce_range=config.reduce_range,
                     per_channel=config.per_channel, nodes_to_exclude=exclude)


def _to_int8_static(pre: Path, dst: Path, config: QuantizeConfig, feeds: list[dict[str, np.ndarray]],
                    exclude: list[str]) -> None:
    """``pre``: a model after :func:`_preprocessed`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    activation = QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8
    quantize_static(str(pre), str(dst), _reader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types), per_channel=config.per_channel,
                    reduce_range=config.reduce_range, activation_type=activation, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _activation_products(pre: Path) -> list[str]:
    """Names of the matrix products none of whose inputs is a weight (attention's ``Q K^T`` and ``softmax V``)."""
    import onnx

    graph = onnx.load(str(pre)).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def compact(path: str | Path) -> None:
    """Shorten a lowered model's tensor and node names and drop its shape annotations: the quantiser's names
    (``<weight>_quantized_scale``, ...) were a third of an int8 UNet's bytes. Inputs and outputs keep their names."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    kept = {v.name for v in [*graph.input, *graph.output]} | {""}
    short = {}

    def rename(name: str) -> str:
        return name if name in kept else short.setdefault(name, f"v{len(short)}")

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for k, node in enumerate(graph.node):
        node.name = f"n{k}"
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    del graph.value_info[:]
    onnx.save(model, str(path))


def kernel_counts(path: str | Path) -> dict[str, int]:
    """How many convolutions and matrix products with weights run as integer kernels and how many in float once ONNX
    Runtime's CPU session has optimised ``path`` (what really runs, not what the file's Q/DQ nodes promise)."""
    import onnx

    from .runtime import open_session

    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        open_session(Path(path), "cpu", optimized_path=optimized)
        graph = onnx.load(str(optimized)).graph
    weights = {t.name for t in graph.initializer}
    weighted = [n.op_type for n in graph.node if weights.intersection(n.input)]
    return {"integer": sum(op in INTEGER_KERNELS for op in weighted),
            "float": sum(op in FLOAT_KERNELS for op in weighted)}


def _separate_float_copy(src: Path, dst: Path) -> list[str]:
    """Write ``src`` to ``dst`` with the float network copy's weights unshared (the exporter merges equal
    initializers, and a quantiser would then quantise a weight for every consumer); returns the copy's node names
    (scope ``exporters.onnx.FLOAT_COPY``)."""
    import onnx

    from .onnx import FLOAT_COPY

    def scopes(node) -> str:
        return next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    float_nodes = [n for n in graph.node if f"'{FLOAT_COPY}" in scopes(n)]
    for node in float_nodes:
        for k, name in enumerate(node.input):
            if name in initializers and initializers[name].data_type == onnx.TensorProto.FLOAT:
                if f"{name}/{FLOAT_COPY}" not in initializers:
                    copy = graph.initializer.add()
                    copy.CopyFrom(initializers[name])
                    copy.name = f"{name}/{FLOAT_COPY}"
                    initializers[copy.name] = copy
                node.input[k] = f"{name}/{FLOAT_COPY}"
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]  # the exporter's unused duplicates go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))
    return [n.name for n in float_nodes]


def _least_faithful(pre: Path, feeds: list[dict[str, np.ndarray]], config: QuantizeConfig,
                    excluded: list[str]) -> list[str]:
    """Names of the quantised nodes whose outputs have the lowest signal-to-quantisation-noise ratio (float model
    versus a fully quantised one on the calibration inputs), ``keep_float_share`` of them; ``pre``: a model after
    :func:`_preprocessed`."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        quantized = folder / "all.onnx"
        _to_int8_static(pre, quantized, config, feeds, excluded)
        float_debug, quant_debug = folder / "float_debug.onnx", folder / "quant_debug.onnx"
        types = list(config.op_types)  # only the quantised operators' outputs, on a small slice: memory stays low
        modify_model_output_intermediate_tensors(str(pre), str(float_debug), op_types_for_saving=types)
        modify_model_output_intermediate_tensors(str(quantized), str(quant_debug), op_types_for_saving=types)
        probe = [{name: array[:SENSITIVITY_EXAMPLES] for name, array in feed.items()} for feed in feeds[:1]]
        float_acts = collect_activations(str(float_debug), _reader(probe))
        quant_acts = collect_activations(str(quant_debug), _reader(probe))
        errors = compute_activation_error(create_activation_matching(quant_acts, float_acts))
        producers = {out: node.name for node in onnx.load(str(pre)).graph.node for out in node.output
                     if node.op_type in config.op_types and node.name not in excluded}
    sqnr = {producers[name]: value["xmodel_err"] for name, value in errors.items() if name in producers}
    ranked = sorted(sqnr, key=sqnr.get)
    return ranked[: max(1, round(config.keep_float_share * len(ranked)))] if ranked else []


# --- torchao, for PyTorch serving -----------------------------------------------------------------------------
# mode -> torchao config (``torchao.quantization`` and the TorchaoConfig are passed in: torchao loads lazily)
TORCHAO_CONFIGS = {
    "int8-dynamic": lambda q, config: q.Int8DynamicActivationInt8WeightConfig(),
    "int8-weight": lambda q, config: q.Int8WeightOnlyConfig(),
    "int4-weight": lambda q, config: q.Int4WeightOnlyConfig(group_size=config.group_size),
    "float8-dynamic": lambda q, config: q.Float8DynamicActivationFloat8WeightConfig(),
}
TORCHAO_MODES = tuple(TORCHAO_CONFIGS)


@dataclass
class TorchaoConfig:
    """torchao quantisation of a PyTorch module's linear layers.

    Args:
        mode: ``int8-dynamic`` (int8 weights and per-token dynamic int8 activations), ``int8-weight``,
            ``int4-weight`` (weight-only, group size ``group_size``) or ``float8-dynamic`` (needs a GPU with float8).
        compile: wrap the result in ``torch.compile``.
    """

    mode: str = "int8-dynamic"
    group_size: int = 32
    compile: bool = True

    def __post_init__(self):
        if self.mode not in TORCHAO_MODES:
            raise ValueError(f"unknown torchao mode {self.mode!r}; use one of {', '.join(TORCHAO_MODES)}")


def quantize_torch(module, config: TorchaoConfig | None = None):
    """Quantise ``module``'s ``nn.Linear`` layers in place with torchao (``quantize_``) and, when ``config.compile``,
    compile it in place (``nn.Module.compile``); returns the module."""
    import torch
    from torchao import quantization

    config = config or TorchaoConfig()
    if config.mode == "float8-dynamic" and not (torch.cuda.is_available()
                                                and torch.cuda.get_device_capability() >= (8, 9)):
        raise ValueError("float8-dynamic needs a GPU with float8 (compute capability >= 8.9); use int8-dynamic here")
    quantization.quantize_(module, TORCHAO_CONFIGS[config.mode](quantization, config))
    if config.compile:  # in place, so that every call path (a FlowMap's jump included) runs compiled
        module.compile()
    return module


def save_torchao(module, path: str | Path) -> Path:
    """Save a torchao-quantised module's state (its quantised tensors included) for :func:`load_torchao`."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


def load_torchao(module, path: str | Path, config: TorchaoConfig | None = None):
    """Quantise a freshly built ``module`` like the saved one and load the saved state into it (``weights_only``:
    torchao's tensor types are allow-listed, nothing else is unpickled)."""
    import torch

    config = config or TorchaoConfig()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved torchao state at {path}")
    quantize_torch(module, TorchaoConfig(config.mode, config.group_size, compile=False))
    module.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"), assign=True)
    if config.compile:
        module.compile()
    return module
