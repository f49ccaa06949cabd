"""A text-to-image student as an ONNX pipeline folder in Optimum's diffusers layout (``distill export STUDENT
--pipeline``), checked stage by stage and end to end against PyTorch.

    folder/model_index.json
    folder/text_encoder/model.onnx + config.json    input_ids [B, L] int64 -> last_hidden_state [B, L, D]
    folder/unet/model.onnx + config.json            the student's jump graph: x, t, s, encoder_hidden_states
                                                    (, guidance) -> x_s (exporters.onnx, its metadata in the model)
    folder/vae_decoder/model.onnx + config.json     latent_sample -> sample (the pipeline divides by scaling_factor)
    folder/tokenizer/                               the pipeline's tokenizer, plus tokenizer.json for ``tokenizers``
    folder/scheduler/scheduler_config.json          the teacher's scheduler (the flow-map grid is in unet/config.json)

``exporters.runtime.OnnxTextToImage`` runs it from prompts to images with onnxruntime, numpy and ``tokenizers``.
Optimum's ``ORTStableDiffusionPipeline`` reads the same layout but cannot run this ``unet``: it calls
``unet(sample, timestep, encoder_hidden_states)`` for a noise prediction that a stock scheduler then steps, where
the flow-map jump takes two canonical times and returns the next state itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from .onnx import OnnxExportConfig, export_onnx, torchscript_export
from .report import side_by_side_ms

TOLERANCE = 1e-4  # relative error of every stage and of the whole pipeline, fp32


class TextEncoderGraph(nn.Module):
    """``input_ids -> last_hidden_state``: what ``StableDiffusionPipeline.encode_prompt`` takes (no clip skip)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


class VaeDecoderGraph(nn.Module):
    """``latent_sample -> sample``, Optimum's ``vae_decoder`` (scaling is the caller's)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample).sample


def relative_error(ours, reference) -> float:
    ours, reference = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


def _export_module(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torchscript_export(module.eval(), inputs, path, output)


def export_pipeline(student, folder: str | Path, steps: list[int] | tuple[int, ...] = (1, 2, 4), batch: int = 8,
                    source: str = "") -> dict:
    """Write the pipeline folder for a text-to-image ``student``, then check it: each stage on the same inputs, and
    prompts -> images end to end at each of ``steps`` from the same noise, with the latency of the whole pipeline
    beside eager PyTorch. A stage over :data:`TOLERANCE` fails with a one-line error. Returns the report."""
    from distill.solvers import time_grid

    from .runtime import OnnxTextToImage

    parts = getattr(getattr(student, "base", None), "parts", None)
    if parts is None or parts.family not in ("StableDiffusionPipeline", "LatentConsistencyModelPipeline"):
        raise ValueError("distill export --pipeline takes a student of an SD1.5-style text-to-image pipeline "
                         "(one text encoder, a VAE, a UNet); export other students without --pipeline")
    pipeline, folder = parts.pipeline, Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    student = student.merged().eval().requires_grad_(False)
    metadata = export_onnx(student, folder / "unet" / "model.onnx", OnnxExportConfig(graph="jump"), source)
    grids = {str(k): time_grid(student, k).tolist() for k in steps}
    (folder / "unet" / "config.json").write_text(json.dumps({**metadata, "grids": grids}, indent=2))

    prompts = student.prompt_set("held_out").prompts[:batch]
    ids = pipeline.tokenizer(prompts, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
    _export_module(TextEncoderGraph(pipeline.text_encoder), {"input_ids": ids}, "last_hidden_state",
                   folder / "text_encoder" / "model.onnx")
    pipeline.text_encoder.config.to_json_file(folder / "text_encoder" / "config.json")
    latents = torch.randn(batch, *student.sample_shape, generator=torch.Generator().manual_seed(3))
    _export_module(VaeDecoderGraph(pipeline.vae), {"latent_sample": latents}, "sample",
                   folder / "vae_decoder" / "model.onnx")
    pipeline.vae.to_json_file(folder / "vae_decoder" / "config.json")
    write_tokenizer(pipeline.tokenizer, folder / "tokenizer")
    pipeline.scheduler.save_pretrained(folder / "scheduler")
    onnx = ["onnxruntime", "model.onnx"]
    index = {"_class_name": type(pipeline).__name__, "_exported_by": "distill export --pipeline",
             "text_encoder": onnx, "unet": onnx, "vae_decoder": onnx,
             "tokenizer": ["transformers", type(pipeline.tokenizer).__name__],
             "scheduler": ["diffusers", type(pipeline.scheduler).__name__]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return check_pipeline(student, OnnxTextToImage(folder), prompts, ids, latents, steps)


def write_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer as the pipeline saves it, plus ``tokenizer.json`` (its fast form) that ``tokenizers`` reads."""
    from transformers import CLIPTokenizerFast

    tokenizer.save_pretrained(folder)
    CLIPTokenizerFast.from_pretrained(folder).save_pretrained(folder)


def check_pipeline(student, runtime, prompts: list[str], ids: torch.Tensor, latents: torch.Tensor,
                   steps) -> dict:
    """Stage-by-stage and end-to-end relative errors against the PyTorch student, and the whole pipeline's latency
    beside eager PyTorch (interleaved, median of three), on ``prompts``."""
    from distill.conditions import with_scale
    from distill.solvers import sample

    pipeline = student.base.parts.pipeline
    with torch.no_grad():
        states = student.encode_prompts(prompts)
        errors = {"tokenizer": float((torch.as_tensor(runtime.tokenize(prompts)) != ids).any()),
                  "text_encoder": relative_error(runtime.encode(prompts), states),
                  "vae_decoder": relative_error(runtime.vae_decoder.run(None, {"latent_sample": latents.numpy()})[0],
                                                pipeline.vae.decode(latents).sample)}
    noise = torch.randn(len(prompts), *student.sample_shape, generator=torch.Generator().manual_seed(5))
    guidance = student.default_guidance if student.guidance_conditioned else None
    cond = states if guidance is None else with_scale(states, guidance)

    def eager(k: int) -> torch.Tensor:
        with torch.no_grad():
            return student.decode(sample(student, noise, steps=k, cond=cond))

    rows = []
    for k in steps:
        error = relative_error(runtime(prompts, steps=k, noise=noise.numpy()), eager(k))
        ms = side_by_side_ms({"onnx": lambda k=k: runtime(prompts, steps=k, noise=noise.numpy()),
                              "eager": lambda k=k: eager(k)}, repeats=3)
        rows.append({"steps": k, "rel_err": error, "onnx_ms": ms["onnx"], "eager_ms": ms["eager"]})
    errors["unet (end to end)"] = max(row["rel_err"] for row in rows)
    failed = {stage: e for stage, e in errors.items() if e > TOLERANCE}
    if failed:
        stage, e = next(iter(failed.items()))
        raise ValueError(f"the exported pipeline's {stage} disagrees with the PyTorch student (relative error "
                         f"{e:.2e} > {TOLERANCE}); re-export it, and report a bug if it persists")
    return {"folder": str(runtime.folder), "prompts": len(prompts), "stage_errors": errors, "rows": rows}
