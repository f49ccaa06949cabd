"""Quality versus NFE for teachers (and, later, students beside them), sample grids and plots.

An :class:`Evaluation` fixes what every generator is judged against: the same noise (and class labels), the real
data's features, and the teacher's accurate ODE solution from that noise (cached on disk: it does not change).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..conditions import with_scale
from ..data import Dataset, load_dataset, teacher_samples
from ..model_info import DataInfo
from ..prompts import conditions_in_turn
from ..solvers import SOLVERS, sample, solver_nfe, steps_for_nfe, time_grid
from . import metrics

DEFAULT_NFE = (1, 2, 4, 8, 16, 32, 64)
CLASSIFIER_FOR_DATA = {("mnist", 16): "mnist16", ("mnist", 32): "mnist16",  # 32x32 is averaged down to 16x16
                       ("digits", None): "digits8", ("digits", 8): "digits8", ("digits", 16): "digits16"}
REFERENCE_SOLVER, REFERENCE_STEPS = "dpmpp2m", 64  # the accurate solution fidelity is measured against


@dataclass
class EvalRow:
    """One generator at one budget (keys of docs/design.md §4's eval report)."""

    model: str
    kind: str
    solver: str
    nfe: int
    fd: float | None = None
    swd: float | None = None
    confident: float | None = None
    class_entropy: float | None = None
    agreement: float | None = None  # share classified as the requested class (class-conditional generators)
    fidelity_rmse: float | None = None
    seconds: float = 0.0
    guidance: float | None = None  # the classifier-free guidance scale w (None: unguided)


class Evaluation:
    """Shared ground truth for judging generators of one teacher's data.

    Args:
        teacher: the teacher (its ``info`` names the data; ``data`` overrides).
        samples: number of generated samples per row.
        seed: seeds the noise and class labels.
        data: dataset name (``distill.data.load_dataset``) when the teacher's ``info`` lacks it, or a dict like a
            teacher's ``info.data`` (name, size, classes) to judge it against other data.
        progress: print progress lines to stderr.
        guidance: a classifier-free guidance scale ``w``: the teacher is guided at ``w`` (its ``info.null_label``
            is the unconditional class, or a text-to-image teacher's empty prompt), and guidance-conditioned
            students are asked for ``w``.
        prompts: for a text-to-image teacher, the prompt dataset to judge on (default: the held-out phrasings of
            its folder's ``prompts.json``, whose classes prompt agreement is measured against). Latent samples are
            judged after the teacher's VAE decodes them.
    """

    def __init__(self, teacher, samples: int = 1000, seed: int = 0, data: str | dict | None = None,
                 progress: bool = True, guidance: float | None = None, prompts: str | None = None):
        if teacher.sample_shape is None:
            raise ValueError("the teacher does not declare its sample shape; evaluate it from Python")
        if guidance is not None:
            from ..teachers.guided import guide

            teacher = guide(teacher, float(guidance))
        self.guidance = guidance
        self.teacher, self.samples, self.seed, self.progress = teacher, samples, seed, progress
        info = teacher.info.data if data is None else DataInfo.from_json(data)
        if info.name is None:
            raise ValueError("unknown data for this teacher: pass data= (e.g. mnist, digits, checkerboard)")
        self.data_name, self.data_size, self.data_classes = info.name, info.size, info.classes
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(samples, *teacher.sample_shape, generator=generator)
        self.cond, self.labels = conditions_in_turn(teacher, samples, prompts, "held_out",
                                                    teacher.info.replace(data=info))
        self.is_image = len(teacher.sample_shape) == 3
        self.classifier = self._classifier() if self.is_image else None
        self.real = self._real_data()
        self.real_features, self.floor_features = self._reference_features()
        self._reference: Tensor | None = None

    def _classifier(self) -> metrics.BundledClassifier | None:
        name = CLASSIFIER_FOR_DATA.get((self.data_name, self.data_size))
        return None if name is None else metrics.BundledClassifier(name)

    def _reference_features(self) -> tuple[Tensor | None, Tensor | None]:
        """Classifier features of two disjoint random halves of a fixed image set: generated samples are compared
        with the first, and the second gives the real-versus-real floor at a comparable size."""
        if self.classifier is None:
            return None, None
        order = torch.randperm(len(self.real), generator=torch.Generator().manual_seed(self.seed))
        half = len(order) // 2
        features = self.classifier.run(self.real.x[order[: 2 * half]])[0]
        return features[:half], features[half:]

    def _real_data(self, seed_offset: int = 1) -> Dataset:
        """A real draw: exact samples of an analytic teacher, a fresh draw of a sampled set, or a fixed image set
        whole (its size ignores ``samples``)."""
        seed = self.seed + seed_offset
        exact = self.teacher.sample_data(self.samples, torch.Generator().manual_seed(seed))
        if exact is not None:
            return Dataset(exact.float(), name=self.data_name)
        return load_dataset(self.data_name, self.data_size, n=self.samples, seed=seed, classes=self.data_classes)

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    # --- the teacher's accurate solution from the evaluation noise, cached ------------------------------------
    def reference(self) -> Tensor:
        """The teacher's accurate ODE solution from the evaluation noise (cached on disk)."""
        if self._reference is None:
            self._reference = self.generate_with_solver(REFERENCE_SOLVER, REFERENCE_STEPS).x
        return self._reference

    def generate_with_solver(self, solver: str, steps: int) -> Dataset:
        """The teacher's samples from the evaluation noise (cached: they do not change)."""
        return teacher_samples(self.teacher, self.noise, self.cond, solver, steps, progress=self.progress)

    # --- judging ------------------------------------------------------------------------------------------
    def score(self, x: Tensor, model: str, kind: str, solver: str, nfe: int, seconds: float) -> EvalRow:
        row = EvalRow(model, kind, solver, nfe, seconds=round(seconds, 3), guidance=self.guidance)
        if self.classifier is not None:
            scores = metrics.image_metrics(self.teacher.decode(x), self.real_features, self.classifier, self.labels)
            row.fd, row.confident, row.class_entropy = scores["fd"], scores["confident"], scores["class_entropy"]
            row.agreement = scores.get("agreement")
        elif not self.is_image:
            row.swd = metrics.sliced_wasserstein(x, self.real.x)
        row.fidelity_rmse = metrics.fidelity_rmse(x, self.reference())
        return row

    def teacher_rows(self, solvers=tuple(SOLVERS), nfes=DEFAULT_NFE, name: str = "teacher") -> list[EvalRow]:
        rows, done = [], set()
        for solver in solvers:
            for nfe in nfes:
                steps = steps_for_nfe(solver, nfe)
                if (solver, steps) in done:  # heun at NFE 1 and 2 is the same single step
                    continue
                done.add((solver, steps))
                generated = self.generate_with_solver(solver, steps)
                used = solver_nfe(solver, time_grid(self.teacher, steps))
                rows.append(self.score(generated.x, name, "teacher", solver, used, generated.seconds))
                self.log(f"  {solver:8s} NFE {used:3d}: " + _row_text(rows[-1]))
        return rows

    def student_rows(self, student, nfes=DEFAULT_NFE, name: str = "student", gamma: float = 0.0) -> list[EvalRow]:
        """A flow-map student from the evaluation noise, ``nfe`` jumps on the uniform grid (one call each)."""
        rows = []
        asks = self.guidance is not None and student.guidance_conditioned  # else w is baked into the student
        cond = with_scale(self.cond, self.guidance) if asks else self.cond
        for nfe in nfes:
            start = time.perf_counter()
            x = sample(student, self.noise, steps=nfe, cond=cond, gamma=gamma,
                       generator=torch.Generator().manual_seed(self.seed + 7))
            rows.append(self.score(x, name, "student", "flow_map", nfe, time.perf_counter() - start))
            self.log(f"  student  NFE {nfe:3d}: " + _row_text(rows[-1]))
        return rows

    def side_by_side(self, student=None, solvers=tuple(SOLVERS), nfes=DEFAULT_NFE, reference_nfe=(),
                     teacher_name: str = "teacher", student_name: str = "student") -> list[EvalRow]:
        """The rows every command shows: the teacher's ``solvers`` at ``nfes``, its best-case reference
        (:data:`REFERENCE_SOLVER` at ``reference_nfe``), then the student (if any) at the same NFE."""
        rows = self.teacher_rows(solvers, nfes, name=teacher_name)
        if reference_nfe:
            rows += self.teacher_rows([REFERENCE_SOLVER], reference_nfe, name=teacher_name)
        if student is not None:
            rows += self.student_rows(student, nfes, name=student_name)
        return rows

    def data_floor(self) -> dict[str, float]:
        """What a perfect generator would score: for a fixed image set, FD of its second half against the first (the
        reference of generated samples); for a sampled set, SWD between two fresh draws of the evaluation's size."""
        if self.classifier is not None:
            return {"fd": metrics.frechet_distance(self.floor_features, self.real_features),
                    "samples": len(self.floor_features)}
        other = self._real_data(seed_offset=2).x
        return {"swd": metrics.sliced_wasserstein(other, self.real.x), "samples": self.samples}


def _row_text(row: EvalRow) -> str:
    parts = [f"{k} {v:.4g}" for k, v in asdict(row).items()
             if k in ("fd", "swd", "confident", "class_entropy", "agreement", "fidelity_rmse", "seconds")
             and v is not None]
    return ", ".join(parts)


def report(evaluation: Evaluation, rows: list[EvalRow]) -> dict:
    """The eval report of docs/design.md §4."""
    return {"dataset": evaluation.data_name, "samples": evaluation.samples, "rows": [asdict(r) for r in rows],
            "data_floor": evaluation.data_floor()}


def markdown_table(rows: list[EvalRow]) -> str:
    columns = ["model", "solver", "guidance", "nfe", "fd", "swd", "confident", "class_entropy", "agreement",
               "fidelity_rmse", "seconds"]
    used = [c for c in columns if any(getattr(r, c) is not None for r in rows)]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    for row in rows:
        cells = [_cell(getattr(row, c)) for c in used]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_quality(rows: list[EvalRow], path: str | Path, metric: str | None = None, title: str = "") -> Path:
    """Quality versus NFE, one line per (model, solver), log2 NFE axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or ("fd" if any(r.fd is not None for r in rows) else "swd")
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key in dict.fromkeys((r.model, r.solver, r.guidance) for r in rows):
        points = sorted((r.nfe, getattr(r, metric)) for r in rows if (r.model, r.solver, r.guidance) == key)
        scale = "" if key[2] is None else f", w={key[2]:g}"
        ax.plot(*zip(*points), marker="o", label=f"{key[0]} ({key[1]}{scale})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric.upper())
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------
# Looking at samples
# ------------------------------------------------------------------------------------------------------------
def save_samples(samples: Tensor, path: str | Path, columns: int | None = None, **metadata) -> Path:
    """Write samples as ``.npz`` (array ``samples`` plus metadata) or ``.png`` (an image grid for [N, C, H, W] in
    [-1, 1], ``columns`` per row or near-square; a scatter plot for [N, 2]).

    Raises:
        ValueError: for another suffix, or a PNG of a shape that is neither images nor 2-D points.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = samples.detach().to(torch.float32).cpu().numpy()
    if path.suffix == ".npz":
        np.savez(path, samples=array, **{k: np.asarray(v) for k, v in metadata.items()})
    elif path.suffix == ".png":
        if array.ndim == 4 and array.shape[1] in (1, 3):
            _image_grid(array, columns=columns).save(path)
        elif array.ndim == 2 and array.shape[1] == 2:
            _scatter(array, path, str(metadata.get("title", "")))
        else:
            raise ValueError(f"cannot draw samples of shape {list(array.shape)} as PNG: write .npz instead")
    else:
        raise ValueError(f"unknown output type {path.suffix!r} for {path}: use .png or .npz")
    return path


def _image_grid(images: np.ndarray, scale: int = 2, columns: int | None = None):
    """[N, C, H, W] in [-1, 1] -> one PIL image with the samples tiled ``columns`` per row (default: near-square)."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2, c), dtype=np.uint8)
    pixels = ((images.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)  # [N, H, W, C]
    for i, image in enumerate(pixels):
        r, q = divmod(i, cols)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + q * (w + 2): 2 + q * (w + 2) + w] = image
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def _scatter(points: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.6)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
