"""The one training loop (Accelerate): any model, any objective ``objective(model, batch, step) -> LossOutput``.

A run lives in a folder. Every ``checkpoint_every`` steps and at the end it writes a checkpoint atomically
(a new ``checkpoint-STEP`` folder with a SHA-256 manifest, then the ``latest`` pointer is swapped), so a killed run
resumes from its last complete checkpoint when the same command is rerun. Batches and noise are seeded by the step
number, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .conditions import map_condition
from .data import Dataset
from .objectives.base import Batch, LossFunction, LossOutput, Objective

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_DECAYS = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every objective."""

    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    lr_decay: str = "constant"  # after warm-up: "constant", or "cosine" down to min_learning_rate at decay_steps
    decay_steps: int | None = None  # where the cosine ends (default: the last step; later: it does not finish)
    min_learning_rate: float = 0.0  # the cosine's floor (a second phase, such as DMD after a warm start, runs at it)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    mixed_precision: str = "no"
    ema_decays: list[float] = field(default_factory=lambda: [0.999])
    checkpoint_every: int = 500
    log_every: int = 50
    max_bad_steps: int = 20
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got {self.mixed_precision!r}")
        for name in ("steps", "batch_size", "grad_accumulation", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"decay_steps must come after warmup_steps ({self.warmup_steps}), got {self.decay_steps}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(f"min_learning_rate must lie in [0, learning_rate], got {self.min_learning_rate}")
        if any(not 0 < d < 1 for d in self.ema_decays):
            raise ValueError(f"ema_decays must lie in (0, 1), got {self.ema_decays}")


@dataclass
class TrainResult:
    """What a finished run holds: the final step, EMA weights by decay, the logged history, and the training
    seconds summed over every session of the run."""

    step: int
    ema: dict[float, dict[str, Tensor]]
    history: list[dict]
    skipped_steps: int
    seconds: float


class CheckpointError(RuntimeError):
    """A checkpoint that is missing files, truncated or altered."""


# ------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _state_for_safetensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


@dataclass
class Checkpoint:
    """What a checkpoint holds: model weights, EMA weights by decay, optimiser/scheduler/step state, and the
    objective's own state (target networks; empty for stateless objectives)."""

    model: dict[str, Tensor]
    ema: dict[float, dict[str, Tensor]]
    trainer: dict
    objective: dict[str, Tensor]


def save_checkpoint(run_dir: Path, step: int, checkpoint: Checkpoint, keep: int = 2) -> Path:
    """Write ``run_dir/checkpoint-STEP`` atomically and point ``run_dir/latest`` at it."""
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step:08d}"
    partial = run_dir / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file(_state_for_safetensors(checkpoint.model), partial / "model.safetensors")
    for decay, weights in checkpoint.ema.items():
        save_file(_state_for_safetensors(weights), partial / f"ema_{decay}.safetensors")
    if checkpoint.objective:
        save_file(_state_for_safetensors(checkpoint.objective), partial / "objective.safetensors")
    torch.save(checkpoint.trainer, partial / "trainer_state.pt")
    manifest = {"step": step, "files": {p.name: _sha256(p) for p in sorted(partial.iterdir())}}
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_tree(partial)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    _write_atomic(run_dir / "latest", final.name)
    for old in sorted(run_dir.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "latest"
    if not pointer.exists():
        return None
    folder = run_dir / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} names {folder.name}, which does not exist; delete {pointer} to start over")
    return folder


def load_checkpoint(folder: Path) -> Checkpoint:
    """Verify the manifest, then load the checkpoint; never half-way."""
    from .weights import read_safetensors

    manifest_file = folder / "manifest.json"
    if not manifest_file.exists():
        raise CheckpointError(f"checkpoint {folder} has no manifest.json: it is incomplete; delete it to resume from "
                              "an earlier one")
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {folder}: manifest.json is corrupted ({error})") from error
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.exists() or _sha256(path) != digest:
            raise CheckpointError(f"checkpoint {folder}: {name} is missing, truncated or altered (SHA-256 mismatch); "
                                  "delete this checkpoint folder to resume from an earlier one")
    model_state = read_safetensors(folder / "model.safetensors")
    ema = {float(p.stem.split("_", 1)[1]): read_safetensors(p) for p in folder.glob("ema_*.safetensors")}
    trainer_state = torch.load(folder / "trainer_state.pt", weights_only=True)
    objective_file = folder / "objective.safetensors"
    objective = read_safetensors(objective_file) if objective_file.exists() else {}
    return Checkpoint(model_state, ema, trainer_state, objective)


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------
def micro_batch_index(step: int, micro: int, accumulation: int, rank: int, world: int) -> int:
    """The global index of a micro-batch: ``(step * accumulation + micro) * world + rank``. Data and noise are seeded
    by it, so one process accumulating N micro-batches sees exactly what N processes see in one step each."""
    return (step * accumulation + micro) * world + rank


def draw_batch(data: Dataset, index: int, batch_size: int, seed: int) -> Batch:
    """Micro-batch ``index`` (see :func:`micro_batch_index`): examples drawn with replacement, seeded by
    (seed, index)."""
    generator = torch.Generator().manual_seed(_seed(seed, index))
    chosen = torch.randint(0, len(data), (batch_size,), generator=generator)
    return Batch(data.x[chosen], data.condition(chosen))


def _seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then constant, or cosine decay (Loshchilov & Hutter 2017, eq. 5) from the learning rate to
    ``min_learning_rate`` at ``decay_steps`` (default ``steps``), constant after it."""
    end = config.decay_steps or config.steps
    floor = config.min_learning_rate / config.learning_rate

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
        if config.lr_decay == "constant" or step < config.warmup_steps:
            return warm
        progress = (step - config.warmup_steps) / max(1, end - config.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _to_device(batch: Batch, device) -> Batch:
    def move(value):
        return value.to(device) if isinstance(value, Tensor) else value

    return Batch(move(batch.x), map_condition(move, batch.cond))


def train(
    model: nn.Module,
    objective: Objective | Callable[[nn.Module, Batch, int], LossOutput],
    data: Dataset,
    config: TrainConfig,
    run_dir: str | Path,
    sampler: Callable[[nn.Module], Tensor] | None = None,
    sample_every: int = 0,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``objective`` over batches of ``data``; resume from ``run_dir``.
    The objective's own state (:meth:`Objective.state_dict`: target networks) is checkpointed too; a plain function
    is a stateless objective.

    Returns the final EMA weights by decay (the model itself holds the raw weights). With ``sampler`` (``model ->
    samples``), a sample grid is written to ``run_dir/samples/`` every ``sample_every`` steps. Metrics go to
    ``log.jsonl`` and, when TensorBoard is installed, to Accelerate's TensorBoard tracker.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    objective = objective if isinstance(objective, Objective) else LossFunction(objective)
    tracker = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    # several processes and no GPU (torchrun or accelerate launch on CPUs): Accelerate's gloo data parallelism
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    precision = supported_precision(config.mixed_precision)
    release_other_precision(precision)
    accelerator = Accelerator(mixed_precision=precision, log_with=tracker, project_dir=str(run_dir),
                              gradient_accumulation_steps=config.grad_accumulation, cpu=cpu_processes)
    if tracker:
        accelerator.init_trackers("tensorboard")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no trainable parameters")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    ema = {d: {n: p.detach().clone().float() for n, p in zip(names, params)} for d in config.ema_decays}
    start, skipped, history, earlier_seconds = 0, 0, [], 0.0

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)
        model_state, ema_state, trainer_state = saved.model, saved.ema, saved.trainer
        model.load_state_dict(model_state)
        objective.load_state_dict(saved.objective, model)
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        # a decay the checkpoint lacks starts from the resumed weights (not from the initial ones)
        ema = {d: ema_state[d] if d in ema_state else {n: p.detach().clone().float() for n, p in zip(names, params)}
               for d in config.ema_decays}
        start, skipped = int(trainer_state["step"]), int(trainer_state["skipped_steps"])
        earlier_seconds = float(trainer_state.get("seconds", 0.0))
        history = _read_history(run_dir, start)
        _log(accelerator, f"resuming from {checkpoint} at step {start}")

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model = accelerator.unwrap_model(model)
    trainable = dict(raw_model.named_parameters())
    started = time.perf_counter()
    bad_run = 0
    bar = tqdm(total=config.steps, initial=start, disable=not (config.progress and accelerator.is_main_process),
               file=sys.stderr, dynamic_ncols=True, desc="train")
    for step in range(start, config.steps):
        model.train()
        losses = []
        for micro in range(config.grad_accumulation):
            index = micro_batch_index(step, micro, config.grad_accumulation, accelerator.process_index,
                                      accelerator.num_processes)
            batch = draw_batch(data, index, config.batch_size, config.seed)
            torch.manual_seed(_seed(config.seed + 1, index))  # the objective's noise and times
            with accelerator.accumulate(model), accelerator.autocast():
                out = objective(model, _to_device(batch, accelerator.device), step)
                finite = bool(torch.isfinite(out.loss).item())
                if finite:  # NaN guard: a non-finite loss never reaches the weights
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients and config.grad_clip > 0:
                        accelerator.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append((out, finite))
        if not all(finite for _, finite in losses):
            skipped, bad_run = skipped + 1, bad_run + 1
            if bad_run >= config.max_bad_steps:
                raise FloatingPointError(f"{bad_run} non-finite losses in a row at step {step}: lower the learning "
                                         f"rate or enable grad_clip; the last good checkpoint is in {run_dir}")
            continue
        bad_run = 0
        _update_ema(ema, trainable, names)
        bar.update(1)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            record = {"step": step + 1, **_mean_metrics([o for o, _ in losses]), "lr": scheduler.get_last_lr()[0]}
            history.append(record)
            per_step = config.batch_size * config.grad_accumulation * accelerator.num_processes
            rate = (bar.format_dict.get("rate") or 0.0) * per_step
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}", samples_per_s=f"{rate:.0f}")
            if accelerator.is_main_process:
                _append_history(run_dir, record)
            accelerator.log(record, step=step + 1)
        if sampler is not None and sample_every and (step + 1) % sample_every == 0 and accelerator.is_main_process:
            _write_grid(sampler, raw_model, run_dir / "samples" / f"step-{step + 1:08d}.png")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                trainer_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "step": step + 1, "skipped_steps": skipped, "config": json.dumps(asdict(config)),
                                 "seconds": earlier_seconds + time.perf_counter() - started}
                objective_state = objective.state_dict()
                save_checkpoint(run_dir, step + 1, Checkpoint(raw_model.state_dict(), ema, trainer_state,
                                                              objective_state))
    bar.close()
    for tracker in accelerator.trackers:  # (end_training would also tear down the caller's process group)
        tracker.finish()
    return TrainResult(config.steps, ema, history, skipped, earlier_seconds + time.perf_counter() - started)


def supported_precision(mixed_precision: str) -> str:
    """``mixed_precision``, or ``no`` (float32, with a warning) for bf16 on a CPU without bf16 instructions
    (AVX512-BF16 / AMX): emulated there, a bf16 quickstart step took 11.6 s against float32's 0.8 s on an AVX2 CPU."""
    if mixed_precision != "bf16" or torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return mixed_precision
    warnings.warn("this CPU has no bf16 instructions (emulated bf16 ran ~15x slower): training in float32 instead of "
                  "the config's mixed_precision=bf16", stacklevel=3)
    return "no"


def release_other_precision(mixed_precision: str) -> None:
    """Accelerate keeps one ``AcceleratorState`` per process and refuses a second ``Accelerator`` of another
    precision; a later ``train`` in the same process (a notebook, a test session) with another precision resets it.
    The process group (``PartialState``) stays."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def _write_grid(sampler, model: nn.Module, path: Path) -> None:
    from .evaluation.tables import save_samples

    was_training = model.training
    model.eval()
    with torch.no_grad():
        save_samples(sampler(model), path, title=path.stem)
    model.train(was_training)


@torch.no_grad()
def _update_ema(ema: dict[float, dict[str, Tensor]], params: dict[str, Tensor], names: list[str]) -> None:
    for decay, weights in ema.items():
        for name in names:
            weights[name].lerp_(params[name].detach().float(), 1 - decay)


def _mean_metrics(outputs: list[LossOutput]) -> dict[str, float]:
    keys = {k for o in outputs for k in o.metrics}
    return {k: sum(o.metrics.get(k, math.nan) for o in outputs) / len(outputs) for k in sorted(keys)}


def _append_history(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _read_history(run_dir: Path, up_to_step: int) -> list[dict]:
    """Logged records up to the resumed step; later ones (written after the checkpoint) are dropped."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in records if r["step"] <= up_to_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _log(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, file=sys.stderr)


def use_ema(model: nn.Module, result: TrainResult, decay: float | None = None) -> nn.Module:
    """Put a run's EMA weights (of ``decay``; default: the first of the run's decays) into ``model``, in place: how
    every driver finishes before it saves."""
    chosen = next(iter(result.ema)) if decay is None else decay
    model.load_state_dict(ema_state_dict(model, result.ema[chosen]))
    return model


def ema_state_dict(model: nn.Module, ema_weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's full state dict with its trainable parameters replaced by EMA weights (in the model's dtypes)."""
    state = dict(model.state_dict())
    for name, value in ema_weights.items():
        state[name] = value.to(state[name].dtype)
    return state
