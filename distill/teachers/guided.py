"""Classifier-free guidance as a teacher wrapper.

A guidance-conditioned student and its guided teacher take the scale ``w`` inside the condition
(``distill.conditions.with_scale``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..conditions import split_scale
from ..conventions import per_example
from .base import Teacher


class GuidedTeacher(Teacher):
    """Classifier-free guidance (Ho & Salimans 2022): ``v_w = v_uncond + w (v_cond - v_uncond)``.

    Both branches run in one batched call of the wrapped teacher. ``w = 1`` is the conditional teacher, ``w = 0``
    the unconditional one.

    Args:
        teacher: a conditional teacher.
        guidance_scale: default ``w``.
        null_cond: the unconditional input: the null class label (an int), a null embedding ([1, ...] or [B, ...]),
            or a dict of those for models conditioned on several tensors.
    """

    def __init__(self, teacher: Teacher, guidance_scale: float, null_cond):
        super().__init__()
        if not isinstance(teacher, Teacher):
            raise TypeError(f"GuidedTeacher wraps a Teacher, got {type(teacher).__name__}")
        if null_cond is None:
            raise ValueError("GuidedTeacher needs null_cond: the null class label or null embedding")
        self.teacher = teacher
        self.guidance_scale = float(guidance_scale)
        self.null_cond = null_cond
        self.t_min, self.t_max, self.sample_shape = teacher.t_min, teacher.t_max, teacher.sample_shape
        self.info = teacher.info

    @property
    def unguided(self) -> Teacher:
        return self.teacher

    def training_grid(self, steps: int, **options) -> Tensor:
        return self.teacher.training_grid(steps, **options)

    def null_condition(self):
        return self.null_cond

    def encode_prompts(self, prompts: list[str], device=None):
        return self.teacher.encode_prompts(prompts, device)

    def decode(self, x: Tensor) -> Tensor:
        return self.teacher.decode(x)

    def prompt_set(self, split: str = "train"):
        return self.teacher.prompt_set(split)

    def check_state(self, x: Tensor) -> None:
        self.teacher.check_state(x)

    def velocity(self, x: Tensor, t: Tensor | float, cond=None, guidance: Tensor | float | None = None) -> Tensor:
        """Guided velocity; ``guidance`` (a number or [B]) overrides the default scale per call or per example, and so
        does a scale carried in ``cond`` (:func:`with_scale`)."""
        cond, carried = split_scale(cond)
        guidance = carried if guidance is None else guidance
        if cond is None:
            raise ValueError("GuidedTeacher.velocity needs cond (the conditional input to guide towards)")
        t = self.check_inputs(x, t)
        batch = x.shape[0]
        w = per_example(torch.as_tensor(self.guidance_scale if guidance is None else guidance), x)
        both = self.teacher.velocity(
            torch.cat([x, x]), torch.cat([t, t]), _stack_with_null(cond, self.null_cond, batch, x.device)
        )
        v_cond, v_uncond = both[:batch], both[batch:]
        return v_uncond + w * (v_cond - v_uncond)

    def extra_repr(self) -> str:  # part of the cache key of this teacher's samples (distill.data.fingerprint)
        from ..data import digest  # a null embedding's repr elides most of its values

        null = self.null_cond if isinstance(self.null_cond, int) else digest(self.null_cond)
        return f"guidance_scale={self.guidance_scale}, null_cond={null!r}"


def guide(teacher: Teacher, scale: float | list[float] | None, null=None) -> Teacher:
    """``teacher`` itself (``scale`` None), or wrapped in classifier-free guidance at ``scale`` (a range's lower end
    is the default, which conditions carrying their own scale override). ``null``: the unconditional condition;
    default: the null class its info names."""
    if scale is None:
        return teacher
    if isinstance(scale, list):
        scale = scale[0]
    null = teacher.null_condition() if null is None else null
    if null is None:
        raise ValueError("guidance needs a class-conditional teacher whose info names its null_label "
                         "(or --null-class), or a text-to-image teacher (the empty prompt)")
    return GuidedTeacher(teacher, scale, null)


def _stack_with_null(cond, null, batch: int, device):
    """``cond`` followed by the null condition, along the batch dimension ([2B, ...])."""
    if isinstance(cond, dict):
        if not isinstance(null, dict) or set(null) - set(cond):
            raise ValueError("for dict conditions, null_cond must be a dict with a subset of the same keys")
        return {key: _stack_with_null(value, null[key], batch, device) if key in null else value
                for key, value in cond.items()}
    cond = torch.as_tensor(cond, device=device)
    null = torch.as_tensor(null, dtype=cond.dtype, device=device)
    if cond.ndim == 0 or cond.shape[0] != batch:
        raise ValueError(f"cond must have batch dimension B = {batch}, got shape {list(cond.shape)}")
    if null.ndim < cond.ndim:
        null = null.reshape(*([1] * (cond.ndim - null.ndim)), *null.shape)
    return torch.cat([cond, null.expand_as(cond)])
