"""``distill finetune``: adapt a teacher to new data (a folder of images, a subset of its classes, another dataset)
with LoRA adapters trained by the denoising loss in the one training loop, then distil or export it like any teacher.

A run folder holds the resolved config, checkpoints, the log, and two results:

- ``adapter/``: PEFT's adapter folder (``adapter_config.json``, ``adapter_model.safetensors``): small, for sharing;
  ``peft.PeftModel.from_pretrained(<the base teacher's network>, "adapter")`` applies it.
- ``teacher/``: the base teacher with the adapters merged, saved like any teacher, so ``distill run CONFIG
  teacher=<run_dir>/teacher`` distils it and ``distill eval`` / ``distill sample`` take it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import build, check_keys
from ..data import DataConfig, Dataset, load_dataset
from ..model_info import DataInfo
from ..objectives.denoising import DenoisingConfig, DenoisingLoss
from ..train import TrainConfig, train, use_ema
from .run_folder import open_run_folder


@dataclass
class FinetuneConfig:
    """A LoRA fine-tuning run. ``lora``: ``distill.lora.LoraSettings`` fields (rank, alpha, target_modules,
    dropout). ``objective``: the denoising loss (for a class-conditional teacher, ``label_dropout`` keeps its null
    class, hence guidance, working; the null label comes from the teacher). ``eval_samples``: judge the base and the
    adapted teacher on the new data with that many samples each (0: skip)."""

    name: str = "finetune"
    teacher: str = "mnist"
    data: DataConfig = field(default_factory=DataConfig)  # the data to adapt to (None: the teacher's own)
    lora: dict = field(default_factory=lambda: {"rank": 8})
    objective: dict = field(default_factory=lambda: {"label_dropout": 0.1})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=64, learning_rate=1e-3))
    eval_samples: int = 500
    run_dir: str = "runs/{name}"

    def __post_init__(self):
        from ..lora import LoraSettings

        check_keys(self.lora, LoraSettings, "lora")
        check_keys(self.objective, DenoisingConfig, "objective")
        LoraSettings(**self.lora)

    def denoising(self, null_label: int | None) -> DenoisingConfig:
        """The denoising loss's config; a class-conditional teacher's null label unless the config names one."""
        return build(DenoisingConfig, {"null_label": null_label, **self.objective}, "objective")


def load_finetune_config(name_or_path: str, overrides: list[str] | None = None) -> FinetuneConfig:
    from ..config import load_config

    return load_config(FinetuneConfig, name_or_path, "finetune", overrides)


def adaptation_data(teacher, config: DataConfig) -> Dataset:
    """The new data, checked against the teacher's sample shape and conditioning."""
    own = teacher.info.data
    size = config.size or (own.size if config.name is None else None) or teacher.sample_shape[-1]
    data = load_dataset(config.name or own.name, size, config.n, config.seed, config.classes or None)
    if tuple(data.sample_shape) != tuple(teacher.sample_shape):
        raise ValueError(f"the data's samples have shape {list(data.sample_shape)}, the teacher's "
                         f"{list(teacher.sample_shape)}: set data.size (or convert the images' channels)")
    classes = teacher.info.num_classes
    if classes and not config.conditional:
        raise ValueError("this teacher is class-conditional: it adapts to labelled data (data.conditional: true)")
    if classes and data.labels is None:
        raise ValueError("this teacher is class-conditional: give labelled data (images in one subfolder per class)")
    if classes and int(data.labels.max()) >= classes:
        raise ValueError(f"the data has labels up to {int(data.labels.max())}, the teacher knows {classes} classes")
    if not classes:
        data.labels = None
    return data


def finetune(config: FinetuneConfig, restart: bool = False) -> dict:
    """Train the adapters (resuming a killed run), save ``adapter/`` and the merged ``teacher/``, judge both
    teachers on the new data; returns the report."""
    from ..lora import LoraSettings, add_teacher_lora
    from ..teachers import load_teacher

    run_dir = open_run_folder(config, restart)
    teacher = load_teacher(config.teacher)
    data = adaptation_data(teacher, config.data)
    objective = config.denoising(teacher.info.null_label if data.labels is not None else None)
    torch.manual_seed(config.train.seed)
    settings = add_teacher_lora(teacher, LoraSettings(**config.lora))
    print(f"{config.name}: LoRA on {config.teacher}, {len(data)} samples of {data.name}, "
          f"{sum(p.numel() for p in teacher.parameters() if p.requires_grad):,} trainable parameters -> {run_dir}",
          file=sys.stderr, flush=True)
    result = train(teacher, DenoisingLoss(objective), data, config.train, run_dir)
    use_ema(teacher, result)
    teacher.requires_grad_(False).eval()
    data_info = DataInfo(config.data.name or teacher.info.data.name, teacher.sample_shape[-1],
                         config.data.classes or None)
    teacher.info = teacher.info.replace(
        name=config.name, data=data_info, adapted_from=config.teacher,
        description=f"{config.teacher} adapted to {data.name} with LoRA (rank {settings.rank})")
    adapter, output = save_adapted(teacher, settings, run_dir)
    report = {"teacher": str(output), "adapter": str(adapter), "base": config.teacher, "steps": result.step,
              "train_seconds": round(result.seconds, 1),
              "adapter_bytes": sum(f.stat().st_size for f in adapter.iterdir()),
              "teacher_bytes": sum(f.stat().st_size for f in output.rglob("*.safetensors")),
              "eval": judge(load_teacher(config.teacher), teacher, data_info, config) if config.eval_samples else None}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def save_adapted(teacher, settings, run_dir: Path) -> tuple[Path, Path]:
    """``run_dir/adapter`` (PEFT's folder) and, with the adapters merged in (in place), ``run_dir/teacher``; both
    carry the adapted teacher's info."""
    from ..lora import merge_network_lora, write_adapter
    from ..teachers.loading import INFO_FILE
    from .teacher_training import save_teacher

    adapter = run_dir / "adapter"
    write_adapter(teacher.network, settings, adapter)
    merge_network_lora(teacher.network)
    output = save_teacher(teacher, run_dir / "teacher")
    for folder in (adapter, output):
        (folder / INFO_FILE).write_text(json.dumps(teacher.info.to_json(), indent=2))
    return adapter, output


def judge(base, adapted, data_info: dict, config: FinetuneConfig) -> dict:
    """The base and the adapted teacher on the new data, from the same noise: DPM-Solver++(2M), 16 steps."""
    from ..evaluation.tables import Evaluation, markdown_table, report

    rows = []
    for name, teacher in ((config.teacher, base), (config.name, adapted)):
        evaluation = Evaluation(teacher, samples=config.eval_samples, data=data_info)
        rows += evaluation.teacher_rows(["dpmpp2m"], [16], name=name)
    result = report(evaluation, rows)
    run_dir = Path(config.run_dir.format(name=config.name))
    (run_dir / "eval.md").write_text(markdown_table(rows) + "\n")
    return result
