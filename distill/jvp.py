"""Jacobian-vector products behind one function: forward mode, the double-backward trick, or a central finite
difference, with an automatic choice that works through diffusers UNets on the CPU (docs/methods.md, "JVP").

Objectives use the JVP inside a stop-gradient target (MeanFlow, sCD, Eulerian maps), so the result is detached by
default. Call it on the unwrapped module (``model.module`` under DistributedDataParallel): no gradient flows through
a detached JVP, so nothing bypasses gradient synchronisation; the loss's own forward pass goes through the wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

JVP_MODES = ("auto", "forward", "double_backward", "finite_difference")
_AUTO_CHOICE: dict[int, str] = {}  # id(fn) -> the mode that worked for it


def _math_attention():
    """Neither forward-mode AD nor double backward has a rule for the fused scaled-dot-product kernels: force the
    math implementation."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # older torch
        return nullcontext()


def _forward(fn, primals, tangents) -> tuple[Tensor, Tensor]:
    with _math_attention():
        primals = tuple(p.detach().contiguous() for p in primals)
        tangents = tuple(t.detach().contiguous() for t in tangents)
        return torch.func.jvp(fn, primals, tangents)


def _double_backward(fn, primals, tangents) -> tuple[Tensor, Tensor]:
    # d/du <J^T u, v> = J v (Pearlmutter 1994): two reverse passes, no forward-mode rules needed.
    # The fused attention kernels' backward has no derivative either: the math implementation has both.
    primals = tuple(p.detach().requires_grad_(True) for p in primals)
    with torch.enable_grad(), _math_attention():
        output, product = torch.autograd.functional.jvp(fn, primals, tangents, create_graph=False, strict=False)
    return output, product


def _finite_difference(fn, primals, tangents, eps: float) -> tuple[Tensor, Tensor]:
    # central difference (f(x + eps v) - f(x - eps v)) / (2 eps): O(eps^2) error, three evaluations.
    with torch.no_grad():
        plus = fn(*(p + eps * t for p, t in zip(primals, tangents)))
        minus = fn(*(p - eps * t for p, t in zip(primals, tangents)))
        return fn(*primals), (plus - minus) / (2 * eps)


def jvp(
    fn: Callable[..., Tensor],
    primals: tuple[Tensor, ...],
    tangents: tuple[Tensor, ...],
    mode: str = "auto",
    eps: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """``(fn(*primals), J_fn(primals) @ tangents)``, both detached.

    Args:
        fn: a function of tensors returning one tensor (e.g. ``lambda x, t, s: student.F(x, t, s)``).
        primals, tangents: tuples of the same length and shapes.
        mode: ``"forward"`` (``torch.func.jvp``, math attention), ``"double_backward"``
            (``torch.autograd.functional.jvp``), ``"finite_difference"`` (central, step ``eps``), or ``"auto"``:
            forward mode, falling back to double backward and then finite differences when a mode raises; the
            choice is remembered per ``fn``.
    """
    if mode not in JVP_MODES:
        raise ValueError(f"unknown JVP mode {mode!r}; use one of {', '.join(JVP_MODES)}")
    if len(primals) != len(tangents) or any(p.shape != t.shape for p, t in zip(primals, tangents)):
        raise ValueError("primals and tangents must be tuples of tensors with matching shapes")
    if mode == "auto":
        return _auto(fn, primals, tangents, eps)
    output, product = _run(mode, fn, primals, tangents, eps)
    return output.detach(), product.detach()


def _run(mode: str, fn, primals, tangents, eps: float) -> tuple[Tensor, Tensor]:
    if mode == "forward":
        return _forward(fn, primals, tangents)
    if mode == "double_backward":
        return _double_backward(fn, primals, tangents)
    return _finite_difference(fn, primals, tangents, eps)


def _auto(fn, primals, tangents, eps: float) -> tuple[Tensor, Tensor]:
    key = id(fn)
    order = ["forward", "double_backward", "finite_difference"]
    if key in _AUTO_CHOICE:  # the mode that worked last time first; the others stay as fallbacks
        order.remove(_AUTO_CHOICE[key])
        order.insert(0, _AUTO_CHOICE[key])
    errors = []
    for mode in order:
        try:
            output, product = _run(mode, fn, primals, tangents, eps)
        except (RuntimeError, NotImplementedError) as error:
            errors.append(f"{mode}: {str(error).splitlines()[0]}")
            continue
        _AUTO_CHOICE[key] = mode
        return output.detach(), product.detach()
    raise RuntimeError("no JVP mode worked: " + "; ".join(errors))


def chosen_mode(fn: Callable) -> str | None:
    """The mode ``jvp(fn, ..., mode="auto")`` settled on, if it has run."""
    return _AUTO_CHOICE.get(id(fn))
