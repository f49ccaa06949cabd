"""LoRA students: the teacher's network frozen, PEFT LoRA adapters and the gap embedding trained (issue 7).

    student = distill.FlowMap.from_teacher(teacher)
    add_lora(student, LoraSettings(rank=8))          # only adapters + gap embedding keep requires_grad
    ...train with any objective...
    student.save_pretrained("adapter")               # adapter/: adapter_config.json + adapter_model.safetensors (PEFT)
    student = distill.load_student("adapter", teacher)  # onto a fresh copy of the teacher's network
    merged = merge_lora(student)                     # plain layers again (for export)

The adapter folder is PEFT's own format, so ``peft.PeftModel.from_pretrained(teacher_network, "adapter")`` loads it
onto the original teacher, and so does diffusers' ``model.load_lora_adapter("adapter", prefix="base_model.model",
weight_name="adapter_model.safetensors")`` for models with its PEFT mixin (``UNet2DConditionModel``, the
transformers). Neither carries the gap embedding, which lives beside them in ``gap_embeddings.safetensors``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn

# Default targets by network class. A UNet: each resnet's two convolutions and the projection of the time embedding
# into it, through which the gap embedding acts (at equal size, the best of the adapters measured on the MNIST
# student; README, LoRA). Other networks (the transformers): the attention projections.
UNET_TARGETS = ("conv1", "conv2", "time_emb_proj")
DEFAULT_TARGETS = {"UNet2DModel": UNET_TARGETS, "UNet2DConditionModel": UNET_TARGETS}
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
PEFT_PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained writes
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoraSettings:
    """LoRA adapters: ``rank`` r, ``alpha`` (scale alpha / r; ``None``: alpha = r), ``target_modules`` (module name
    suffixes, PEFT's matching; ``None``: the network's defaults, ``DEFAULT_TARGETS``), ``dropout``."""

    rank: int = 4
    alpha: float | None = None
    target_modules: tuple[str, ...] | None = None
    dropout: float = 0.0

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules:
                raise ValueError("LoRA target_modules is empty: name the layers to adapt (e.g. to_q, conv1)")

    def for_network(self, network: nn.Module) -> LoraSettings:
        """These settings with the targets resolved for ``network`` (its class's defaults when unset)."""
        if self.target_modules is not None:
            return self
        return replace(self, target_modules=DEFAULT_TARGETS.get(type(network).__name__, ATTENTION_TARGETS))

    def as_dict(self) -> dict:
        """The fields, as ``student.json`` records them."""
        return asdict(self)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, target_modules=list(self.target_modules),
                          lora_dropout=self.dropout)


def _check_targets(network: nn.Module, settings: LoraSettings) -> None:
    names = [name for name, _ in network.named_modules()]
    missing = [t for t in settings.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in network.named_modules()
                         if isinstance(m, (nn.Linear, nn.Conv2d))})
        raise ValueError(f"LoRA target module(s) {', '.join(missing)} not found in {type(network).__name__}; "
                         f"its linear and convolution layers end in: {', '.join(leaves)}")


def inject_lora(network: nn.Module, settings: LoraSettings) -> LoraSettings:
    """Add PEFT LoRA layers to ``network``'s target modules (in place); they start at zero (PEFT's B = 0). Returns
    the settings with the targets resolved."""
    from peft import inject_adapter_in_model

    settings = settings.for_network(network)
    _check_targets(network, settings)
    inject_adapter_in_model(settings.peft_config(), network)
    return settings


def add_lora(student: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Inject LoRA adapters into a ``TeacherFlowMap``'s network (in place) and freeze everything else but the
    gap (and guidance) embeddings. The adapters start at zero, so the student's outputs do not change."""
    if student.kind != "from_teacher":
        raise ValueError("LoRA adapts a student built on a teacher's network (FlowMap.from_teacher)")
    student.lora = inject_lora(student.base.network, settings or LoraSettings())
    for name, parameter in student.named_parameters():
        parameter.requires_grad_("lora_" in name or name.startswith(("gap_embeddings.", "guidance_embeddings.")))
    return student


def add_teacher_lora(teacher, settings: LoraSettings | None = None) -> LoraSettings:
    """Inject LoRA adapters into a network teacher (in place) and freeze everything else: fine-tuning a teacher to
    new data (``distill finetune``). Returns the settings with the targets resolved."""
    settings = inject_lora(teacher.network, settings or LoraSettings())
    for name, parameter in teacher.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return settings


def adapter_state(network: nn.Module) -> dict:
    """The adapters' weights under PEFT's saved names (``base_model.model.<module>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(network)
    return {PEFT_PREFIX + k: v.detach().contiguous() for k, v in state.items()}


def write_adapter(network: nn.Module, settings: LoraSettings, folder: Path) -> None:
    """PEFT's adapter folder for ``network``'s adapters: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    settings.peft_config().save_pretrained(str(folder))
    save_file(adapter_state(network), folder / ADAPTER_WEIGHTS)


def read_adapter(network: nn.Module, folder: Path) -> None:
    """Load :func:`write_adapter`'s weights into ``network``'s injected adapters (in place)."""
    from peft import set_peft_model_state_dict

    from .weights import read_safetensors

    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} holds no LoRA adapter ({ADAPTER_WEIGHTS} missing)")
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in read_safetensors(folder / ADAPTER_WEIGHTS).items()}
    result = set_peft_model_state_dict(network, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: the adapter does not fit this teacher (unexpected {unexpected[0]})")


def merge_lora(student: nn.Module) -> nn.Module:
    """Fold the adapters into the layers they adapt (``W + (alpha / r) B A``) and put plain layers back, in place:
    the result has no PEFT modules (what ONNX export and serving want)."""
    merge_network_lora(student.base.network)
    student.lora = None
    return student


def merge_network_lora(network: nn.Module) -> nn.Module:
    """:func:`merge_lora` for a bare network (a fine-tuned teacher's)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(network.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(network.get_submodule(parent_name) if parent_name else network, child, module.get_base_layer())
    return network
