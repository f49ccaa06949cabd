"""Flow-map students: ``X(x, t, s) = x + (s - t) F(x, t, s)``, the state at time ``s`` of the trajectory through
``x`` at time ``t`` (docs/design.md §2; Boffi et al. 2024, eq. 2.3).

``FlowMap.from_teacher`` copies the teacher's network and adds a zero-initialised embedding of the gap ``t - s`` to its
time embedding, so an untrained student is exactly one Euler step of the teacher, and ``F(x, t, t) = v(x, t)``.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from .conventions import per_example, split_scale
from .nets import NETWORKS, sinusoidal_embedding
from .teachers.base import NetworkTeacher, as_time_batch

# Where each network class embeds time: the gap embedding is added to these modules' outputs.
TIME_EMBEDDINGS = {
    "UNet2DModel": ["time_embedding"],
    "UNet2DConditionModel": ["time_embedding"],
    "SD3Transformer2DModel": ["time_text_embed"],
    "FluxTransformer2DModel": ["time_text_embed"],
    "DiTTransformer2DModel": ["transformer_blocks.*.norm1.emb"],  # every block embeds time itself
    "VelocityMLP": ["net.0"],  # the first layer sees [x, embedding(t)]
}
STUDENT_FILE = "student.json"
GAP_WEIGHTS = "gap_embeddings.safetensors"
NETWORK_WEIGHTS = "network.safetensors"
GUIDANCE_WEIGHTS = "guidance_embeddings.safetensors"
SCHEDULER_TIMESTEPS = 1000  # diffusers' flow-map scheduler counts time in thousandths
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
        self.value: Tensor | None = None  # [B], set by the FlowMap call in progress
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


class FlowMap(nn.Module):
    """A two-time student: on a copy of a teacher's network (``FlowMap.from_teacher``), or on a from-scratch two-time
    network ``network(x, t, s, cond) -> F`` (``FlowMap(TwoTimeMLP(...), sample_shape=(2,))``).

    ``forward(x, t, s, cond)`` returns ``X(x, t, s)`` ([B, ...] like ``x``; ``t``, ``s`` canonical, numbers or [B]).
    ``average_velocity(x, t, s, cond)`` returns ``F``. Sampling: ``distill.sample(student, noise, steps=K)``.
    """

    def __init__(self, base: nn.Module, *, t_min: float = 0.0, t_max: float = 1.0,
                 sample_shape: tuple[int, ...] | None = None):
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"a FlowMap is built on a network teacher or a two-time network, got {type(base).__name__}")
        self.base = base.requires_grad_(True)
        self.gap_embeddings = nn.ModuleList()
        self.guidance_embeddings = nn.ModuleList()  # empty unless guidance-conditioned (add_guidance_embedding)
        self.default_guidance: float | None = None
        self.lora = None  # distill.lora.LoraSettings once adapters are added
        self.hooked_modules: list[str] = []
        if not isinstance(base, NetworkTeacher):  # a from-scratch two-time network
            self.t_min, self.t_max, self.sample_shape, self.info = t_min, t_max, sample_shape, {}
            return
        self.t_min, self.t_max, self.sample_shape = base.t_min, base.t_max, base.sample_shape
        self.info = base.info
        hooked = _time_embedding_modules(base.network)
        self.hooked_modules = [name for name, _ in hooked]
        self._hook_embeddings(self.gap_embeddings, GAP_SCALE)

    def _hook_embeddings(self, embeddings: nn.ModuleList, scale: float) -> None:
        """One zero-initialised :class:`ScalarEmbedding` per time-embedding module, added to its output."""
        modules = dict(self.base.network.named_modules())
        for name in self.hooked_modules:
            embedding = ScalarEmbedding(_output_dim(modules[name]), scale).to(next(self.base.parameters()).device)
            modules[name].register_forward_hook(embedding.add_to_output)
            embeddings.append(embedding)

    def add_guidance_embedding(self, default: float = 1.0) -> FlowMap:
        """Condition the student on a classifier-free guidance scale ``w`` (in place): a zero-initialised embedding of
        ``w`` beside the gap embedding, so one student serves every scale at one network call per step. ``w`` rides
        in the condition (``distill.conventions.with_scale``); ``default`` is used when a call carries none."""
        if not self.hooked_modules:
            raise ValueError("guidance conditioning needs a student built on a teacher's network "
                             "(FlowMap.from_teacher)")
        if not self.guidance_embeddings:
            self._hook_embeddings(self.guidance_embeddings, GUIDANCE_SCALE)
        self.default_guidance = float(default)
        return self

    @classmethod
    def from_teacher(cls, teacher: NetworkTeacher) -> FlowMap:
        """A student equal to one Euler step of ``teacher`` (whose weights are copied, not shared)."""
        return cls(copy.deepcopy(teacher))

    def average_velocity(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None) -> Tensor:
        """``F(x, t, s)``, with ``F(x, t, t) = v_teacher(x, t)`` at initialisation."""
        t = as_time_batch(t, x.shape[0], "FlowMap")
        s = as_time_batch(s, x.shape[0], "FlowMap")
        cond, guidance = split_scale(cond)
        if guidance is not None and not self.guidance_embeddings:
            raise ValueError("this student is not guidance-conditioned: distil it with objective.guidance=[w_min, "
                             "w_max], or guide its teacher instead")
        if not isinstance(self.base, NetworkTeacher):
            return self.base(x, t.to(x.dtype).to(x.device), s.to(x.dtype).to(x.device), cond)
        with self.embedding_inputs(t - s, self.default_guidance if guidance is None else guidance):
            return self.velocity_from_output(self.base(x, t, cond, raw=True), x, t)

    # --- the output rule: how the network's raw output becomes F (one method per student class) ----------------
    output_rule = "teacher"  # the name student.json and the config record (OUTPUT_RULES)

    def velocity_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``F`` from the network's raw output ``out`` at canonical ``(x, t)``: here the teacher's own conversion
        (``F(x, t, t) = v_teacher`` at initialisation). Linear in ``(x, out)`` at fixed ``t``."""
        return self.base.parameterization.velocity(out, x, t)

    def output_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """float64 [N] ``(a, b)`` with ``F(x, t, s) = a x + b out``, read off :meth:`velocity_from_output` (linear
        at fixed ``t``). The jump ``X = x + (s - t) F`` amplifies an error in ``out`` by ``|(s - t) b|``."""
        t = t.to(torch.float64)
        ones, zeros = torch.ones(len(t), 1, dtype=torch.float64), torch.zeros(len(t), 1, dtype=torch.float64)
        if not isinstance(self.base, NetworkTeacher):  # a two-time network outputs F itself
            return zeros[:, 0], ones[:, 0]
        a = self.velocity_from_output(zeros, ones, t)[:, 0]
        b = self.velocity_from_output(ones, zeros, t)[:, 0]
        mixed = self.velocity_from_output(2 * ones, 3 * ones, t)[:, 0]
        if not torch.allclose(mixed, 3 * a + 2 * b, rtol=1e-9, atol=1e-12):
            raise ValueError(f"{type(self).__name__}'s output rule is not linear in the network output")
        return a, b

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

    def forward(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None, output: str = "map") -> Tensor:
        """``X(x, t, s)``, or ``F(x, t, s)`` with ``output="average_velocity"`` (training calls go through
        ``forward`` so that DistributedDataParallel sees them)."""
        if output == "average_velocity":
            return self.average_velocity(x, t, s, cond)
        if output != "map":
            raise ValueError(f"output must be 'map' or 'average_velocity', got {output!r}")
        t64 = as_time_batch(t, x.shape[0], "FlowMap")
        s64 = as_time_batch(s, x.shape[0], "FlowMap")
        return x + per_example(s64 - t64, x) * self.average_velocity(x, t64, s64, cond)

    def jump(self, x: Tensor, t: Tensor | float, s: Tensor | float, cond=None) -> Tensor:
        """``X(x, t, s)`` through ``__call__``, so hooks and an in-place ``module.compile()`` apply."""
        return self(x, t, s, cond)

    # --- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``student.json`` and the weights: a copied teacher network in its teacher's format (``network/``)
        plus the gap embeddings, a built-in two-time network's safetensors, or (a LoRA student) only its PEFT
        adapter folder and gap embeddings (``distill.lora.save_adapter``)."""
        from safetensors.torch import save_file

        from .teachers.loading import INFO_FILE

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_scheduler_config(folder / "scheduler")
        if self.lora is not None:  # adapters only: the teacher's weights stay where they are
            from .lora import save_adapter

            return save_adapter(self, folder)
        if isinstance(self.base, NetworkTeacher):
            self.base.save_pretrained(folder / "network")
            (folder / "network" / INFO_FILE).write_text(json.dumps(self.info, indent=2))
            self.save_embeddings(folder)
            spec = {"kind": "from_teacher", "output": self.output_rule, "hooked_modules": self.hooked_modules,
                    "info": self.info, **self.guidance_spec()}
        else:
            if type(self.base).__name__ not in NETWORKS:
                raise ValueError(f"only built-in networks ({', '.join(NETWORKS)}) can be saved this way")
            save_file({k: v.contiguous() for k, v in self.base.state_dict().items()}, folder / NETWORK_WEIGHTS)
            spec = {"kind": "two_time_network", "network": type(self.base).__name__,
                    "network_config": self.base.config, "t_min": self.t_min, "t_max": self.t_max,
                    "sample_shape": list(self.sample_shape or []), "info": self.info}
        (folder / STUDENT_FILE).write_text(json.dumps(spec, indent=2))
        return folder

    def save_embeddings(self, folder: Path) -> None:
        """``folder/gap_embeddings.safetensors`` (the (t - s) embeddings) and, for a guidance-conditioned student,
        ``guidance_embeddings.safetensors``."""
        from safetensors.torch import save_file

        for embeddings, file in ((self.gap_embeddings, GAP_WEIGHTS), (self.guidance_embeddings, GUIDANCE_WEIGHTS)):
            if embeddings:
                save_file({k: v.contiguous() for k, v in embeddings.state_dict().items()}, folder / file)

    def guidance_spec(self) -> dict:
        """What ``student.json`` records of the guidance conditioning (``{}`` for a plain student)."""
        return {"guidance": {"default": self.default_guidance}} if self.guidance_embeddings else {}

    def load_embeddings(self, folder: Path, spec: dict) -> None:
        """Read what :meth:`save_embeddings` wrote, adding the guidance embedding that ``spec`` records."""
        from safetensors.torch import load_file

        self.gap_embeddings.load_state_dict(load_file(folder / GAP_WEIGHTS))
        if spec.get("guidance"):
            self.add_guidance_embedding(**spec["guidance"])
            self.guidance_embeddings.load_state_dict(load_file(folder / GUIDANCE_WEIGHTS))

    def diffusers_output(self, x: Tensor, timestep: Tensor | float, r_timestep: Tensor | float, cond=None) -> Tensor:
        """The model output that diffusers' ``FlowMapEulerDiscreteScheduler.step(output, timestep, x, r_timestep)``
        expects: the average velocity ``F(x, t, r)``, with its timesteps being ``1000 t`` (canonical time)."""
        t = torch.as_tensor(timestep).to("cpu", torch.float64) / SCHEDULER_TIMESTEPS
        r = torch.as_tensor(r_timestep).to("cpu", torch.float64) / SCHEDULER_TIMESTEPS
        return self.average_velocity(x, t, r, cond)


def jump_gains(student: FlowMap, times: Tensor) -> Tensor:
    """How much each jump ``times[k] -> times[k + 1]`` amplifies an error in the network's raw output: ``|q|`` of
    ``X = p x + q out``, ``q = (s - t) b(t)`` (:meth:`FlowMap.output_coefficients`). float64 [K]. A student that
    keeps an epsilon teacher's output has ``|q| ~ (t - s) / (1 - t)`` on its first jump: over a hundred for a DDPM."""
    times = times.to(torch.float64)
    return ((times[:-1] - times[1:]) * student.output_coefficients(times[:-1])[1]).abs()


def _write_scheduler_config(folder: Path) -> None:
    """A ``scheduler/`` folder that ``FlowMapEulerDiscreteScheduler.from_pretrained`` loads: its step,
    ``x_r = x_t - (t - r) F``, is this student's jump in canonical time (``timestep = 1000 t``)."""
    folder.mkdir(exist_ok=True)
    config = {"_class_name": "FlowMapEulerDiscreteScheduler", "num_train_timesteps": SCHEDULER_TIMESTEPS,
              "shift": 1.0}
    (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2))


def load_student(folder: str | Path, teacher=None) -> FlowMap:
    """Load a student saved by :meth:`FlowMap.save_pretrained`, or a LoRA student saved by
    ``distill.lora.save_adapter`` (onto ``teacher``, by default the teacher named in its info)."""
    from safetensors.torch import load_file

    from .teachers.loading import load_folder

    folder = Path(folder)
    if not (folder / STUDENT_FILE).exists():
        raise FileNotFoundError(f"{folder} holds no student ({STUDENT_FILE} missing)")
    spec = json.loads((folder / STUDENT_FILE).read_text())
    if spec.get("kind") == "lora":
        from .lora import load_adapter
        from .teachers import load_teacher

        teacher_spec = spec["info"].get("teacher")
        if teacher is None and not teacher_spec:
            raise ValueError(f"{folder} is a LoRA adapter that does not name its teacher: pass teacher=")
        return load_adapter(folder, teacher if teacher is not None else load_teacher(teacher_spec))
    if spec.get("kind") == "two_time_network":
        network = NETWORKS[spec["network"]](**spec["network_config"])
        network.load_state_dict(load_file(folder / NETWORK_WEIGHTS))
        student = FlowMap(network, t_min=spec["t_min"], t_max=spec["t_max"],
                          sample_shape=tuple(spec["sample_shape"]) or None)
        student.info = spec["info"]
        return student
    from .student_outputs import student_class

    student = student_class(spec.get("output", FlowMap.output_rule))(load_folder(folder / "network"))
    student.load_embeddings(folder, spec)
    return student


def load_model(spec: str | Path):
    """``(model, teacher)`` for a command line argument: a student folder (its teacher named in its info, or
    ``None``) or anything ``distill.load_teacher`` takes (then ``model`` is the teacher itself)."""
    from .teachers import load_teacher

    if (Path(spec) / STUDENT_FILE).exists():
        student = load_student(spec)
        teacher_spec = student.info.get("teacher")
        return student, (load_teacher(teacher_spec) if teacher_spec else None)
    teacher = load_teacher(spec)
    return teacher, teacher
