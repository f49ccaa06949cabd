"""Looking at generators: sample grids and scatter plots (quality-vs-NFE tables come with the metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def save_samples(samples: Tensor, path: str | Path, **metadata) -> Path:
    """Write samples as ``.npz`` (array ``samples`` plus metadata) or ``.png`` (an image grid for [N, C, H, W] in
    [-1, 1], a scatter plot for [N, 2]).

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
            _image_grid(array).save(path)
        elif array.ndim == 2 and array.shape[1] == 2:
            _scatter(array, path, str(metadata.get("title", "")))
        else:
            raise ValueError(f"cannot draw samples of shape {list(array.shape)} as PNG: write .npz instead")
    else:
        raise ValueError(f"unknown output type {path.suffix!r} for {path}: use .png or .npz")
    return path


def _image_grid(images: np.ndarray):
    """[N, C, H, W] in [-1, 1] -> one PIL image with the samples tiled in a near-square grid."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2) + 2, cols * (w + 2) + 2, c), dtype=np.uint8)
    pixels = ((images.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)  # [N, H, W, C]
    for i, image in enumerate(pixels):
        r, q = divmod(i, cols)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + q * (w + 2): 2 + q * (w + 2) + w] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


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
