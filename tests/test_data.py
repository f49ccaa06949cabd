"""Loaders: shapes, ranges, labels, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.data import TOY_SETS, array_file, digits, from_array, image_folder, load_dataset, mnist, toy_2d


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_sets_are_seeded_2d(name):
    a, b = toy_2d(name, 500, seed=3), toy_2d(name, 500, seed=3)
    assert a.x.shape == (500, 2) and a.x.dtype == torch.float32 and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, toy_2d(name, 500, seed=4).x)
    assert 0.5 < float(a.x.std()) < 3.0


def test_digits_and_mnist_are_images_in_unit_range():
    d = digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.labels.shape == (1797,) and d.num_classes == 10
    m = mnist(16)
    assert m.x.shape == (5000, 1, 16, 16) and set(m.labels.tolist()) == set(range(10))
    for data in (d, m):
        assert float(data.x.min()) == pytest.approx(-1.0) and float(data.x.max()) <= 1.0


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), 60 * i, dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    data = image_folder(tmp_path, size=8)
    assert data.x.shape == (6, 3, 8, 8) and data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.num_classes == 2
    assert float(data.x.min()) == -1.0


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        image_folder(tmp_path, size=8)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        image_folder(tmp_path / "nope", size=8)
    with pytest.raises(ValueError, match="contains no images"):
        image_folder(tmp_path, size=8)


def test_arrays_and_their_errors(tmp_path):
    np.savez(tmp_path / "points.npz", x=np.random.randn(10, 3), labels=np.arange(10) % 2)
    data = array_file(tmp_path / "points.npz")
    assert data.x.shape == (10, 3) and data.num_classes == 2
    with pytest.raises(ValueError, match=r"expected samples of shape \[N, D\] or \[N, C, H, W\], got \[10, 2, 2\]"):
        from_array(np.zeros((10, 2, 2)))
    with pytest.raises(ValueError, match="has no array 'samples'"):
        array_file(tmp_path / "points.npz", key="samples")
    with pytest.raises(FileNotFoundError, match="no such array file"):
        array_file(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
