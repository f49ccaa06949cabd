"""Run an exported flow-map student with ONNX Runtime or OpenVINO: numpy and the runtime only (no torch), for edge
devices.

    from exporters.runtime import OnnxSampler
    sampler = OnnxSampler("student-2step-int8.onnx")          # providers: the best present, or providers=[...]
    images = sampler.sample(16, seed=0, class_labels=[7] * 16)   # [16, 1, 16, 16] float32, data space
    OnnxSampler("student-2step-fp32.onnx", backend="openvino")  # the same file in OpenVINO (or an NNCF int8 .xml)

The model's metadata (written by ``exporters.onnx``) says what it is: graph kind, time grid, sample shape, classes.
One class per backend (:data:`BACKENDS`) opens a model and runs it on named numpy inputs; everything else is shared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

# Fastest first; whichever of these the installed onnxruntime offers is used.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


def choose_providers(requested: list[str] | str | None = None) -> list[str]:
    """``requested`` (names, or a comma-separated string; short names like ``cuda`` work) if present, else every
    available provider in :data:`PROVIDER_PREFERENCE` order, CPU last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PROVIDER_PREFERENCE if p in available] or available
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    chosen = []
    for name in names:
        full = next((p for p in available if p.lower() in (name.lower(), f"{name.lower()}executionprovider")), None)
        if full is None:
            raise ValueError(f"onnxruntime provider {name!r} is not available here; available: {', '.join(available)}")
        chosen.append(full)
    return chosen


def open_session(path: Path, providers: list[str] | str | None = None, threads: int | None = None,
                 optimized_path: Path | None = None):
    """An ONNX Runtime session with every graph optimisation, errors only in its log; a one-line error for a file
    that is missing or not a loadable model. ``optimized_path``: where to write the graph as optimised."""
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=choose_providers(providers))
    except Exception as error:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a loadable ONNX model ({str(error).splitlines()[0]}); re-export it with "
                         "`distill export`") from error


class OnnxRuntimeModel:
    """A model in an ONNX Runtime session (``providers``: see :func:`choose_providers`)."""

    def __init__(self, path: Path, providers: list[str] | str | None = None, threads: int | None = None,
                 inference_precision: str | None = None):
        if inference_precision not in (None, "fp32"):
            raise ValueError(f"onnxruntime runs a model in the precision it was saved in; inference_precision="
                             f"{inference_precision!r} is an openvino setting")
        self.session = open_session(path, providers, threads)
        self.metadata_strings = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.providers = self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]


class OpenVinoModel:
    """A model (the same ``.onnx``, or an OpenVINO IR ``.xml`` from ``exporters.quantize.quantize_openvino``)
    compiled by OpenVINO for ``device``; ``inference_precision``: ``fp32`` (strict, the default) or ``bf16`` (where
    the CPU has bf16 instructions)."""

    PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}

    def __init__(self, path: Path, providers: list[str] | str | None = None, threads: int | None = None,
                 inference_precision: str | None = None, device: str = "CPU"):
        try:
            import openvino
        except ImportError as error:
            raise ValueError("the openvino backend needs OpenVINO: pip install 'distill[openvino]' (or use "
                             "backend='onnxruntime')") from error
        if not path.is_file():
            raise FileNotFoundError(f"no model at {path}")
        precision = inference_precision or "fp32"
        if precision not in self.PRECISION_HINTS:
            raise ValueError(f"unknown inference_precision {precision!r}; use one of {', '.join(self.PRECISION_HINTS)}")
        core = openvino.Core()
        if precision == "bf16" and "BF16" not in core.get_property(device, "OPTIMIZATION_CAPABILITIES"):
            raise ValueError(f"this {device} has no bf16 instructions, so OpenVINO would run bf16 in float32; use "
                             "inference_precision='fp32'")
        try:
            model = core.read_model(str(path))
        except Exception as error:  # openvino raises its own exception types
            raise ValueError(f"{path} is not a model OpenVINO can read ({str(error).splitlines()[0]}); re-export it "
                             "with `distill export`") from error
        framework = model.get_rt_info()["framework"] if model.has_rt_info(["framework"]) else {}  # ONNX metadata_props
        self.metadata_strings = {key: value.astype(str) for key, value in framework.items()}
        self.input_names = [i.get_any_name() for i in model.inputs]
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.PRECISION_HINTS[precision]}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, settings)
        self.providers = [f"OpenVINO {device} ({precision})"]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.compiled(feeds)[self.compiled.output(0)]


BACKENDS = {"onnxruntime": OnnxRuntimeModel, "openvino": OpenVinoModel}


def open_model(path: str | Path, backend: str | None = None, providers: list[str] | str | None = None,
               threads: int | None = None, inference_precision: str | None = None):
    """``path`` opened by ``backend`` (default: openvino for an IR ``.xml``, else onnxruntime)."""
    path = Path(path)
    backend = backend or ("openvino" if path.suffix == ".xml" else "onnxruntime")
    if backend not in BACKENDS:
        raise ValueError(f"unknown runtime {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and path.suffix == ".xml":
        raise ValueError(f"{path} is an OpenVINO IR model; run it with backend='openvino' (--runtime openvino)")
    return BACKENDS[backend](path, providers, threads, inference_precision)


class OnnxSampler:
    """An exported sampler (or jump) graph in a runtime.

    Args:
        path: the ``.onnx`` file (or an OpenVINO ``.xml``).
        providers: ONNX Runtime execution providers (see :func:`choose_providers`).
        threads: intra-op threads (None: the runtime's default).
        backend: one of :data:`BACKENDS` (default: by the file's suffix).
        inference_precision: OpenVINO only: ``fp32`` or ``bf16``.
    """

    def __init__(self, path: str | Path, providers: list[str] | str | None = None, threads: int | None = None,
                 backend: str | None = None, inference_precision: str | None = None):
        path = Path(path)
        self.model = open_model(path, backend, providers, threads, inference_precision)
        raw = self.model.metadata_strings
        if "graph" not in raw:
            raise ValueError(f"{path} carries no flow-map metadata; export it with `distill export`")
        self.metadata = {key: json.loads(value) for key, value in raw.items()}
        self.path = path
        self.input_names = self.model.input_names

    @property
    def graph(self) -> str:
        return self.metadata["graph"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["sample_shape"])

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    def _feeds(self, arrays: dict[str, np.ndarray], class_labels, guidance=None,
               encoder_hidden_states=None) -> dict[str, np.ndarray]:
        batch = len(next(iter(arrays.values())))
        for name, array in arrays.items():
            if name in ("noise", "x") and tuple(array.shape[1:]) != self.sample_shape:
                raise ValueError(f"{name} must have shape [B, {', '.join(map(str, self.sample_shape))}], "
                                 f"got {list(array.shape)}")
        feeds = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in arrays.items()}
        if "class_labels" in self.input_names:
            if class_labels is None:
                raise ValueError(f"this model is class-conditional ({self.metadata['num_classes']} classes): pass "
                                 "class_labels")
            labels = np.broadcast_to(np.asarray(class_labels, dtype=np.int64), (batch,))
            feeds["class_labels"] = np.ascontiguousarray(labels)
        elif class_labels is not None:
            raise ValueError("this model is not class-conditional: class_labels must be None")
        if "encoder_hidden_states" in self.input_names:  # a text-to-image student: its text encoder's states
            if encoder_hidden_states is None:
                raise ValueError("this model is text-conditioned: pass encoder_hidden_states (exporters.runtime."
                                 "OnnxTextToImage makes them from prompts)")
            feeds["encoder_hidden_states"] = np.ascontiguousarray(encoder_hidden_states, dtype=np.float32)
        if "guidance" in self.input_names:  # a guidance-distilled student: the scale w is an input
            scale = self.metadata["guidance"]["default"] if guidance is None else guidance
            feeds["guidance"] = np.ascontiguousarray(np.broadcast_to(np.asarray(scale, np.float32), (batch,)))
        elif guidance is not None:
            raise ValueError("this model was not distilled with guidance: guidance must be None")
        return feeds

    def __call__(self, noise: np.ndarray, class_labels=None, guidance=None) -> np.ndarray:
        """The sampler graph: ``noise [B, ...]`` (standard normal) -> samples [B, ...] at ``t = 0``. ``guidance``: the
        scale ``w`` (a number or [B]) of a guidance-distilled student (default: the one it was exported with)."""
        if self.graph != "sampler":
            raise ValueError(f"{self.path} is a {self.graph} graph; call .jump(x, t, s) or export a sampler")
        return self.model.run(self._feeds({"noise": noise}, class_labels, guidance))

    def jump(self, x: np.ndarray, t, s, class_labels=None, guidance=None, encoder_hidden_states=None) -> np.ndarray:
        """The jump graph: ``X(x, t, s)`` for canonical ``t >= s`` (numbers or [B])."""
        if self.graph != "jump":
            raise ValueError(f"{self.path} is a {self.graph} graph; call it on noise, or export a jump graph")
        batch = len(x)
        t = np.broadcast_to(np.asarray(t, dtype=np.float32), (batch,))
        s = np.broadcast_to(np.asarray(s, dtype=np.float32), (batch,))
        return self.model.run(self._feeds({"x": x, "t": t, "s": s}, class_labels, guidance, encoder_hidden_states))

    def generate(self, noise: np.ndarray, class_labels=None, steps: int = 1, guidance=None,
                 encoder_hidden_states=None) -> np.ndarray:
        """Samples from standard normal ``noise``: a sampler graph's baked grid, or ``steps`` uniform jumps of a jump
        graph from ``t_max`` to 0."""
        if self.graph == "sampler":
            return self(noise, class_labels, guidance)
        times = np.linspace(self.metadata["t_max"], 0.0, steps + 1)
        x = noise * np.float32(times[0])
        for t, s in zip(times[:-1], times[1:]):
            x = self.jump(x, t, s, class_labels, guidance, encoder_hidden_states)
        return x

    def sample(self, n: int, seed: int = 0, class_labels=None, steps: int = 1, guidance=None) -> np.ndarray:
        """``n`` samples from noise drawn with ``seed`` (see :meth:`generate`)."""
        noise = np.random.default_rng(seed).standard_normal((n, *self.sample_shape), dtype=np.float32)
        return self.generate(noise, class_labels, steps, guidance)

    def latency_ms(self, batch: int = 64, repeats: int = 10, class_labels=0) -> float:
        """Median wall time of one call on a batch (after one warm-up call)."""
        noise = np.random.default_rng(0).standard_normal((batch, *self.sample_shape), dtype=np.float32)
        labels = class_labels if "class_labels" in self.input_names else None
        run = (lambda: self(noise, labels)) if self.graph == "sampler" else (lambda: self.jump(noise, 0.8, 0.4, labels))
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000)


class OnnxTextToImage:
    """A pipeline folder from ``distill export STUDENT --pipeline`` (``exporters.pipeline``): prompts -> images with
    ``tokenizers``, onnxruntime and numpy.

        pipe = OnnxTextToImage("export/pipeline")
        images = pipe(["a handwritten seven"] * 4, steps=2, seed=0)   # [4, C, H, W] float32 in [-1, 1]
    """

    def __init__(self, folder: str | Path, providers: list[str] | str | None = None, threads: int | None = None):
        from tokenizers import Tokenizer

        folder = Path(folder)
        for part in ("model_index.json", "tokenizer/tokenizer.json", "text_encoder/model.onnx", "unet/model.onnx",
                     "vae_decoder/model.onnx", "vae_decoder/config.json"):
            if not (folder / part).is_file():
                raise FileNotFoundError(f"{folder} is not an exported pipeline: {part} is missing (distill export "
                                        "STUDENT --pipeline writes one)")
        self.folder = folder
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
        settings = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
        pad = settings.get("pad_token") or "<|endoftext|>"
        pad = pad["content"] if isinstance(pad, dict) else pad
        length = int(settings["model_max_length"])
        self.tokenizer.enable_truncation(length)  # longer prompts are cut to the encoder's limit, as diffusers does
        self.tokenizer.enable_padding(length=length, pad_id=self.tokenizer.token_to_id(pad), pad_token=pad)
        self.text_encoder = open_session(folder / "text_encoder" / "model.onnx", providers, threads)
        self.unet = OnnxSampler(folder / "unet" / "model.onnx", providers, threads)
        self.vae_decoder = open_session(folder / "vae_decoder" / "model.onnx", providers, threads)
        vae = json.loads((folder / "vae_decoder" / "config.json").read_text())
        self.scaling_factor, self.shift_factor = float(vae["scaling_factor"]), float(vae.get("shift_factor") or 0.0)

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        if isinstance(prompts, str) or not prompts:
            raise TypeError("prompts must be a non-empty list of strings (wrap one prompt in a list)")
        return np.array([encoding.ids for encoding in self.tokenizer.encode_batch(list(prompts))], dtype=np.int64)

    def encode(self, prompts: list[str]) -> np.ndarray:
        return self.text_encoder.run(None, {"input_ids": self.tokenize(prompts)})[0]

    def __call__(self, prompts: list[str], steps: int = 2, seed: int = 0, guidance=None,
                 noise: np.ndarray | None = None) -> np.ndarray:
        """Images for ``prompts``: ``steps`` flow-map jumps in latent space from standard normal ``noise`` (drawn
        with ``seed`` unless given), decoded by the VAE. ``guidance``: the scale ``w`` of a guidance-distilled
        student (default: the one it was exported with)."""
        states = self.encode(prompts)
        if noise is None:
            noise = np.random.default_rng(seed).standard_normal((len(prompts), *self.unet.sample_shape),
                                                                dtype=np.float32)
        latents = self.unet.generate(noise, steps=steps, guidance=guidance, encoder_hidden_states=states)
        latents = latents / np.float32(self.scaling_factor) + np.float32(self.shift_factor)
        images = self.vae_decoder.run(None, {"latent_sample": latents.astype(np.float32)})[0]
        return np.clip(images, -1.0, 1.0)
