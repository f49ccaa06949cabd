"""diffusers models and schedulers as canonical velocity fields.

The scheduler config decides the path and the prediction type (``Parameterization``); a small adapter per model
class decides how the network is called. diffusers itself is imported only when a model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..conventions import DiscreteVPSchedule, FlowMatchSchedule, Parameterization, VESchedule
from .base import NetworkTeacher

DDPM_FAMILY = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")
SUPPORTED_SCHEDULERS = (*DDPM_FAMILY, "EDMEulerScheduler", "FlowMatchEulerDiscreteScheduler")


def parameterization_from_scheduler(class_name: str, config: dict) -> Parameterization:
    """The path and prediction type a diffusers scheduler config describes.

    DDPM-family schedulers share the beta table the model was trained on (the sampler does not change the model);
    ``EDMEulerScheduler`` is EDM's VE path with its preconditioning; ``FlowMatchEulerDiscreteScheduler`` (and
    ``DPMSolverMultistepScheduler`` with flow sigmas) is flow matching.
    """
    prediction = config.get("prediction_type", "epsilon")
    T = int(config.get("num_train_timesteps", 1000))
    if class_name in DDPM_FAMILY:
        if prediction == "flow_prediction" or config.get("use_flow_sigmas"):
            return Parameterization(FlowMatchSchedule(float(config.get("flow_shift", 1.0)), T), "flow_prediction")
        schedule = DiscreteVPSchedule.from_betas(
            beta_schedule=config.get("beta_schedule", "linear"),
            beta_start=float(config.get("beta_start", 0.0001)),
            beta_end=float(config.get("beta_end", 0.02)),
            num_train_timesteps=T,
            rescale_betas_zero_snr=bool(config.get("rescale_betas_zero_snr", False)),
            trained_betas=config.get("trained_betas"),
            spacing=config.get("timestep_spacing", "leading"),
            steps_offset=int(config.get("steps_offset", 0)),
            final_alpha_one=bool(config.get("set_alpha_to_one", True)),
        )
        return Parameterization(schedule, prediction)
    if class_name == "EDMEulerScheduler":
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"EDMEulerScheduler prediction_type must be epsilon or v_prediction, got {prediction!r}")
        schedule = VESchedule(float(config.get("sigma_min", 0.002)), float(config.get("sigma_max", 80.0)),
                              float(config.get("rho", 7.0)))
        return Parameterization(schedule, "edm" if prediction == "epsilon" else "edm_v",
                                float(config.get("sigma_data", 0.5)))
    if class_name == "FlowMatchEulerDiscreteScheduler":
        if config.get("invert_sigmas"):
            raise ValueError("FlowMatchEulerDiscreteScheduler with invert_sigmas=True is not supported")
        dynamic = bool(config.get("use_dynamic_shifting", False))
        schedule = FlowMatchSchedule(float(config.get("shift", 1.0)), T, dynamic)
        return Parameterization(schedule, "flow_prediction")
    raise ValueError(
        f"unsupported scheduler class {class_name!r}; supported: {', '.join(SUPPORTED_SCHEDULERS)}"
    )


# ------------------------------------------------------------------------------------------------------------
# Model adapters: how each diffusers model class is called on (native input, timestep, cond).
# ------------------------------------------------------------------------------------------------------------
class ModelAdapter:
    """Calls one diffusers model class. ``state_channels`` is the channel count of the [B, C, H, W] state."""

    def __init__(self, model: nn.Module):
        self.model_class = type(model).__name__
        self.config = model.config

    @property
    def state_channels(self) -> int:
        return int(self.config.in_channels)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return int(getattr(self.config, "patch_size", None) or 1)

    def check_state(self, x: Tensor) -> None:
        c, m = self.state_channels, self.multiple
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % m or x.shape[3] % m:
            where = f" with H and W multiples of {m}" if m > 1 else ""
            raise ValueError(f"{self.model_class} teacher expects x of shape [B, {c}, H, W]{where}, "
                             f"got {list(x.shape)}")

    def __call__(self, model: nn.Module, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        raise NotImplementedError


def _require(cond, what: str, model_class: str):
    if cond is None:
        raise ValueError(f"{model_class} teacher needs cond = {what}")
    return cond


def _cond_kwargs(cond, tensor_key: str, model_class: str, what: str) -> dict:
    """A tensor ``cond`` becomes ``{tensor_key: cond}``; a dict passes through as keyword arguments."""
    cond = _require(cond, what, model_class)
    return dict(cond) if isinstance(cond, dict) else {tensor_key: cond}


class UNet2DAdapter(ModelAdapter):
    """``UNet2DModel``: unconditional, or class-conditional with ``cond`` = class labels [B]."""

    def __call__(self, model, x_in, timestep, cond):
        conditional = self.config.num_class_embeds is not None or self.config.class_embed_type is not None
        if conditional:
            _require(cond, "class labels [B] (this UNet2DModel is class-conditional)", self.model_class)
        elif cond is not None:
            raise ValueError("this UNet2DModel is unconditional: call velocity without cond")
        return model(x_in, timestep, class_labels=cond).sample


class UNet2DConditionAdapter(ModelAdapter):
    """``UNet2DConditionModel``: ``cond`` = encoder hidden states [B, L, D], or a dict of forward kwargs."""

    def __call__(self, model, x_in, timestep, cond):
        kwargs = _cond_kwargs(cond, "encoder_hidden_states", self.model_class, "encoder hidden states [B, L, D]")
        return model(x_in, timestep, **kwargs).sample


class DiTAdapter(ModelAdapter):
    """``DiTTransformer2DModel``: ``cond`` = class labels [B]; a learned-sigma half of the output is dropped."""

    def __call__(self, model, x_in, timestep, cond):
        cond = _require(cond, "class labels [B]", self.model_class)
        out = model(x_in, timestep=timestep, class_labels=cond).sample
        return out[:, : x_in.shape[1]]


class SD3Adapter(ModelAdapter):
    """``SD3Transformer2DModel``: ``cond`` = dict(encoder_hidden_states [B, L, D], pooled_projections [B, P])."""

    def __call__(self, model, x_in, timestep, cond):
        kwargs = _cond_kwargs(cond, "encoder_hidden_states", self.model_class,
                              "dict(encoder_hidden_states=[B, L, D], pooled_projections=[B, P])")
        return model(hidden_states=x_in, timestep=timestep, **kwargs).sample


class FluxAdapter(ModelAdapter):
    """``FluxTransformer2DModel`` on an unpacked latent [B, C, H, W] (C = in_channels / 4, H and W even).

    ``cond`` = dict(encoder_hidden_states [B, L, D], pooled_projections [B, P], optional txt_ids [L, 3], and
    guidance [B] or a number for guidance-embedded models). As FluxPipeline, latents are packed into 2x2 patches
    with image ids, and the transformer gets ``timestep / 1000`` (it multiplies by 1000 itself).
    """

    @property
    def state_channels(self) -> int:
        return int(self.config.in_channels) // 4

    @property
    def multiple(self) -> int:
        return 2

    def __call__(self, model, x_in, timestep, cond):
        kwargs = _cond_kwargs(cond, "encoder_hidden_states", self.model_class,
                              "dict(encoder_hidden_states=..., pooled_projections=..., [guidance=...])")
        B, C, H, W = x_in.shape
        packed = x_in.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)
        img_ids = torch.zeros(H // 2, W // 2, 3, device=x_in.device, dtype=x_in.dtype)
        img_ids[..., 1] += torch.arange(H // 2, device=x_in.device, dtype=x_in.dtype)[:, None]
        img_ids[..., 2] += torch.arange(W // 2, device=x_in.device, dtype=x_in.dtype)[None, :]
        text = kwargs["encoder_hidden_states"]
        kwargs.setdefault("txt_ids", torch.zeros(text.shape[1], 3, device=x_in.device, dtype=x_in.dtype))
        if self.config.guidance_embeds:
            if "guidance" not in kwargs:
                raise ValueError("this FluxTransformer2DModel embeds guidance: pass cond['guidance'] (e.g. 3.5)")
            kwargs["guidance"] = torch.as_tensor(kwargs["guidance"], dtype=x_in.dtype, device=x_in.device).expand(B)
        else:
            kwargs.pop("guidance", None)
        out = model(hidden_states=packed, timestep=timestep / 1000, img_ids=img_ids.reshape(-1, 3), **kwargs).sample
        return out.view(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


MODEL_ADAPTERS: dict[str, type[ModelAdapter]] = {
    "UNet2DModel": UNet2DAdapter,
    "UNet2DConditionModel": UNet2DConditionAdapter,
    "DiTTransformer2DModel": DiTAdapter,
    "SD3Transformer2DModel": SD3Adapter,
    "FluxTransformer2DModel": FluxAdapter,
}


def adapter_for(model: nn.Module) -> ModelAdapter:
    name = type(model).__name__
    if name not in MODEL_ADAPTERS:
        raise ValueError(f"unsupported model class {name!r}; supported: {', '.join(MODEL_ADAPTERS)}")
    return MODEL_ADAPTERS[name](model)


# ------------------------------------------------------------------------------------------------------------
# The teacher
# ------------------------------------------------------------------------------------------------------------
class DiffusersTeacher(NetworkTeacher):
    """A diffusers denoiser plus its scheduler config, as a canonical velocity field.

    Args:
        model: a ``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel``, ``SD3Transformer2DModel`` or
            ``FluxTransformer2DModel``; it is frozen and put in eval mode.
        scheduler: a diffusers scheduler instance, or ``(class_name, config_dict)``.
        prediction_type: overrides the scheduler config's prediction type.

    The state is the (latent) image [B, C, H, W] in canonical coordinates; ``cond`` is what the model class needs
    (see its adapter). ``sample_shape`` is the model's configured size when it has one.
    """

    def __init__(self, model: nn.Module, scheduler, prediction_type: str | None = None):
        class_name, config = _scheduler_class_and_config(scheduler)
        if prediction_type is not None:
            config = {**config, "prediction_type": prediction_type}
        adapter = adapter_for(model)
        super().__init__(parameterization_from_scheduler(class_name, config))
        self.model = model.eval().requires_grad_(False)
        self.adapter = adapter
        self.scheduler_class, self.scheduler_config = class_name, config
        size = getattr(model.config, "sample_size", None)
        if isinstance(size, int):
            size = (size, size)
        multiplier = 2 if isinstance(adapter, FluxAdapter) else 1
        self.sample_shape = None if size is None else (adapter.state_channels, size[0] * multiplier,
                                                       size[1] * multiplier)

    def check_state(self, x: Tensor) -> None:
        self.adapter.check_state(x)  # any resolution the network accepts, not only sample_size

    @property
    def component(self) -> str:
        """The denoiser's folder in a pipeline: ``unet`` or ``transformer``."""
        return "unet" if "UNet" in self.adapter.model_class else "transformer"

    @property
    def network(self) -> nn.Module:
        return self.model

    def call_network(self, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        dtype = self.model.dtype
        return self.adapter(self.model, x_in.to(dtype), timestep.to(torch.float32).to(x_in.device), cond)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a diffusers pipeline folder (``model_index.json``, the model, ``scheduler/``) that
        :meth:`from_pretrained` and diffusers itself load (``DDPMPipeline`` for a ``UNet2DModel``)."""
        import diffusers

        folder = Path(folder)
        component = self.component
        scheduler = getattr(diffusers, self.scheduler_class).from_config(self.scheduler_config)
        self.model.save_pretrained(folder / component)
        scheduler.save_pretrained(folder / "scheduler")
        pipeline = "DDPMPipeline" if self.adapter.model_class == "UNet2DModel" else "DiffusionPipeline"
        index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
                 component: ["diffusers", self.adapter.model_class], "scheduler": ["diffusers", self.scheduler_class]}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, source: str | Path, *, torch_dtype: torch.dtype | None = None,
                        prediction_type: str | None = None) -> DiffusersTeacher:
        """Load from a pipeline folder (``model_index.json``), a model folder (``config.json`` plus a scheduler config
        beside it, in ``scheduler/`` or in the parent's ``scheduler/``), or a Hugging Face hub id."""
        folder = _local_folder(source)
        model_dir, scheduler_file = _locate_model_and_scheduler(folder)
        model = _load_model(model_dir, torch_dtype)
        scheduler_config = json.loads(scheduler_file.read_text())
        class_name = scheduler_config.pop("_class_name", None)
        if class_name is None:
            raise ValueError(f"{scheduler_file} has no _class_name: it is not a diffusers scheduler config")
        return cls(model, (class_name, scheduler_config), prediction_type)


def _scheduler_class_and_config(scheduler) -> tuple[str, dict]:
    if isinstance(scheduler, tuple) and len(scheduler) == 2 and isinstance(scheduler[1], dict):
        class_name, config = str(scheduler[0]), scheduler[1]
    elif getattr(scheduler, "config", None) is not None:
        class_name, config = type(scheduler).__name__, scheduler.config
    else:
        raise TypeError(
            f"scheduler must be a diffusers scheduler or (class_name, config), got {type(scheduler).__name__}"
        )
    return class_name, {k: v for k, v in dict(config).items() if not k.startswith("_")}  # drop _diffusers_version


DENOISER_NAMES = ("unet", "transformer")


def _local_folder(source: str | Path) -> Path:
    folder = Path(source).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file; pass the diffusers pipeline or model folder that contains it")
        return folder
    text = str(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no such folder: {folder}")
    try:  # a hub id such as "google/ddpm-cifar10-32"
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as error:  # offline, unknown repo, ...
        raise FileNotFoundError(
            f"{text!r} is not a local folder and could not be fetched from the hub ({type(error).__name__}); "
            "download it first or pass a local path"
        ) from error


def _locate_model_and_scheduler(folder: Path) -> tuple[Path, Path]:
    index = folder / "model_index.json"
    if index.exists():
        components = json.loads(index.read_text())
        names = [n for n in DENOISER_NAMES if n in components and components[n] and components[n][1] in MODEL_ADAPTERS]
        if not names:
            found = {k: v[1] for k, v in components.items() if isinstance(v, list) and len(v) == 2}
            raise ValueError(
                f"pipeline {folder} has no supported denoiser (components: {found}); "
                f"supported model classes: {', '.join(MODEL_ADAPTERS)}"
            )
        model_dir, scheduler_file = folder / names[0], folder / "scheduler" / "scheduler_config.json"
    elif (folder / "config.json").exists():
        model_dir = folder
        candidates = [folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                      folder.parent / "scheduler" / "scheduler_config.json"]
        scheduler_file = next((c for c in candidates if c.exists()), candidates[0])
    else:
        raise FileNotFoundError(
            f"{folder} holds no diffusers model: expected model_index.json (a pipeline) or config.json (a model)"
        )
    if not scheduler_file.exists():
        raise FileNotFoundError(
            f"no scheduler config for the model in {model_dir}: put scheduler_config.json beside it (or in "
            "scheduler/), or build DiffusersTeacher(model, scheduler) in memory"
        )
    return model_dir, scheduler_file


def _load_model(model_dir: Path, torch_dtype: torch.dtype | None) -> nn.Module:
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{model_dir} has no config.json: it is not a diffusers model folder")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name not in MODEL_ADAPTERS:
        raise ValueError(
            f"unsupported model class {class_name!r} in {config_file}; supported: {', '.join(MODEL_ADAPTERS)}"
        )
    import diffusers

    try:
        return getattr(diffusers, class_name).from_pretrained(model_dir, torch_dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"could not load {class_name} from {model_dir}: {error}") from error
