"""Students on a copy of the teacher's network (docs/design.md §2).

``TeacherFlowMap.from_teacher`` copies the teacher's network and adds a zero-initialised embedding of the gap ``t - s``
to its time embedding, so an untrained student is exactly one Euler step of the teacher, and ``F(x, t, t) = v(x, t)``.
The output rule (how ``F`` reads the network's raw output) is the teacher's own here; ``outputs.py`` holds the others.
With ``distill.lora.add_lora`` the network is frozen and PEFT adapters train; such a student saves its adapters only.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ..conditions import split_scale
from ..conventions import per_example
from ..lora import LoraSettings, add_lora, merge_lora, read_adapter, write_adapter
from ..model_info import ModelInfo
from ..nets import sinusoidal_embedding
from ..teachers.base import NetworkTeacher, as_time_batch
from ..weights import load_weights
from .base import FlowMap

# Where each network class embeds time: the gap embedding is added to these modules' outputs.
TIME_EMBEDDINGS = {
    "UNet2DModel": ["time_embedding"],
    "UNet2DConditionModel": ["time_embedding"],
    "SD3Transformer2DModel": ["time_text_embed"],
    "FluxTransformer2DModel": ["time_text_embed"],
    "DiTTransformer2DModel": ["transformer_blocks.*.norm1.emb"],  # every block embeds time itself
    "VelocityMLP": ["net.0"],  # the first layer sees [x, embedding(t)]
}
GAP_WEIGHTS = "gap_embeddings.safetensors"
GUIDANCE_WEIGHTS = "guidance_embeddings.safetensors"
GAP_SCALE = 1000.0  # gaps in [0, 1] span the range of diffusers' timesteps
GUIDANCE_SCALE = 100.0  # guidance scales in [0, 10] span the same range


class ScalarEmbedding(nn.Module):
    """A zero-initialised embedding of one number per example: sinusoidal features of ``scale * value``, then an MLP
    whose last layer starts at zero. A forward hook adds it to a time-embedding module's output, so it changes
    nothing until trained. The student embeds the gap ``t - s`` this way and, when guidance-conditioned, the guidance
    scale ``w`` (docs/methods.md, Guidance)."""

    def __init__(self, out_dim: int, scale: float, frequencies: int = 64):
        super().__init__()
        self.frequencies, self.scale = frequencies, scale
        self.value: Tensor | None = None  # [B], set by the student's call in progress
        self.mlp = nn.Sequential(nn.Linear(frequencies, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, value: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(value * self.scale, self.frequencies))

    def add_to_output(self, module: nn.Module, inputs, output: Tensor) -> Tensor:
        """Forward hook on a time-embedding module. A bound method, so a deep copy of the student hooks its own
        copied embeddings."""
        if self.value is None:
            return output
        weight = self.mlp[0].weight
        return output + self(self.value.to(weight.device, weight.dtype)).to(output.dtype)


def _time_embedding_modules(network: nn.Module) -> list[tuple[str, nn.Module]]:
    name = type(network).__name__
    if name not in TIME_EMBEDDINGS:
        raise ValueError(f"FlowMap.from_teacher does not know where {name} embeds time; supported: "
                         f"{', '.join(TIME_EMBEDDINGS)}")
    modules = dict(network.named_modules())
    found = []
    for pattern in TIME_EMBEDDINGS[name]:
        if "*" in pattern:
            head, tail = pattern.split(".*.")
            found += [(n, m) for n, m in modules.items() if n.startswith(head + ".") and n.endswith("." + tail)
                      and n.count(".") == head.count(".") + tail.count(".") + 2]
        else:
            found.append((pattern, modules[pattern]))
    return found


def _output_dim(module: nn.Module) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no linear layer to size a gap embedding from")
    return linears[-1].out_features


class TeacherFlowMap(FlowMap):
    """A student on a network teacher's copied network (``FlowMap.from_teacher(teacher)``): the teacher's
    parameterisation reads the network, and ``velocity_from_output`` turns its raw output into ``F``."""

    kind = "from_teacher"
    output_rule = "teacher"  # the name student.json and the config record (distill.students.OUTPUT_RULES)
    embeds_gap = True  # False: X(x, t, s) is a DDIM step of the network's prediction (consistency_form.py)

    def __init__(self, teacher: NetworkTeacher):
        if not isinstance(teacher, NetworkTeacher):
            raise TypeError(f"a student on a teacher's network needs a network teacher, got {type(teacher).__name__}")
        super().__init__(t_min=teacher.t_min, t_max=teacher.t_max, sample_shape=teacher.sample_shape,
                         info=teacher.info)
        self.base = teacher.requires_grad_(True)
        self.gap_embeddings = nn.ModuleList()
        self.guidance_embeddings = nn.ModuleList()  # empty unless guidance-conditioned (add_guidance_embedding)
        self.lora: LoraSettings | None = None  # set by distill.lora.add_lora
        self.hooked_modules = [name for name, _ in _time_embedding_modules(teacher.network)]
        if self.embeds_gap:
            self._hook_embeddings(self.gap_embeddings, GAP_SCALE)

    @classmethod
    def from_teacher(cls, teacher: NetworkTeacher) -> TeacherFlowMap:
        """A student equal to one Euler step of ``teacher`` (whose weights are copied, not shared)."""
        return cls(copy.deepcopy(teacher))

    def encode_prompts(self, prompts: list[str], device=None):
        return self.base.encode_prompts(prompts, device)  # a text-to-image teacher's prompt encoding (shared)

    def decode(self, x: Tensor) -> Tensor:
        return self.base.decode(x)  # a latent teacher's VAE

    def prompt_set(self, split: str = "train"):
        return self.base.prompt_set(split)

    def _hook_embeddings(self, embeddings: nn.ModuleList, scale: float) -> None:
        """One zero-initialised :class:`ScalarEmbedding` per time-embedding module, added to its output."""
        modules = dict(self.base.network.named_modules())
        for name in self.hooked_modules:
            embedding = ScalarEmbedding(_output_dim(modules[name]), scale).to(next(self.base.parameters()).device)
            modules[name].register_forward_hook(embedding.add_to_output)
            embeddings.append(embedding)

    def add_guidance_embedding(self, default: float = 1.0) -> TeacherFlowMap:
        """Condition the student on a classifier-free guidance scale ``w`` (in place): a zero-initialised embedding of
        ``w`` beside the gap embedding, so one student serves every scale at one network call per step. ``w`` rides
        in the condition (``distill.conditions.with_scale``); ``default`` is used when a call carries none."""
        if not self.guidance_embeddings:
            self._hook_embeddings(self.guidance_embeddings, GUIDANCE_SCALE)
        self.default_guidance = float(default)
        return self

    @property
    def guidance_conditioned(self) -> bool:
        return bool(self.guidance_embeddings)

    def average_velocity(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None) -> Tensor:
        """``F(x, t, s)``, with ``F(x, t, t) = v_teacher(x, t)`` at initialisation."""
        t = as_time_batch(t, x.shape[0], "FlowMap")
        s = as_time_batch(s, x.shape[0], "FlowMap")
        cond, guidance = split_scale(cond)
        if guidance is not None and not self.guidance_embeddings:
            raise ValueError("this student is not guidance-conditioned: distil it with objective.guidance=[w_min, "
                             "w_max], or guide its teacher instead")
        with self.embedding_inputs(t - s, self.default_guidance if guidance is None else guidance):
            return self.velocity_from_output(self.base(x, t, cond, raw=True), x, t)

    # --- the output rule: how the network's raw output becomes F (one method per output class) -----------------
    def velocity_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``F`` from the network's raw output ``out`` at canonical ``(x, t)``: here the teacher's own conversion
        (``F(x, t, t) = v_teacher`` at initialisation). Linear in ``(x, out)`` at fixed ``t``."""
        return self.base.parameterization.velocity(out, x, t)

    def output_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` read off :meth:`velocity_from_output`, which is linear at fixed ``t``."""
        t = t.to(torch.float64)
        ones, zeros = torch.ones(len(t), 1, dtype=torch.float64), torch.zeros(len(t), 1, dtype=torch.float64)
        a = self.velocity_from_output(zeros, ones, t)[:, 0]
        b = self.velocity_from_output(ones, zeros, t)[:, 0]
        mixed = self.velocity_from_output(2 * ones, 3 * ones, t)[:, 0]
        if not torch.allclose(mixed, 3 * a + 2 * b, rtol=1e-9, atol=1e-12):
            raise ValueError(f"{type(self).__name__}'s output rule is not linear in the network output")
        return a, b

    def merged(self) -> TeacherFlowMap:
        """LoRA adapters folded into the layers they adapt (``distill.lora.merge_lora``): the same function."""
        return merge_lora(self) if self.lora is not None else self

    @contextmanager
    def embedding_inputs(self, gap: Tensor, guidance: Tensor | float | None = None):
        """Within the block, the gap embeddings see ``gap`` [B] and the guidance embeddings ``guidance``."""
        pairs = [(e, gap) for e in self.gap_embeddings]
        if self.guidance_embeddings:
            scale = torch.as_tensor(guidance, dtype=gap.dtype, device=gap.device).expand(gap.shape[0])
            pairs += [(e, scale) for e in self.guidance_embeddings]
        for embedding, value in pairs:
            embedding.value = value
        try:
            yield
        finally:
            for embedding, _ in pairs:
                embedding.value = None

    # --- the exporters' jump: X = p x + q net(c_in x, timestep, gap (, w)) --------------------------------------
    def time_scalars(self, t: Tensor) -> dict[str, Tensor]:
        """The network input scale ``c_in``, its ``timestep`` and ``F = a x + b out``'s coefficients at ``t``."""
        t = t.to(torch.float64)
        c_in, timestep = self.base.parameterization.model_input(torch.ones(len(t), 1, dtype=torch.float64), t)
        a, b = self.output_coefficients(t)
        return {"c_in": c_in[:, 0], "timestep": timestep, "a": a, "b": b}

    def step_scalars(self, time_scalars: dict[str, Tensor], t: Tensor, s: Tensor) -> dict[str, Tensor]:
        """``X = x + (s - t) F = p x + q out`` with ``p = 1 + (s - t) a``, ``q = (s - t) b``."""
        a, b = time_scalars["a"], time_scalars["b"]
        return {"c_in": time_scalars["c_in"], "timestep": time_scalars["timestep"], "p": 1 + (s - t) * a,
                "q": (s - t) * b, "gap": t - s}

    def scalar_jump(self, x: Tensor, scalars: dict[str, Tensor], cond=None, guidance: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        with self.embedding_inputs(scalars["gap"].expand(batch), guidance):
            out = self.base.call_network(x * per_example(scalars["c_in"], x), scalars["timestep"].expand(batch), cond)
        return per_example(scalars["p"], x) * x + per_example(scalars["q"], x) * out.to(x.dtype)

    # --- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """The copied network in its teacher's format (``network/``) plus the gap (and guidance) embeddings; a LoRA
        student writes only PEFT's adapter folder (``adapter_config.json``, ``adapter_model.safetensors``) beside its
        embeddings, and ``student.json`` names the teacher it adapts. A LoRA student of a text-to-image pipeline also
        writes the pipeline's LoRA file (``pytorch_lora_weights.safetensors``: ``pipe.load_lora_weights``)."""
        import json

        from ..teachers.loading import INFO_FILE

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"kind": self.kind, "output": self.output_rule, **self.guidance_spec()}
        if self.lora is not None:  # adapters only: the teacher's weights stay where they are
            write_adapter(self.base.network, self.lora, folder)
            if hasattr(self.base, "save_lora_weights"):  # a pipeline teacher: also diffusers' load_lora_weights file
                self.base.save_lora_weights(folder, self.lora)
            spec = {**spec, "kind": "lora", "lora": self.lora.as_dict()}
        else:
            self.base.save_pretrained(folder / "network")
            (folder / "network" / INFO_FILE).write_text(json.dumps(self.info.to_json(), indent=2))
            spec = {**spec, "hooked_modules": self.hooked_modules}
        self.save_embeddings(folder)
        return self.write_spec(folder, spec)

    def save_embeddings(self, folder: Path) -> None:
        from safetensors.torch import save_file

        for embeddings, file in ((self.gap_embeddings, GAP_WEIGHTS), (self.guidance_embeddings, GUIDANCE_WEIGHTS)):
            if embeddings:
                save_file({k: v.contiguous() for k, v in embeddings.state_dict().items()}, folder / file)

    def guidance_spec(self) -> dict:
        """What ``student.json`` records of the guidance conditioning (``{}`` for a plain student)."""
        return {"guidance": {"default": self.default_guidance}} if self.guidance_embeddings else {}

    def load_embeddings(self, folder: Path, spec: dict) -> None:
        """Read what :meth:`save_embeddings` wrote, adding the guidance embedding that ``spec`` records."""
        if self.embeds_gap:
            load_weights(self.gap_embeddings, folder / GAP_WEIGHTS)
        if spec.get("guidance"):
            self.add_guidance_embedding(**spec["guidance"])
            load_weights(self.guidance_embeddings, folder / GUIDANCE_WEIGHTS)

    @classmethod
    def from_folder(cls, folder: Path, spec: dict, teacher=None) -> TeacherFlowMap:
        """A saved student; for a LoRA student, a fresh copy of ``teacher`` (by default the teacher its info names)
        with the saved adapters."""
        from ..teachers import load_teacher
        from ..teachers.loading import load_folder

        if spec["kind"] != "lora":
            student = cls(load_folder(folder / "network"))
        else:
            teacher_spec = ModelInfo.from_json(spec["info"]).teacher
            if teacher is None and not teacher_spec:
                raise ValueError(f"{folder} is a LoRA adapter that does not name its teacher: pass teacher=")
            student = add_lora(cls.from_teacher(teacher if teacher is not None else load_teacher(teacher_spec)),
                               LoraSettings(**spec["lora"]))
            read_adapter(student.base.network, folder)
            student.info = spec["info"]
        student.load_embeddings(folder, spec)
        return student
