"""Conditions: what a model is conditioned on. ``None``, a tensor with a batch dimension (class labels, text
embeddings), or a dict of them; a guidance-conditioned student and its guided teacher also carry the classifier-free
guidance scale ``w`` inside it (docs/methods.md, Guidance): ``with_scale(labels, w)`` is ``{"cond": labels,
"guidance_scale": w}``, so every batch helper (repeats, rows, device moves) treats it like any other dict."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

SCALE_KEY = "guidance_scale"


def with_scale(cond, scale: Tensor | float) -> dict:
    """``cond`` plus a guidance scale ``w`` per example ([B] float, or a number for the whole batch)."""
    if cond is None:
        raise ValueError("a guidance scale needs a condition to guide towards (class labels, ...)")
    return {"cond": cond, SCALE_KEY: scale}


def split_scale(cond) -> tuple:
    """``(cond, w)`` from a condition made by :func:`with_scale`; ``(cond, None)`` for any other condition."""
    if isinstance(cond, dict) and SCALE_KEY in cond:
        return cond["cond"], cond[SCALE_KEY]
    return cond, None


def map_condition(function: Callable, cond):
    """``function`` applied to every leaf of a condition (a dict's values, recursively); ``None`` stays ``None``."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {key: map_condition(function, value) for key, value in cond.items()}
    return function(cond)
