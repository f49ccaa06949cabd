"""Students that read their network's output by another rule than the teacher's (docs/methods.md, "Output
parameterisation").

A student copied from an epsilon-predicting teacher keeps its jump ``X = p x + q eps_hat`` with ``|q| ~ (t - s) /
(1 - t)``: about 157 on the first jump of a linear-beta DDPM, so the network must reproduce its input to 1/157.
Each class here reads the same network's raw output ``out`` (on the teacher's own input ``c_in x`` and timestep) so
that the gain ``|q|`` is at most 1 on every jump. At initialisation ``out`` is still the teacher's prediction: a short
conversion (``objective.conversion_steps``) teaches the copied network its new output before distillation.

Every rule is ``F(x, t, s) = a(t) x + b(t) out`` (:meth:`TeacherFlowMap.output_coefficients`), which the exporters bake.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..conventions import per_example
from .teacher_network import TeacherFlowMap


class VelocityFlowMap(TeacherFlowMap):
    """The network outputs the average velocity itself, ``F = out``: gain ``t - s <= 1`` (MeanFlow's and the
    flow-map students' native head; what a flow-matching teacher's student has anyway)."""

    output_rule = "velocity"

    def velocity_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return out


class DataFlowMap(TeacherFlowMap):
    """The "DDIM form" ``X(x, t, s) = (s / t) x + (1 - s / t) D`` with ``D = out`` a direct data prediction (Kim et al.
    2023, CTM eq. 5), so ``F = (x - D) / t`` and the gain on ``X`` is ``1 - s / t <= 1``."""

    output_rule = "data"

    def data_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """float64 [B] ``(c_skip, c_out)`` of ``D = c_skip x + c_out out``."""
        return torch.zeros_like(t), torch.ones_like(t)

    def velocity_from_output(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        c_skip, c_out = self.data_coefficients(t.to(torch.float64))
        D = per_example(c_skip, x) * x + per_example(c_out, x) * out
        return (x - D) / per_example(t.to(torch.float64), x)  # noise_hat - x_data_hat = (x - D) / t


class PreconditionedFlowMap(DataFlowMap):
    """The DDIM form with EDM's preconditioning (Karras et al. 2022, eq. 7 and Table 1) on the canonical path
    ``x = alpha x_data + sigma noise``, ``alpha = 1 - t``, ``sigma = t``:

        c_skip = alpha sigma_d^2 / (alpha^2 sigma_d^2 + sigma^2)
        c_out = sigma sigma_d / sqrt(alpha^2 sigma_d^2 + sigma^2)

    so the network's target has unit variance at every ``t``, ``F``'s coefficients stay bounded as ``t -> 0``
    (``a -> -1``, ``b -> -1``) and the gain on ``X`` is ``(1 - s / t) c_out <= sigma_d``."""

    output_rule = "preconditioned"
    sigma_data = 0.5

    def data_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma, sd2 = 1 - t, t, self.sigma_data**2
        norm = alpha**2 * sd2 + sigma**2
        return alpha * sd2 / norm, sigma * self.sigma_data / norm.sqrt()
