"""An analytic teacher: a Gaussian mixture whose canonical velocity and flow map are known (float64)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..conventions import F64
from .base import Teacher, as_time_batch


class GaussianMixtureTeacher(Teacher):
    """Data ``x_data ~ sum_k w_k N(mu_k, diag(s_k^2))``; exact velocity of the canonical path.

    On ``x_t = (1 - t) x_data + t noise`` component ``k`` has marginal ``N((1 - t) mu_k, Sigma_k(t))`` with
    ``Sigma_k(t) = (1 - t)^2 s_k^2 + t^2`` (per dimension). Its conditional velocity is
    ``v_k(x) = E[noise - x_data | x, k] = (t - (1 - t) s_k^2) / Sigma_k (x - (1 - t) mu_k) - mu_k``, and the
    mixture's is ``v = sum_k r_k(x) v_k(x)`` with posterior responsibilities ``r_k``.

    With ``classes``, it is also a class-conditional teacher: ``cond`` = labels [B] restricts each example to its
    class's components (the exact conditional velocity), and the label ``num_classes`` (``info.null_label``) is
    the whole mixture, so classifier-free guidance of it (``GuidedTeacher``) is exact too.

    Args:
        means: [K, D] component means.
        stds: [K], [K, D] or a number: component standard deviations (> 0).
        weights: [K] mixture weights (normalised here); uniform when omitted.
        classes: [K] the class of each component (0 .. C - 1), or ``None`` for an unconditional teacher.
    """

    def __init__(self, means, stds, weights=None, classes=None):
        super().__init__()
        means = torch.as_tensor(means, dtype=F64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {list(means.shape)}")
        K, D = means.shape
        stds = torch.as_tensor(stds, dtype=F64)
        stds = stds.reshape(K, 1).expand(K, D) if stds.ndim == 1 else stds.expand(K, D)
        weights = torch.full((K,), 1.0 / K, dtype=F64) if weights is None else torch.as_tensor(weights, dtype=F64)
        if weights.shape != (K,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be [K] = [{K}] non-negative with a positive sum")
        if bool((stds <= 0).any()):
            raise ValueError("stds must be positive")
        self.register_buffer("means", means.clone())
        self.register_buffer("stds", stds.clone())
        self.register_buffer("weights", weights / weights.sum())
        self.sample_shape = (D,)
        if classes is not None:
            classes = torch.as_tensor(classes, dtype=torch.long)
            if classes.shape != (K,) or bool((classes < 0).any()):
                raise ValueError(f"classes must be [K] = [{K}] labels >= 0, got {classes.tolist()}")
        self.register_buffer("classes", None if classes is None else classes.clone())
        if classes is not None:
            count = int(classes.max()) + 1
            self.info = {"num_classes": count, "null_label": count}

    # --- the marginal at time t ---------------------------------------------------------------------------
    def _components(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example component means ``(1 - t) mu`` and variances ``Sigma``, both [B, K, D]."""
        a = (1 - t)[:, None, None]
        b = t[:, None, None]
        return a * self.means, a**2 * self.stds**2 + b**2

    def _log_joint(self, x: Tensor, t: Tensor) -> Tensor:
        """``log w_k + log N(x; (1 - t) mu_k, Sigma_k)``, [B, K]."""
        mean, var = self._components(t)
        diff = x[:, None, :] - mean
        log_normal = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
        return self.weights.log() + log_normal

    def log_density(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Exact log-density of ``x_t`` at canonical ``t``, [B] (float64)."""
        x = x.to(F64)
        return torch.logsumexp(self._log_joint(x, as_time_batch(t, x.shape[0], "log_density")), dim=1)

    def velocity(self, x: Tensor, t: Tensor | float, cond=None) -> Tensor:
        t = self.check_inputs(x, t).to(x.device)
        return self._velocity64(x.to(F64), t, self._class_mask(cond, x.shape[0])).to(x.dtype)

    def _class_mask(self, cond, batch: int) -> Tensor | None:
        """[B, K]: which components each example's class allows (``None``: all, for every example)."""
        if cond is None:
            return None
        if self.classes is None:
            raise ValueError("this GaussianMixtureTeacher is unconditional (no classes): call velocity without cond")
        labels = torch.as_tensor(cond, device=self.means.device).long().expand(batch)
        null = self.info.null_label
        if bool(((labels < 0) | (labels > null)).any()):
            raise ValueError(f"class labels must lie in 0 .. {null} ({null}: unconditional), got {labels.tolist()}")
        return (labels[:, None] == self.classes[None]) | (labels[:, None] == null)

    def _velocity64(self, x: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
        mean, var = self._components(t)
        coefficient = (t[:, None, None] - (1 - t[:, None, None]) * self.stds**2) / var  # [B, K, D]
        v_k = coefficient * (x[:, None, :] - mean) - self.means  # [B, K, D]
        log_joint = self._log_joint(x, t)
        if mask is not None:  # the class's components only: p(x_t | class)
            log_joint = log_joint.masked_fill(~mask, float("-inf"))
        r = torch.softmax(log_joint, dim=1)  # [B, K]
        return (r[:, :, None] * v_k).sum(1)

    # --- data and the reference flow map --------------------------------------------------------------------
    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws of ``x_data``, [n, D] float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], dtype=F64, generator=generator)
        return self.means[k] + self.stds[k] * z

    def flow_map(self, x: Tensor, t: Tensor | float, s: Tensor | float, steps: int = 512) -> Tensor:
        """Reference flow map ``X(x, t, s)``: the ODE state at ``s`` of the trajectory through ``x`` at ``t``.

        Classical RK4 in float64 on ``dx/du = (s - t) v(x, t + u (s - t))``, ``u in [0, 1]``, so every example
        has its own ``(t, s)``. ``steps = 512`` is accurate to ~1e-10 on well-separated mixtures with stds >= 0.05.

        Args:
            x: [B, D]; t, s: numbers or [B] tensors in [0, 1] (either order).
        """
        t = as_time_batch(t, x.shape[0], "flow_map").to(x.device)
        s = as_time_batch(s, x.shape[0], "flow_map").to(x.device)
        y = x.to(F64)
        span = (s - t)[:, None]
        h = 1.0 / steps

        def f(state: Tensor, u: float) -> Tensor:
            return span * self._velocity64(state, t + u * (s - t))

        for i in range(steps):
            u = i * h
            k1 = f(y, u)
            k2 = f(y + 0.5 * h * k1, u + 0.5 * h)
            k3 = f(y + 0.5 * h * k2, u + 0.5 * h)
            k4 = f(y + h * k3, u + h)
            y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        return y.to(x.dtype)
