"""``distill run``: distil a teacher into a flow-map student in the one training loop, save it, and judge it beside
its teacher. A run folder holds the resolved config, checkpoints, the log, sample grids, the student and its eval."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..conditions import map_condition
from ..config import ConfigError, build, check_keys
from ..data import DataConfig, Dataset, load_dataset
from ..lora import LoraSettings, add_lora
from ..nets import TWO_TIME_NETWORKS
from ..objectives import OBJECTIVES
from ..prompts import conditions_in_turn
from ..students import OUTPUT_RULES, FlowMap, TeacherFlowMap, TwoTimeFlowMap, VelocityFlowMap, jump_gains, student_class
from ..train import TrainConfig, train, use_ema
from .run_folder import open_run_folder

CONVERSION_STEPS = 300  # teaching a copied network a new output rule (measured: see the README's output rules)
STUDENT_KINDS = ("from_teacher", "lora", *TWO_TIME_NETWORKS)  # student.kind: on the teacher's network, or a built-in


@dataclass
class StudentConfig:
    """``kind``: ``from_teacher`` (a copy of the teacher's network plus a zero-initialised gap embedding), ``lora``
    (the same with the network frozen and PEFT LoRA adapters trained; ``lora`` holds ``distill.lora.LoraSettings``'
    fields: rank, alpha, target_modules, dropout) or a built-in two-time network (``TwoTimeMLP``, ``TwoTimeUNet``)
    built from ``network``'s arguments. ``weights``: what is saved as the student: ``ema`` (the first of
    ``train.ema_decays``) or ``raw``. ``output``: how a student on the teacher's network reads its output
    (``distill.students.OUTPUT_RULES``: ``teacher``, ``velocity``, ``data``, ``preconditioned``); ``auto``
    keeps the teacher's own rule unless a jump of the 1-, 2- or 4-step grid would amplify the network's error by more
    than 2 (an epsilon teacher), and then takes ``velocity`` (measured best of the three on the epsilon teacher)."""

    kind: str = "from_teacher"
    network: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)
    weights: str = "ema"
    output: str = "auto"

    def __post_init__(self):
        if self.kind not in STUDENT_KINDS:
            raise ValueError(f"unknown student kind {self.kind!r}; use one of {', '.join(STUDENT_KINDS)}")
        if self.output != "auto" and self.output not in OUTPUT_RULES:
            raise ValueError(f"unknown student.output {self.output!r}; use auto or one of {', '.join(OUTPUT_RULES)}")
        if self.lora:
            check_keys(self.lora, LoraSettings, "student.lora")
            LoraSettings(**self.lora)  # rank and targets checked before any weights load
        if self.weights not in ("ema", "raw"):
            raise ValueError(f"student.weights must be 'ema' or 'raw', got {self.weights!r}")


@dataclass
class RunEvalConfig:
    """The student beside its teacher after training: ``samples`` (0: no evaluation), the student's ``nfe`` and the
    teacher's ``solvers`` at those NFE, plus the teacher's reference solver (DPM-Solver++(2M), whose 64-step samples
    are the fidelity reference and cost nothing more) at ``reference_nfe`` (e.g. ``[64]``: the teacher's best).
    ``guidance``: the classifier-free guidance scales to judge a guidance-conditioned student at, each beside the
    teacher guided at the same scale (empty: the two ends of the range it was distilled on). ``prompts``: a
    text-to-image teacher's prompt dataset to judge on (``None``: the held-out phrasings of its ``prompts.json``)."""

    samples: int = 500
    nfe: list[int] = field(default_factory=lambda: [1, 2, 4])
    solvers: list[str] = field(default_factory=lambda: ["euler", "heun", "dpmpp2m"])
    reference_nfe: list[int] = field(default_factory=list)
    guidance: list[float] = field(default_factory=list)
    seed: int = 0
    prompts: str | None = None


@dataclass
class DistillConfig:
    """A distillation run. ``teacher``: a bundled name, diffusers folder or hub id. ``objective``: ``name`` (one of
    ``distill.objectives.OBJECTIVES``) plus that objective's config fields. ``sample_every``: write a sample grid
    every N steps (0: only at the end). ``run_dir``: ``{name}`` is replaced by the run's name."""

    name: str = "student"
    teacher: str = "mnist"
    student: StudentConfig = field(default_factory=StudentConfig)
    objective: dict = field(default_factory=lambda: {"name": "eulerian"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: RunEvalConfig = field(default_factory=RunEvalConfig)
    sample_every: int = 0
    run_dir: str = "runs/{name}"

    def __post_init__(self):
        objective_config(self.objective)  # a typo fails now, not after the teacher has loaded


def load_distill_config(name_or_path: str, overrides: list[str] | None = None) -> DistillConfig:
    """A preset or YAML file plus ``key=value`` overrides. Choosing another ``objective.name`` on the command line
    replaces the file's objective section (its fields belong to the other objective)."""
    from ..config import merge, parse_overrides, read_config

    data = read_config(name_or_path, "distill")
    extra = parse_overrides(overrides or [])
    chosen = extra.get("objective", {}).get("name")
    if chosen is not None and chosen != data.get("objective", {}).get("name"):
        data = {**data, "objective": {}}
    return build(DistillConfig, merge(data, extra))


def objective_config(spec: dict):
    """``{"name": ..., **fields}`` -> ``(objective class, its typed config)``; unknown names and keys fail with the
    closest valid one."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OBJECTIVES:
        import difflib

        close = difflib.get_close_matches(str(name), list(OBJECTIVES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown objective.name {name!r}{hint} (valid: {', '.join(OBJECTIVES)})")
    objective, config_class = OBJECTIVES[name]
    return objective, build(config_class, spec, "objective")


def build_objective(teacher, spec: dict):
    """The objective that ``spec`` describes, on ``teacher``."""
    objective, config = objective_config(spec)
    return objective(teacher, config)


def build_student(teacher, config: StudentConfig, teacher_spec: str,
                  guidance_range: tuple[float, float] | None = None) -> FlowMap:
    """A student for ``teacher``; its info records the teacher it was distilled from (``distill eval`` reads it).
    With a ``guidance_range`` it takes the guidance scale as an input (default: the range's lower end)."""
    if config.kind in ("from_teacher", "lora"):
        student = student_class(output_rule(teacher, config.output)).from_teacher(teacher)
        if guidance_range is not None:
            student.add_guidance_embedding(default=guidance_range[0])
        if config.kind == "lora":
            add_lora(student, LoraSettings(**config.lora))
    else:
        if guidance_range is not None:
            raise ValueError(f"a guidance range needs a student on the teacher's network (student.kind=from_teacher "
                             f"or lora), not {config.kind}")
        network = TWO_TIME_NETWORKS[config.kind](**config.network)
        student = TwoTimeFlowMap(network, t_min=teacher.t_min, t_max=teacher.t_max, sample_shape=teacher.sample_shape)
    student.info = teacher.info.replace(teacher=teacher_spec,
                                        guidance_range=None if guidance_range is None else list(guidance_range))
    return student


def output_rule(teacher, choice: str = "auto", max_gain: float = 2.0) -> str:
    """The student output rule for ``teacher``: ``choice`` itself, or for ``auto`` the teacher's own rule when its
    largest jump gain on the 1-, 2- and 4-step grids is at most ``max_gain``, else ``velocity``."""
    if choice != "auto":
        return choice
    from ..solvers import time_grid

    probe = FlowMap.from_teacher(teacher)
    gains = [float(gain) for steps in (1, 2, 4) for gain in jump_gains(probe, time_grid(teacher, steps))]
    return TeacherFlowMap.output_rule if max(gains) <= max_gain else VelocityFlowMap.output_rule


def resolve_output_rule(config: DistillConfig, teacher) -> None:
    """Fix ``student.output`` (``auto``: :func:`output_rule`) and, for a student on the teacher's network whose rule
    differs from the teacher's, give the objective a conversion phase unless the config sets one (in place, so the
    run folder's config.yaml records what ran)."""
    if config.student.kind not in ("from_teacher", "lora"):
        return
    config.student.output = output_rule(teacher, config.student.output)
    reads = student_class(config.student.output).velocity_from_output
    changed = reads is not TeacherFlowMap.velocity_from_output  # a new reading of the network's output
    config.objective = {"conversion_steps": CONVERSION_STEPS if changed else 0, **config.objective}


def distillation_data(teacher, config: DataConfig) -> Dataset:
    info = teacher.info.data
    name = config.name or info.name
    if name is None:
        raise ValueError("the teacher does not record its data: set data.name (e.g. mnist, digits, checkerboard)")
    exact = teacher.sample_data(config.n, torch.Generator().manual_seed(config.seed)) if config.name is None else None
    if exact is not None:  # an analytic teacher: exact samples of its own distribution
        return Dataset(exact.float(), name=name)
    classes = config.classes or (None if config.name else info.classes)
    data = load_dataset(name, config.size if config.name else info.size, config.n, config.seed, classes)
    if not (config.conditional and teacher.info.conditional):
        data.labels = None
    return data


def grid_sampler(student: FlowMap, count: int = 64, steps: int = 2, seed: int = 0):
    """A function ``model -> images`` for periodic grids: ``steps`` jumps from fixed noise (classes, or the teacher's
    prompts, in turn), decoded by a latent student's VAE."""
    noise = torch.randn(count, *student.sample_shape, generator=torch.Generator().manual_seed(seed))
    cond, _ = conditions_in_turn(student, count)

    def draw(model) -> torch.Tensor:
        from ..solvers import sample

        device = next(model.parameters()).device
        x = sample(model, noise.to(device), steps=steps, cond=map_condition(lambda c: c.to(device), cond))
        return student.decode(x)

    return draw


def run_distillation(config: DistillConfig, restart: bool = False) -> dict:
    """Train (resuming a killed run), save ``<run_dir>/student``, evaluate; returns the run's report."""
    from ..evaluation.tables import save_samples
    from ..teachers import load_teacher

    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch, rank 0 writes
    teacher = load_teacher(config.teacher).requires_grad_(False)
    if teacher.sample_shape is None:
        raise ValueError(f"{config.teacher} does not declare its sample shape")
    resolve_output_rule(config, teacher)
    run_dir = open_run_folder(config, restart)  # the resolved config: what the folder's weights were trained with
    objective = build_objective(teacher, config.objective)
    data = objective.training_data()  # objectives that learn from teacher trajectories bring their own
    if data is None:
        data = distillation_data(teacher, config.data)
    torch.manual_seed(config.train.seed)  # the same initial weights on every rerun
    student = build_student(teacher, config.student, config.teacher, objective.config.guidance_range)
    print(f"{config.name}: {config.objective['name']} on {config.teacher}, {len(data)} training samples, "
          f"{sum(p.numel() for p in student.parameters() if p.requires_grad):,} trainable parameters -> {run_dir}",
          file=sys.stderr, flush=True)
    sampler = grid_sampler(student)
    result = train(student, objective, data, config.train, run_dir,
                   sampler=sampler if config.sample_every else None, sample_every=config.sample_every)
    report = {"teacher": config.teacher, "student": str(run_dir / "student"), "objective": config.objective["name"],
              "steps": result.step, "train_seconds": round(result.seconds, 1), "skipped_steps": result.skipped_steps,
              "final_loss": result.history[-1].get("loss") if result.history else None, "eval": None}
    if not main_process:
        return report
    if config.student.weights == "ema":
        use_ema(student, result)
    student.requires_grad_(False).eval()
    student.save_pretrained(run_dir / "student")
    save_samples(sampler(student), run_dir / "samples.png", title=f"{config.name}: 2 steps")
    if config.eval.samples:
        fixed = objective.config.guidance
        eval_config = config.eval if config.eval.guidance or not isinstance(fixed, (int, float)) else \
            dataclasses.replace(config.eval, guidance=[float(fixed)])  # guidance baked in at one w: judged there
        report["eval"] = evaluate_student(student, teacher, eval_config, run_dir, config.name)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def evaluate_student(student, teacher, config: RunEvalConfig, out_dir: Path | None = None,
                     name: str = "student") -> dict:
    """The student at ``config.nfe`` beside the teacher's solvers at the same NFE (for a guidance-conditioned
    student, at each scale of ``config.guidance``); writes eval.json/.md/.png."""
    from ..evaluation.tables import Evaluation, markdown_table, plot_quality, report

    scales: list = config.guidance[:1] or [None]  # a student distilled at one fixed w: beside the teacher at w
    if student.guidance_conditioned:
        scales = config.guidance or student.info.guidance_range or [student.default_guidance]
    rows = []
    for scale in scales:
        evaluation = Evaluation(teacher, samples=config.samples, seed=config.seed, guidance=scale,
                                prompts=config.prompts)
        rows += evaluation.side_by_side(student, config.solvers, config.nfe, config.reference_nfe, student_name=name)
    result = report(evaluation, rows)
    if out_dir is not None:
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
        (out_dir / "eval.md").write_text(markdown_table(rows) + "\n")
        plot_quality(rows, out_dir / "quality.png", title=f"{name} beside its teacher: {config.samples} samples")
    return result
