"""Text-to-image latent pipelines (SD1.5, SDXL, SD3, FLUX, LCM) as teachers: the denoiser is the velocity field, the
pipeline's own text encoders turn prompts into its condition, and its VAE decodes latents.

The state is the (canonical) latent; at ``t = 0`` canonical and native latents coincide, so ``decode`` applies the
VAE exactly as the pipeline does. Prompts are encoded by the pipeline's own ``encode_prompt`` (one function per
pipeline family in ``PROMPT_ENCODINGS``), once: the embeddings are cached in memory and on disk, keyed by a hash of
the text encoders' weights and the tokenizers' vocabularies. The empty prompt is the unconditional branch of
classifier-free guidance (zeros where the pipeline forces them, as SDXL does).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..conditions import map_condition
from .diffusers_teacher import MODEL_ADAPTERS, DiffusersTeacher


# ------------------------------------------------------------------------------------------------------------
# Prompt encodings: pipeline family -> (pipeline, prompts, device) -> the denoiser's condition, batched
# ------------------------------------------------------------------------------------------------------------
def encode_sd(pipeline, prompts: list[str], device) -> Tensor:
    """SD1.5 / LCM: the text encoder's last hidden state [B, L, D] (``StableDiffusionPipeline.encode_prompt``)."""
    return pipeline.encode_prompt(prompts, device, 1, False)[0]


def encode_sdxl(pipeline, prompts: list[str], device) -> dict:
    """SDXL: both encoders' penultimate states [B, L, D1 + D2], the pooled projection and the size ids the pipeline
    adds at its default resolution (original = target size, no crop)."""
    embeds, _, pooled, _ = pipeline.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    size = pipeline.default_sample_size * pipeline.vae_scale_factor
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=embeds.dtype, device=device).expand(len(prompts), 6)
    return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def encode_sd3(pipeline, prompts: list[str], device) -> dict:
    """SD3: the joint CLIP + T5 sequence and the pooled CLIP projections."""
    embeds, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale: the distilled-guidance input of FLUX-dev


def encode_flux(pipeline, prompts: list[str], device) -> dict:
    """FLUX: T5 states and the pooled CLIP projection; a guidance-embedded FLUX also gets its guidance input
    (``FLUX_GUIDANCE`` for every example; change ``cond['guidance']`` to sample at another)."""
    embeds, pooled, _ = pipeline.encode_prompt(prompts, None, device=device, num_images_per_prompt=1)
    cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    if pipeline.transformer.config.guidance_embeds:
        cond["guidance"] = torch.full((len(prompts),), FLUX_GUIDANCE, dtype=embeds.dtype, device=device)
    return cond


PROMPT_ENCODINGS: dict[str, Callable] = {
    "StableDiffusionPipeline": encode_sd,
    "LatentConsistencyModelPipeline": encode_sd,
    "StableDiffusionXLPipeline": encode_sdxl,
    "StableDiffusion3Pipeline": encode_sd3,
    "FluxPipeline": encode_flux,
}


def is_text_to_image_folder(folder: Path) -> bool:
    """A pipeline folder with a text encoder and a VAE beside its denoiser."""
    index = folder / "model_index.json"
    if not index.exists():
        return False
    components = json.loads(index.read_text())
    return bool(components.get("text_encoder")) and bool(components.get("vae"))


# ------------------------------------------------------------------------------------------------------------
# The pipeline's parts besides the denoiser
# ------------------------------------------------------------------------------------------------------------
class PipelineParts:
    """The tokenizers, text encoders and VAE of a pipeline, frozen and shared: copies of the teacher (a fake-score
    network, a student) share them rather than duplicate them, and they stay outside every ``state_dict``."""

    def __init__(self, pipeline):
        name = type(pipeline).__name__
        if name not in PROMPT_ENCODINGS:
            raise ValueError(f"unsupported text-to-image pipeline {name!r}; supported: {', '.join(PROMPT_ENCODINGS)}")
        self.pipeline, self.family = pipeline, name
        for component in self.encoders + [pipeline.vae]:
            component.eval().requires_grad_(False)
        self.memory: dict[str, dict[str, Tensor]] = {}  # prompt -> flattened condition row
        self._key: str | None = None

    def __deepcopy__(self, memo):
        return self

    @property
    def encoders(self) -> list[nn.Module]:
        return [module for name, module in self.pipeline.components.items()
                if name.startswith("text_encoder") and module is not None]

    @property
    def key(self) -> str:
        """Hash of the text encoders' weights, the tokenizers' vocabularies and the pipeline family."""
        if self._key is None:
            from ..data import fingerprint

            tokenizers = [(name, sorted(tok.get_vocab().items()), tok.model_max_length)
                          for name, tok in sorted(self.pipeline.components.items())
                          if name.startswith("tokenizer") and tok is not None]
            vocab = hashlib.sha256(repr(tokenizers).encode()).hexdigest()
            self._key = fingerprint(nn.ModuleList(self.encoders), self.family, vocab)
        return self._key

    # --- prompts -> condition ------------------------------------------------------------------------------
    def encode(self, prompts: list[str], device=None, batch_size: int = 256):
        """The denoiser's condition for ``prompts`` (a tensor or a dict of them, batch first), each prompt encoded
        once per text encoder: from memory, the disk cache, or the pipeline's own ``encode_prompt``."""
        check_prompts(prompts)
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.memory]
        if missing:
            wanted = set(missing)
            self.memory.update({p: row for p, row in self._read_disk().items() if p in wanted})
            missing = [p for p in missing if p not in self.memory]
        if missing:
            encode = PROMPT_ENCODINGS[self.family]
            with torch.no_grad():
                for i in range(0, len(missing), batch_size):
                    chunk = missing[i:i + batch_size]
                    flat = flatten(encode(self.pipeline, chunk, self.encoders[0].device))
                    for j, prompt in enumerate(chunk):
                        self.memory[prompt] = {k: v[j].detach().cpu().contiguous() for k, v in flat.items()}
            self._write_disk()
        rows = [self.memory[p] for p in prompts]
        batch = {k: torch.stack([row[k] for row in rows]) for k in rows[0]}
        return map_condition(lambda leaf: leaf.to(device) if device is not None else leaf, unflatten(batch))

    def null_condition(self):
        """The unconditional branch: the empty prompt's condition [1, ...] (zeros where the pipeline forces them)."""
        null = self.encode([""])
        if getattr(self.pipeline.config, "force_zeros_for_empty_prompt", False):
            null = dict(null)
            null["encoder_hidden_states"] = torch.zeros_like(null["encoder_hidden_states"])
            null["added_cond_kwargs"] = {**null["added_cond_kwargs"],
                                         "text_embeds": torch.zeros_like(null["added_cond_kwargs"]["text_embeds"])}
        return null

    def _cache_file(self) -> Path:
        from ..data import cache_dir

        return cache_dir() / "prompt_embeddings" / f"{self.key}.safetensors"

    def _read_disk(self) -> dict[str, dict[str, Tensor]]:
        from safetensors import safe_open

        path = self._cache_file()
        if not path.exists():
            return {}
        try:
            with safe_open(str(path), "pt") as stored:
                prompts = json.loads(stored.metadata()["prompts"])
                tensors = {name: stored.get_tensor(name) for name in stored.keys()}  # noqa: SIM118 (not iterable)
        except Exception:  # a damaged cache file is recomputed, never trusted
            return {}
        return {p: {k.split("/", 1)[1]: v[i] for k, v in tensors.items()} for i, p in enumerate(prompts)}

    def _write_disk(self) -> None:
        """Every prompt in memory, in one file written atomically (a rename of a complete file)."""
        from safetensors.torch import save_file

        prompts = list(self.memory)
        keys = list(self.memory[prompts[0]])
        tensors = {f"row/{k}": torch.stack([self.memory[p][k] for p in prompts]) for k in keys}
        path = self._cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"prompts": json.dumps(prompts)})
        os.replace(tmp, path)

    # --- latents -> images ---------------------------------------------------------------------------------
    def decode(self, latents: Tensor, batch_size: int = 250) -> Tensor:
        """Images in [-1, 1] from clean latents, as the pipeline decodes them (``/ scaling_factor + shift_factor``)."""
        vae = self.pipeline.vae
        scale, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
        parameter = next(vae.parameters())
        with torch.no_grad():
            parts = [vae.decode((chunk.to(parameter) / scale) + shift).sample.clamp(-1, 1)
                     for chunk in latents.split(batch_size)]
        return torch.cat(parts).to(latents.dtype)


def check_components(folder: Path, index: dict) -> None:
    """Every model component ``model_index.json`` names has its subfolder (diffusers' own error names none)."""
    for name, spec in index.items():
        if isinstance(spec, list) and spec[0] is not None and not (folder / name).is_dir():
            raise ValueError(f"the pipeline folder {folder} lacks {name}/ (model_index.json names a {spec[1]}): copy "
                             f"the pipeline's {name}/ folder back, or set \"{name}\": [null, null] to drop it")


def check_latent_channels(vae, denoiser) -> None:
    """The VAE's latents are what the denoiser takes (FLUX packs 2x2 latent patches into its channels)."""
    latent = vae.config.latent_channels
    expected = denoiser.config.in_channels // (4 if type(denoiser).__name__ == "FluxTransformer2DModel" else 1)
    if latent != expected:
        raise ValueError(f"the VAE makes {latent}-channel latents but the {type(denoiser).__name__} takes {expected}: "
                         "the vae/ and the denoiser come from different pipelines; put back the pipeline's own VAE")


def check_prompts(prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts \
            or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of strings (wrap one prompt in a list)")


def flatten(cond, prefix: str = "") -> dict[str, Tensor]:
    """A condition as ``{"a.b": tensor}`` (a bare tensor is ``{"": tensor}``)."""
    if not isinstance(cond, dict):
        return {prefix: cond}
    out = {}
    for key, value in cond.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def unflatten(flat: dict[str, Tensor]):
    if set(flat) == {""}:
        return flat[""]
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


# ------------------------------------------------------------------------------------------------------------
# The teacher
# ------------------------------------------------------------------------------------------------------------
class TextToImageTeacher(DiffusersTeacher):
    """A diffusers text-to-image pipeline's denoiser as a canonical velocity field in latent space, with the
    pipeline's prompt encoding and VAE decoding (:class:`PipelineParts`).

    ``cond`` is what the denoiser takes (see its model adapter); :meth:`encode_prompts` makes it from prompts.
    """

    def __init__(self, pipeline, prediction_type: str | None = None, vocabulary: dict | None = None):
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        if denoiser is None or type(denoiser).__name__ not in MODEL_ADAPTERS:
            raise ValueError(f"{type(pipeline).__name__} has no supported denoiser; supported model classes: "
                             f"{', '.join(MODEL_ADAPTERS)}")
        check_latent_channels(pipeline.vae, denoiser)
        parts = PipelineParts(pipeline)
        super().__init__(denoiser, pipeline.scheduler, prediction_type)
        self.parts = parts
        self.vocabulary = vocabulary  # the folder's prompts.json (distill.prompts.vocabulary_prompts), if any

    def prompt_set(self, split: str = "train"):
        """The prompts this pipeline folder brings (``prompts.json``) for ``split`` (``train`` or ``held_out``)."""
        from ..prompts import vocabulary_prompts

        if self.vocabulary is None:
            raise ValueError("this pipeline folder has no prompts.json: give a prompt dataset (objective.prompts= / "
                             "eval.prompts= / --prompts: a .txt with one prompt per line, .csv, .jsonl or an "
                             "image-caption folder)")
        return vocabulary_prompts(self.vocabulary, split)

    def encode_prompts(self, prompts: list[str], device=None):
        return self.parts.encode(prompts, device)

    def null_condition(self):
        return self.parts.null_condition()

    def decode(self, x: Tensor) -> Tensor:
        return self.parts.decode(x)

    def save_pretrained(self, folder: str | Path) -> Path:
        """The whole pipeline folder (what :meth:`from_pretrained` and diffusers load), with this teacher's own
        denoiser weights: a student's copy saves as a pipeline its users can open."""
        folder = Path(folder)
        from ..prompts import VOCABULARY_FILE

        self.parts.pipeline.save_pretrained(folder)
        self.model.save_pretrained(folder / self.component)
        if self.vocabulary is not None:
            (folder / VOCABULARY_FILE).write_text(json.dumps(self.vocabulary, indent=2))
        return folder

    def save_lora_weights(self, folder: str | Path, settings) -> Path:
        """The LoRA adapters injected into this teacher's denoiser (``distill.lora``) as diffusers' pipeline LoRA file
        (``pytorch_lora_weights.safetensors``, written by the pipeline class's own ``save_lora_weights``), which
        ``pipe.load_lora_weights(folder)`` loads onto the teacher's pipeline; ``settings``: their
        ``LoraSettings`` (rank, alpha and targets ride in the file's metadata)."""
        from peft import get_peft_model_state_dict

        layers = {f"{self.component}_lora_layers": get_peft_model_state_dict(self.model),
                  f"{self.component}_lora_adapter_metadata": settings.peft_config().to_dict()}
        type(self.parts.pipeline).save_lora_weights(str(folder), **layers)
        return Path(folder)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, torch_dtype: torch.dtype | None = None,
                        prediction_type: str | None = None) -> TextToImageTeacher:
        """Load a text-to-image pipeline folder with diffusers' own ``DiffusionPipeline.from_pretrained`` (and its
        ``prompts.json``, when it has one)."""
        from diffusers import DiffusionPipeline

        from ..prompts import VOCABULARY_FILE

        folder = Path(source)
        index = json.loads((folder / "model_index.json").read_text())
        check_components(folder, index)
        no_checker = {"safety_checker": None} if "safety_checker" in index else {}  # SD folders name one
        try:
            pipeline = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch_dtype, **no_checker)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"could not load the pipeline in {folder}: {str(error).splitlines()[0]}") from error
        vocabulary = folder / VOCABULARY_FILE
        return cls(pipeline, prediction_type, json.loads(vocabulary.read_text()) if vocabulary.exists() else None)
