"""``distill train-teacher``: train a teacher with the denoising loss in the one training loop and save it in
the format users' pretrained models come in (a diffusers pipeline folder, or a built-in network + scheduler config)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import dump
from ..data import DataConfig, Dataset, load_dataset
from ..model_info import DataInfo, ModelInfo
from ..nets import NETWORKS
from ..objectives.denoising import DenoisingConfig, DenoisingLoss
from ..teachers.base import NetworkTeacher
from ..teachers.diffusers_teacher import DiffusersTeacher
from ..teachers.loading import INFO_FILE
from ..teachers.module import ModuleTeacher
from ..train import TrainConfig, TrainResult, train, use_ema
from .run_folder import open_run_folder


@dataclass
class TeacherConfig:
    """A teacher: data, network (``model``: ``class`` plus its constructor arguments, a diffusers model or a network
    of ``distill.nets``), diffusers scheduler config (``_class_name`` plus its arguments), loss and optimisation."""

    name: str = "teacher"
    description: str = ""
    data: DataConfig = field(default_factory=lambda: DataConfig(name="mnist"))
    model: dict = field(default_factory=lambda: {"class": "UNet2DModel"})
    scheduler: dict = field(default_factory=lambda: {"_class_name": "DDPMScheduler"})
    objective: DenoisingConfig = field(default_factory=DenoisingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/teachers/{name}"
    output: str | None = None  # where the trained teacher is written; default: <run_dir>/teacher
    # Start from another teacher's weights (a bundled name or a folder) with the same network, as SD 2's
    # v-prediction model was fine-tuned from its epsilon model: the features carry over, the output rule is relearnt.
    init: str | None = None


def build_teacher(config: TeacherConfig, data: Dataset) -> NetworkTeacher:
    """A freshly initialised, trainable teacher for ``config``."""
    kwargs = dict(config.model)
    class_name = kwargs.pop("class", None)
    if class_name in NETWORKS:
        module = NETWORKS[class_name](**kwargs)
        teacher = ModuleTeacher.from_scheduler_config(module, config.scheduler, data.sample_shape)
    else:
        import diffusers

        if class_name is None or not hasattr(diffusers, class_name):
            raise ValueError(f"model.class {class_name!r} is neither a diffusers model nor a built-in network "
                             f"({', '.join(NETWORKS)})")
        scheduler_class = config.scheduler.get("_class_name")
        if not hasattr(diffusers, str(scheduler_class)):
            raise ValueError(f"scheduler._class_name {scheduler_class!r} is not a diffusers scheduler")
        scheduler = getattr(diffusers, scheduler_class).from_config(config.scheduler)
        teacher = DiffusersTeacher(getattr(diffusers, class_name)(**kwargs), scheduler)
    return teacher.requires_grad_(True)


def initialise_from(teacher: NetworkTeacher, source: str) -> None:
    """Copy the network weights of the teacher ``source`` into ``teacher`` (same network class and shapes)."""
    from ..teachers.loading import load_teacher

    weights = load_teacher(source).state_dict()
    try:
        teacher.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ValueError(f"init={source!r} has another network than model: ({first}); "
                         "give model: the same settings as that teacher, or drop init") from None


def check_output(folder: Path) -> None:
    """An output folder must be new, empty, or hold a teacher saved before (which will be replaced)."""
    if folder.exists() and any(folder.iterdir()) and not (folder / INFO_FILE).exists():
        raise FileExistsError(f"output folder {folder} exists and does not hold a saved teacher; choose another")


def save_teacher(teacher: NetworkTeacher, folder: Path) -> Path:
    """Write the teacher to ``folder``, replacing a teacher saved there before but never any other folder."""
    check_output(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return teacher.save_pretrained(folder)


def train_teacher(config: TeacherConfig, restart: bool = False) -> tuple[Path, TrainResult]:
    """Train and save a teacher (EMA weights of the first decay); rerunning resumes from the run's checkpoint."""
    run_dir = Path(config.run_dir.format(name=config.name))
    output = Path(config.output) if config.output else run_dir / "teacher"
    check_output(output)
    if not config.data.name:  # before the run folder is claimed
        raise ValueError("a teacher needs data: set data.name (e.g. mnist, digits, checkerboard, an image folder)")
    run_dir = open_run_folder(config, restart)
    data = load_dataset(config.data.name, config.data.size, config.data.n, config.data.seed,
                        config.data.classes or None)
    if not config.data.conditional:
        data.labels = None
    print(f"{config.name}: {len(data)} samples of shape {list(data.sample_shape)} from {config.data.name}",
          file=sys.stderr)
    torch.manual_seed(config.train.seed)  # the same initial weights on every rerun
    teacher = build_teacher(config, data)
    if config.init:
        initialise_from(teacher, config.init)
    result = train(teacher, DenoisingLoss(config.objective), data, config.train, run_dir)
    use_ema(teacher, result)
    save_teacher(teacher.requires_grad_(False).eval(), output)
    conditional = data.labels is not None
    info = ModelInfo(name=config.name, description=config.description,
                     data=DataInfo(config.data.name, config.data.size, config.data.classes or None),
                     num_classes=data.num_classes if conditional else None,
                     null_label=config.objective.null_label if conditional else None)
    (output / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2))
    (output / "train_config.yaml").write_text(dump(config))
    (output / "train_summary.json").write_text(json.dumps({
        "steps": result.step, "train_seconds": round(result.seconds, 1),
        "final_loss": result.history[-1]["loss"] if result.history else None, "skipped_steps": result.skipped_steps,
    }, indent=2))
    return output, result
