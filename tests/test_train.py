"""The training loop: resume after a kill equals an uninterrupted run; corrupted checkpoints are refused;
non-finite losses never reach the weights."""

from __future__ import annotations

import pytest
import torch

from distill.data import toy_2d
from distill.nets import VelocityMLP
from distill.objectives import DenoisingConfig, DenoisingLoss
from distill.teachers import ModuleTeacher
from distill.train import CheckpointError, TrainConfig, train

SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0}


def tiny_teacher() -> ModuleTeacher:
    torch.manual_seed(0)
    return ModuleTeacher.from_scheduler_config(VelocityMLP(hidden=16, depth=2, embedding_dim=8), SCHEDULER,
                                               (2,)).requires_grad_(True)


def config(**changes) -> TrainConfig:
    base = dict(steps=6, batch_size=32, learning_rate=1e-2, warmup_steps=1, checkpoint_every=3, log_every=1,
                progress=False, ema_decays=[0.9, 0.99])
    return TrainConfig(**{**base, **changes})


class KilledError(RuntimeError):
    pass


def objective_killed_at(step_to_die: int):
    loss = DenoisingLoss(DenoisingConfig(time_sampling="uniform"))

    def objective(model, batch, step):
        if step == step_to_die:
            raise KilledError
        return loss(model, batch, step)

    return objective


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    data = toy_2d("two-moons", 256)
    objective = DenoisingLoss(DenoisingConfig(time_sampling="uniform"))
    straight = tiny_teacher()
    result = train(straight, objective, data, config(), tmp_path / "straight")

    interrupted = tiny_teacher()
    with pytest.raises(KilledError):
        train(interrupted, objective_killed_at(4), data, config(), tmp_path / "resumed")
    resumed = tiny_teacher()  # a fresh process; other initial weights, so only the checkpoint can make them equal
    with torch.no_grad():
        for parameter in resumed.parameters():
            parameter.add_(1.0)
    resumed_result = train(resumed, objective, data, config(), tmp_path / "resumed")
    for name, value in weights(straight).items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    for decay in (0.9, 0.99):
        for name, value in result.ema[decay].items():
            assert torch.equal(value, resumed_result.ema[decay][name])
    assert [r["step"] for r in resumed_result.history] == list(range(1, 7))


def test_partial_checkpoint_is_ignored_and_corruption_is_refused(tmp_path):
    data = toy_2d("two-moons", 256)
    objective = DenoisingLoss(DenoisingConfig(time_sampling="uniform"))
    with pytest.raises(KilledError):
        train(tiny_teacher(), objective_killed_at(4), data, config(), tmp_path)
    (tmp_path / ".checkpoint-00000006.partial").mkdir()  # a write killed half-way leaves only this behind
    (tmp_path / ".checkpoint-00000006.partial" / "model.safetensors").write_bytes(b"\0" * 10)
    latest = tmp_path / (tmp_path / "latest").read_text()
    weights_file = latest / "model.safetensors"
    blob = bytearray(weights_file.read_bytes())
    blob[-5] ^= 0xFF
    weights_file.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="model.safetensors is missing, truncated or altered"):
        train(tiny_teacher(), objective, data, config(), tmp_path)
    weights_file.write_bytes(bytes(blob[:100]))  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        train(tiny_teacher(), objective, data, config(), tmp_path)


def test_non_finite_losses_are_skipped_then_stop(tmp_path):
    data = toy_2d("two-moons", 256)
    loss = DenoisingLoss(DenoisingConfig(time_sampling="uniform"))

    def sometimes_nan(model, batch, step):
        out = loss(model, batch, step)
        return type(out)(out.loss * float("nan"), out.metrics) if step in (1, 2) else out

    model = tiny_teacher()
    result = train(model, sometimes_nan, data, config(checkpoint_every=100), tmp_path / "a")
    assert result.skipped_steps == 2 and all(torch.isfinite(v).all() for v in model.state_dict().values())

    def always_nan(model, batch, step):
        out = loss(model, batch, step)
        return type(out)(out.loss * float("nan"), out.metrics)

    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        train(tiny_teacher(), always_nan, data, config(max_bad_steps=3), tmp_path / "b")


def test_cosine_reaches_its_floor_at_decay_steps_and_stays_there():
    from distill.train import _lr_lambda

    schedule = TrainConfig(steps=100, learning_rate=1e-3, warmup_steps=10, lr_decay="cosine", decay_steps=60,
                           min_learning_rate=1e-4)
    factor = _lr_lambda(schedule)
    rates = [1e-3 * factor(step) for step in range(100)]
    assert rates[9] == pytest.approx(1e-3) and rates[35] == pytest.approx(5.5e-4)  # half way: the mean of the ends
    assert all(rate == pytest.approx(1e-4) for rate in rates[60:])
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    plain = _lr_lambda(TrainConfig(steps=100, warmup_steps=10, lr_decay="cosine"))
    assert plain(99) == pytest.approx(0.0, abs=1e-3) and plain(55) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="decay_steps must come after warmup_steps"):
        TrainConfig(steps=100, warmup_steps=10, decay_steps=5)


def test_an_ema_decay_added_on_resume_starts_from_the_resumed_weights(tmp_path):
    """A decay the checkpoint does not hold begins at the checkpoint's weights, not at the initial ones."""
    data = toy_2d("two-moons", 256)
    objective = DenoisingLoss(DenoisingConfig(time_sampling="uniform"))
    first = tiny_teacher()
    train(first, objective, data, config(steps=3, ema_decays=[0.9]), tmp_path / "run")
    resumed = tiny_teacher()
    result = train(resumed, objective, data, config(steps=3, ema_decays=[0.9, 0.5]), tmp_path / "run")
    trained = dict(first.named_parameters())
    for name, value in result.ema[0.5].items():
        assert torch.equal(value, trained[name].detach().float()), name


def test_a_second_training_in_one_process_may_change_precision():
    """Accelerate refuses a second Accelerator of another precision in one process; train() releases the old one."""
    from accelerate import Accelerator

    from distill.train import release_other_precision

    Accelerator(mixed_precision="no")
    release_other_precision("bf16")
    assert Accelerator(mixed_precision="bf16").mixed_precision == "bf16"
    release_other_precision("no")
    assert Accelerator(mixed_precision="no").mixed_precision == "no"


def test_bf16_falls_back_to_float32_on_a_cpu_without_bf16(monkeypatch):
    """Emulated bf16 is an order of magnitude slower than float32: on a CPU without bf16 instructions the loop trains
    in float32 and says so; where the CPU has them (or on a GPU), the config's precision is kept."""
    from distill.train import supported_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        assert supported_precision("bf16") == "no"
    assert supported_precision("no") == "no"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert supported_precision("bf16") == "bf16"
