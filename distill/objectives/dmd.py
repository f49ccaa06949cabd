"""Distribution matching distillation (DMD2; Yin et al. 2024a, eq. 2-3, and 2024b, §4; docs/methods.md, "Distribution
matching").

The student is a generator ``x_hat = G(z)``: its K-step sample from noise, differentiated through. Its samples are
diffused to a random ``tau``; there the teacher (the real score) and a fake-score network trained online on the
student's own samples each predict the data, and the generator follows their difference, the gradient of the reverse
KL divergence between the two distributions at that noise level:

    x_tau = (1 - tau) x_hat + tau eps,      D(x_tau) = x_tau - tau v(x_tau, tau)
    g = (D_fake - D_real) / mean|x_hat - D_real|        (per example, stop-gradient)
    L_G = 0.5 |x_hat - sg(x_hat - g)|^2                 (so dL_G / dx_hat = g)

The fake score starts as a copy of the teacher and is trained ``fake_updates`` times per generator step (the
two-time-scale rule) on detached student samples with the teacher's own denoising loss; the first of them is the
generator step's own sample, as DMD2's loop reuses it, so one fake update costs no extra generation. An optional GAN
head on the fake network's bottleneck features tells real images from the student's (non-saturating loss, DMD2 §4.2).

The objective owns the fake network, the GAN head and their optimiser: :meth:`state_dict` holds all of them, so a
killed run resumes bit-identically. The first ``warm_start_steps`` are the trajectory regression
(:class:`~distill.objectives.trajectory.TrajectoryDistillation`, whose trajectories are the training data), the cheap
substitute for DMD's regression loss; ``regression_weight`` keeps that term beside the DMD loss afterwards.
No term uses the evaluation classifiers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..conditions import split_scale
from ..conventions import per_example
from .base import Batch, LossOutput, unwrap
from .trajectory import TrajectoryConfig, TrajectoryDistillation

FAKE, HEAD = "fake", "head"  # state_dict prefixes


@dataclass
class DMDConfig(TrajectoryConfig):
    """``generator_steps``: the student's sampler lengths to train, one drawn per step (1: a one-step generator);
    ``tau_min``/``tau_max``: the diffusion times at which the scores are compared (uniform in canonical time, within
    the teacher's range); ``fake_updates``: fake-score updates per generator update; ``fake_learning_rate``;
    ``gan_weight``: weight of the generator's GAN loss (0: no GAN head); ``gan_fake_weight``: weight of the
    discriminator loss beside the fake score's; ``warm_start_steps``: trajectory regression steps before DMD;
    ``regression_weight``: weight of the regression term during DMD."""

    generator_steps: list[int] = field(default_factory=lambda: [1])
    tau_min: float = 0.02
    tau_max: float = 0.98
    fake_updates: int = 2
    fake_learning_rate: float = 1e-4
    gan_weight: float = 0.0
    gan_fake_weight: float = 1.0
    warm_start_steps: int = 0
    regression_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.tau_min < self.tau_max < 1:
            raise ValueError(f"need 0 < tau_min < tau_max < 1, got {self.tau_min}, {self.tau_max}")
        if self.fake_updates < 1 or not self.generator_steps or min(self.generator_steps) < 1:
            raise ValueError("fake_updates must be >= 1 and generator_steps a list of positive step counts")


class BottleneckFeatures:
    """Forward hook that keeps the output of a network's bottleneck (a diffusers UNet's ``mid_block``)."""

    def __init__(self, network: nn.Module):
        block = getattr(network, "mid_block", None)
        if block is None:
            raise ValueError(f"the GAN head needs a network with a mid_block (a diffusers UNet), got "
                             f"{type(network).__name__}; set gan_weight=0")
        self.value: Tensor | None = None
        block.register_forward_hook(self.keep)

    def keep(self, module, inputs, output) -> None:
        self.value = output[0] if isinstance(output, tuple) else output


def gan_head(channels: int) -> nn.Module:
    """A small discriminator on bottleneck features [B, C, h, w] -> one logit per example (DMD2's classifier head)."""
    groups = 8 if channels % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.SiLU(),
                         nn.Conv2d(channels, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(0))


class DistributionMatching(TrajectoryDistillation):
    """``objective(student, batch, step) -> LossOutput`` on the teacher's trajectories (:meth:`training_data`)."""

    config_class = DMDConfig

    def __init__(self, teacher, config: DMDConfig | None = None):
        super().__init__(teacher, config)
        self.fake: nn.Module | None = None  # built at the first DMD step (seeded) or from a checkpoint
        self.head: nn.Module | None = None
        self.features: BottleneckFeatures | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.real_data = None

    # --- auxiliary networks ----------------------------------------------------------------------------------
    def _build(self, device) -> None:
        """The fake score (a trainable copy of the teacher), the GAN head and their one optimiser."""
        self.fake = copy.deepcopy(self.teacher.unguided).to(device).requires_grad_(True).train()
        params = list(self.fake.parameters())
        if self.config.gan_weight > 0:
            self.features = BottleneckFeatures(self.fake.network)
            channels = self.fake.network.config.block_out_channels[-1]
            self.head = gan_head(channels).to(device)
            params += list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=self.config.fake_learning_rate, weight_decay=0.0)

    def _parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Tensor]:
        """Fake network, GAN head and their AdamW moments (tensors only, for safetensors)."""
        if self.fake is None:
            return {}
        state = {f"{FAKE}.{k}": v for k, v in self.fake.state_dict().items()}
        if self.head is not None:
            state.update({f"{HEAD}.{k}": v for k, v in self.head.state_dict().items()})
        for i, values in self.optimizer.state_dict()["state"].items():
            state.update({f"adam.{i}.{name}": torch.as_tensor(value) for name, value in values.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor], student: nn.Module) -> None:
        if not state:
            return
        self._build(next(unwrap(student).parameters()).device)
        self.fake.load_state_dict({k[len(FAKE) + 1:]: v for k, v in state.items() if k.startswith(FAKE + ".")})
        if self.head is not None:
            self.head.load_state_dict({k[len(HEAD) + 1:]: v for k, v in state.items() if k.startswith(HEAD + ".")})
        moments: dict[int, dict] = {}
        for key, value in state.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                moments.setdefault(int(index), {})[name] = value
        saved = self.optimizer.state_dict()
        self.optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})

    # --- the loss --------------------------------------------------------------------------------------------
    def loss(self, student, batch: Batch, step: int) -> LossOutput:
        config = self.config
        if step < config.warm_start_steps:
            return super().loss(student, batch, step)
        if self.fake is None:
            self._build(next(unwrap(student).parameters()).device)
        cond = batch.cond
        size = batch.x.shape[0]
        x_hat = self.generate(student, size, cond)  # with gradient: the generator step's sample
        metrics = self.update_fake(x_hat.detach(), cond)  # the same sample, detached, trains the fake score first
        for _ in range(config.fake_updates - 1):  # two time-scale rule: the fake score tracks the current generator
            with torch.no_grad():
                x_fake = self.generate(student, size, cond)
            metrics.update(self.update_fake(x_fake, cond))
        loss, generator_metrics = self.generator_loss(x_hat, cond)
        metrics.update(generator_metrics)
        if config.regression_weight > 0:
            regression = super().loss(student, batch, step)
            loss = loss + config.regression_weight * regression.loss
            metrics["regression"] = regression.metrics["loss"]
        return LossOutput(loss, {"loss": loss.item(), **metrics})

    def generate(self, student, size: int, cond) -> Tensor:
        """The student's K-step sample from fresh noise (K drawn from ``generator_steps``), differentiable."""
        from ..solvers import time_grid

        steps = self.config.generator_steps[int(torch.randint(len(self.config.generator_steps), ()))]
        times = time_grid(unwrap(student), steps)
        device = next(unwrap(student).parameters()).device
        x = float(times[0]) * torch.randn(size, *self.teacher.sample_shape, device=device)
        for t, s in zip(times[:-1], times[1:]):
            x = student(x, t.expand(size), s.expand(size), cond)
        return x

    def diffuse(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_tau, tau, eps)``: ``x`` moved to a uniform ``tau`` on the canonical path."""
        lo, hi = max(self.config.tau_min, self.teacher.t_min), min(self.config.tau_max, self.teacher.t_max)
        tau = lo + (hi - lo) * torch.rand(x.shape[0], dtype=torch.float64)
        eps = torch.randn_like(x)
        return per_example(1 - tau, x) * x + per_example(tau, x) * eps, tau, eps

    def update_fake(self, x_fake: Tensor, cond) -> dict[str, float]:
        """One optimiser step of the fake score (denoising loss on the student's samples) and the GAN head."""
        labels = split_scale(cond)[0]  # the fake score models the student's samples per class, unguided
        x_tau, tau, eps = self.diffuse(x_fake)
        out = self.fake(x_tau, tau, labels, raw=True)
        target = self.fake.parameterization.target(x_fake, eps, tau)
        fake_loss = (out.float() - target.float()).pow(2).mean()
        metrics = {"fake_loss": fake_loss.item()}
        loss = fake_loss
        if self.head is not None:  # the head and the fake network's encoder learn to tell real from generated
            logit_fake = self.head(self.features.value)
            x_real, real_labels = self.real_batch(x_fake.shape[0], x_fake.device)
            real_tau, real_t, _ = self.diffuse(x_real)
            self.fake(real_tau, real_t, real_labels, raw=True)
            logit_real = self.head(self.features.value)
            gan = nn.functional.softplus(logit_fake).mean() + nn.functional.softplus(-logit_real).mean()
            loss = loss + self.config.gan_fake_weight * gan
            metrics["discriminator"] = gan.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        reduce_gradients(self._parameters())
        torch.nn.utils.clip_grad_norm_(self._parameters(), 1.0)
        self.optimizer.step()
        return metrics

    def generator_loss(self, x_hat: Tensor, cond) -> tuple[Tensor, dict[str, float]]:
        """``L_G`` (DMD, eq. 7 with the normaliser of §3.3) plus the non-saturating GAN term."""
        labels = split_scale(cond)[0]
        x_tau, tau, _ = self.diffuse(x_hat.detach().float())
        # The generator follows a small difference of two scores (score_gap, its mean square, is about 1e-3 in the
        # quickstart): both run in float32 whatever the training precision, so bf16 rounding stays out of it.
        with torch.no_grad(), torch.autocast(x_hat.device.type, enabled=False):
            D_real = x_tau - per_example(tau, x_tau) * self.teacher.velocity(x_tau, tau, cond)
            D_fake = x_tau - per_example(tau, x_tau) * self.fake.velocity(x_tau, tau, labels)
            scale = (x_hat - D_real).abs().flatten(1).mean(1).clamp_min(1e-6)
            g = (D_fake - D_real) / per_example(scale.double(), x_hat)
        loss = 0.5 * (x_hat.float() - (x_hat - g).detach().float()).pow(2).mean()
        metrics = {"dmd": loss.item(), "score_gap": (D_fake - D_real).pow(2).mean().item()}
        if self.head is not None:
            x_tau_g = x_tau + per_example(1 - tau, x_hat) * (x_hat - x_hat.detach())  # x_tau, differentiable
            self.fake.requires_grad_(False)  # the generator's GAN gradient reaches x_hat, not the fake network
            try:
                self.fake(x_tau_g, tau, labels, raw=True)
                gan = nn.functional.softplus(-self.head(self.features.value)).mean()
            finally:
                self.fake.requires_grad_(True)
            loss = loss + self.config.gan_weight * gan
            metrics["gan"] = gan.item()
        return loss, metrics

    def real_batch(self, size: int, device) -> tuple[Tensor, Tensor | None]:
        """Real images (and labels, for a class-conditional teacher) from the teacher's training data."""
        if self.real_data is None:
            from ..data import load_dataset

            info = self.teacher.info.data
            if not info.name:
                raise ValueError("the GAN head needs real images: the teacher does not record its data")
            self.real_data = load_dataset(info.name, info.size, classes=info.classes)
        index = torch.randint(len(self.real_data), (size,))
        labels = None if self.real_data.labels is None or not self.teacher.info.conditional else \
            self.real_data.labels[index].to(device)
        return self.real_data.x[index].to(device), labels


def reduce_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of the objective's own networks over processes (the trainer's DDP does not see them)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
