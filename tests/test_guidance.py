"""Guidance-distilled students: the scale w rides in the condition, a zero-initialised embedding carries it into the
network, w = 1 is the unguided conditional teacher, and a student trained on guided trajectories learns each w."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distill.conditions import split_scale, with_scale
from distill.objectives import Batch, TrajectoryConfig, TrajectoryDistillation
from distill.solvers import sample
from distill.students import FlowMap, load_student
from distill.teachers import DiffusersTeacher, GaussianMixtureTeacher, GuidedTeacher

from .conftest import tiny_unet

NULL = 4


def teacher() -> DiffusersTeacher:
    """A class-conditional flow-matching UNet (random weights: its trajectories stay of order one)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = DiffusersTeacher(tiny_unet(num_class_embeds=NULL + 1), FlowMatchEulerDiscreteScheduler(shift=1.0))
    model.info = {"num_classes": NULL, "null_label": NULL}
    return model.requires_grad_(False)


def inputs(batch: int = 4):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 8, generator=generator)
    return x, torch.full((batch,), 0.8), torch.full((batch,), 0.3), torch.arange(batch) % NULL


def test_scale_one_in_the_condition_is_the_unguided_conditional_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    plain = teacher()
    guided = GuidedTeacher(plain, 3.0, NULL)
    x, t, _, labels = inputs()
    with torch.no_grad():
        v_cond, v_null = plain.velocity(x, t, labels), plain.velocity(x, t, torch.full_like(labels, NULL))
        assert torch.allclose(guided.velocity(x, t, with_scale(labels, torch.ones(4))), v_cond, atol=1e-5)
        w = torch.tensor([1.0, 2.0, 3.0, 4.0])
        expected = v_null + w[:, None, None, None] * (v_cond - v_null)
        assert torch.allclose(guided.velocity(x, t, with_scale(labels, w)), expected, atol=1e-5)
    # trajectories drawn at w = 1 are the unguided conditional teacher's, and the data keep each w
    config = TrajectoryConfig(trajectories=8, steps=4, stride=2)
    unguided = TrajectoryDistillation(plain, config).training_data(progress=False)
    at_one = TrajectoryDistillation(plain, dataclasses.replace(config, guidance=[1.0, 1.0])).training_data(False)
    assert torch.allclose(at_one.x, unguided.x, atol=1e-5) and torch.equal(at_one.labels, unguided.labels)
    assert torch.equal(at_one.guidance, torch.ones(8))
    cond, scale = split_scale(at_one.condition(torch.tensor([2, 5])))
    assert torch.equal(cond, unguided.labels[[2, 5]]) and torch.equal(scale, torch.ones(2))
    # a guided teacher's cached samples are keyed by its scale
    noise = torch.randn(3, 3, 8, 8)
    from distill.data import teacher_samples

    at_two = teacher_samples(GuidedTeacher(plain, 2.0, NULL), noise, labels[:3], "euler", 2, progress=False)
    at_three = teacher_samples(GuidedTeacher(plain, 3.0, NULL), noise, labels[:3], "euler", 2, progress=False)
    assert not torch.allclose(at_two.x, at_three.x)


def test_guidance_embedding_starts_at_zero_and_reaches_the_network():
    plain = FlowMap.from_teacher(teacher())
    student = FlowMap.from_teacher(teacher()).add_guidance_embedding(default=2.0)
    assert len(student.guidance_embeddings) == len(student.gap_embeddings) == 1
    x, t, s, labels = inputs()
    with torch.no_grad():
        reference = plain(x, t, s, labels)
        for w in (1.0, 3.0):
            assert torch.equal(student(x, t, s, with_scale(labels, w)), reference)
        torch.manual_seed(1)
        for embedding in student.guidance_embeddings:
            embedding.mlp[-1].weight.normal_(0, 0.05)
        at = {w: student(x, t, s, with_scale(labels, torch.full((4,), w))) for w in (1.0, 2.0, 3.0)}
        assert (at[1.0] - at[3.0]).abs().max() > 1e-3
        assert torch.equal(student(x, t, s, labels), at[2.0])  # no scale given: the default
    with pytest.raises(ValueError, match="not guidance-conditioned"):
        plain(x, t, s, with_scale(labels, 2.0))


@pytest.mark.parametrize("kind", ["from_teacher", "lora"])
def test_guided_student_round_trip(tmp_path, kind):
    student = FlowMap.from_teacher(teacher()).add_guidance_embedding(default=1.5)
    if kind == "lora":
        pytest.importorskip("peft")
        from distill.lora import add_lora

        add_lora(student)
        assert all(p.requires_grad for p in student.guidance_embeddings.parameters())
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in [*student.guidance_embeddings.parameters(), *student.gap_embeddings.parameters()]:
            parameter.normal_(0, 0.05)
    student.save_pretrained(tmp_path / "student")
    loaded = load_student(tmp_path / "student", teacher=teacher() if kind == "lora" else None)
    assert loaded.default_guidance == 1.5
    x, t, s, labels = inputs()
    with torch.no_grad():
        for cond in (with_scale(labels, 2.5), labels):
            assert torch.equal(loaded(x, t, s, cond), student(x, t, s, cond))


def test_every_objective_feeds_the_scale_to_the_student():
    from .test_objectives import ALL_OBJECTIVES

    guided_teacher = teacher()
    x, _, _, labels = inputs()
    for name, make in ALL_OBJECTIVES.items():
        template = make(guided_teacher)
        objective = type(template)(guided_teacher, dataclasses.replace(template.config, guidance=[1.0, 4.0]))
        assert isinstance(objective.teacher, GuidedTeacher)
        student = FlowMap.from_teacher(guided_teacher).add_guidance_embedding()
        objective(student, Batch(x, labels), 0).loss.backward()
        last = [e.mlp[-1].weight.grad for e in student.guidance_embeddings]
        assert all(g is not None and g.abs().max() > 0 for g in last), name


def mixture() -> GaussianMixtureTeacher:
    """Three classes, each a Gaussian; the null class is the whole mixture, so guidance is exact."""
    means = [[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]]
    return GaussianMixtureTeacher(means, 0.3, classes=[0, 1, 2])


def test_guided_mixture_is_exact_classifier_free_guidance():
    teacher = mixture()
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    single = GaussianMixtureTeacher([[-1.5, 0.0]], 0.3)  # class 0 alone
    assert torch.allclose(teacher.velocity(x[:1], t[:1], labels[:1]), single.velocity(x[:1], t[:1]))
    assert torch.allclose(teacher.velocity(x, t, torch.full((6,), 3)), teacher.velocity(x, t))
    guided = GuidedTeacher(teacher, 1.0, 3).velocity(x, t, labels)
    assert torch.allclose(guided, teacher.velocity(x, t, labels))
    with pytest.raises(ValueError, match="0 .. 3"):
        teacher.velocity(x, t, torch.full((6,), 4))


def test_guided_trajectories_teach_the_student_each_scale(tmp_path, monkeypatch):
    """A student trained on trajectories of the guided analytic mixture drawn at w in [1, 4] takes w as an input:
    its 1-step samples at w = 1 and at w = 4 each land near the teacher's at the same scale, much nearer than to the
    teacher's at the other scale (guidance moves them far) and than before training."""
    from distill.conventions import FlowMatchSchedule
    from distill.nets import VelocityMLP
    from distill.teachers import ModuleTeacher
    from distill.train import TrainConfig, train

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    teacher = mixture()
    objective = TrajectoryDistillation(teacher, TrajectoryConfig(guidance=[1.0, 4.0], trajectories=4096, steps=32,
                                                                 stride=8))
    torch.manual_seed(0)
    host = ModuleTeacher(VelocityMLP(hidden=128, depth=3, num_classes=3), FlowMatchSchedule(), "flow_prediction",
                         sample_shape=(2,))
    student = FlowMap.from_teacher(host).add_guidance_embedding()
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(512) % 3
    targets = {w: sample(GuidedTeacher(teacher, w, 3), noise, steps=64, solver="heun", cond=labels) for w in (1, 4)}

    def errors() -> dict:
        with torch.no_grad():
            out = {w: sample(student, noise, steps=1, cond=with_scale(labels, float(w))) for w in (1, 4)}
        return {(w, v): float((out[w] - targets[v]).pow(2).mean()) for w in (1, 4) for v in (1, 4)}

    before = errors()
    train(student, objective, objective.training_data(progress=False),
          TrainConfig(steps=1500, batch_size=256, learning_rate=3e-3, warmup_steps=20, ema_decays=[0.99],
                      progress=False, checkpoint_every=10_000), tmp_path / "run")
    after = errors()
    for w, other in ((1, 4), (4, 1)):
        assert after[w, w] < 0.2 * after[w, other] and after[w, w] < 0.1 * before[w, w], (before, after)


def test_guided_student_exports_with_a_guidance_input_and_samples_from_the_cli(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from distill.cli import main
    from exporters.onnx import OnnxExportConfig, export_onnx
    from exporters.report import parity
    from exporters.runtime import OnnxSampler

    student = FlowMap.from_teacher(teacher()).add_guidance_embedding(default=2.0)
    student.info = student.info.replace(guidance_range=[1.0, 4.0])
    torch.manual_seed(3)
    with torch.no_grad():
        for embedding in student.guidance_embeddings:
            embedding.mlp[-1].weight.normal_(0, 0.05)
    for graph in ("sampler", "jump"):
        path = tmp_path / f"{graph}.onnx"
        metadata = export_onnx(student.eval(), path, OnnxExportConfig(graph=graph, steps=2))
        assert metadata["inputs"][-1] == "guidance" and metadata["guidance"]["default"] == 2.0
        runtime = OnnxSampler(path)
        assert parity(student, runtime, graph, steps=2)[1] < 1e-5  # inputs with w drawn across [1, 4]
    noise, labels = np.random.default_rng(0).standard_normal((3, 3, 8, 8), dtype=np.float32), np.arange(3)
    with torch.no_grad():
        expected = sample(student, torch.from_numpy(noise), steps=2, cond=with_scale(torch.arange(3), 3.0)).numpy()
    np.testing.assert_allclose(runtime.generate(noise, labels, steps=2, guidance=3.0), expected, atol=1e-4)
    plain = FlowMap.from_teacher(teacher()).eval()
    export_onnx(plain, tmp_path / "plain.onnx", OnnxExportConfig(graph="jump"))
    with pytest.raises(ValueError, match="guidance must be None"):
        OnnxSampler(tmp_path / "plain.onnx").jump(noise, 0.5, 0.2, labels, guidance=2.0)

    student.save_pretrained(tmp_path / "student")
    out = tmp_path / "s.npz"
    args = ["sample", str(tmp_path / "student"), "--steps", "1", "--n", "4", "--class", "1", "--out", str(out)]
    assert main([*args, "--guidance", "3"]) == 0
    assert main(["sample", str(tmp_path / "sampler.onnx"), "--n", "4", "--guidance", "3", "--out", str(out)]) == 0
    plain.save_pretrained(tmp_path / "plain")
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "plain"), "--n", "4", "--guidance", "3", "--out", str(out)]) == 2
    assert "was not distilled with guidance" in capsys.readouterr().err
