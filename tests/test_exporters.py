"""ONNX export of flow-map students, checked against PyTorch and ONNX Runtime's own output (tiny students)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from distill.nets import TwoTimeMLP  # noqa: E402
from distill.students import FlowMap, PreconditionedFlowMap, TeacherFlowMap, TwoTimeFlowMap  # noqa: E402
from distill.teachers import DiffusersTeacher  # noqa: E402
from exporters.onnx import OnnxExportConfig, export_onnx, read_metadata, step_gains  # noqa: E402
from exporters.quantize import QuantizeConfig, quantize_onnx  # noqa: E402
from exporters.report import ParityError, check_parity, parity  # noqa: E402
from exporters.runtime import OnnxSampler  # noqa: E402

from .conftest import tiny_unet  # noqa: E402


def unet_student(student_class: type[TeacherFlowMap] = TeacherFlowMap) -> FlowMap:
    """A class-conditional epsilon-prediction DDPM student whose gap embedding is not zero (so it matters)."""
    from diffusers import DDPMScheduler

    student = student_class.from_teacher(DiffusersTeacher(tiny_unet(num_class_embeds=10), DDPMScheduler()))
    student.info = {"num_classes": 10, "name": "tiny"}
    torch.manual_seed(1)
    with torch.no_grad():
        for embedding in student.gap_embeddings:
            embedding.mlp[-1].weight.normal_(0, 0.02)
    return student.eval()


def mlp_student() -> FlowMap:
    torch.manual_seed(0)
    return TwoTimeFlowMap(TwoTimeMLP(dim=2, hidden=32, depth=2), sample_shape=(2,)).eval()


STUDENTS = {"unet": unet_student, "mlp": mlp_student,
            "unet-preconditioned": lambda: unet_student(PreconditionedFlowMap)}  # another output rule, same graphs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(student, path) for every student kind and graph, exported once."""
    folder = tmp_path_factory.mktemp("onnx")
    models = {}
    for name, make in STUDENTS.items():
        student = make()
        for graph in ("sampler", "jump"):
            path = folder / f"{name}-{graph}.onnx"
            export_onnx(student, path, OnnxExportConfig(graph=graph, steps=2), source="tests")
            models[name, graph] = (student, path)
    return models


@pytest.mark.parametrize("name", list(STUDENTS))
@pytest.mark.parametrize("graph", ["sampler", "jump"])
def test_fp32_graph_matches_pytorch(exported, name, graph):
    student, path = exported[name, graph]
    max_abs, rel = parity(student, OnnxSampler(path), graph, steps=2, batch=5)  # a batch size never exported
    assert rel < 1e-5, (max_abs, rel)


def test_metadata_is_written_and_read_back_by_the_runtime(exported):
    student, path = exported["unet", "sampler"]
    metadata = read_metadata(path)
    runtime = OnnxSampler(path)
    assert runtime.metadata == metadata
    assert metadata["graph"] == "sampler" and metadata["steps"] == 2 and metadata["precision"] == "fp32"
    assert metadata["times"][0] == pytest.approx(student.t_max) and metadata["times"][-1] == 0.0
    assert metadata["sample_shape"] == [3, 8, 8] and metadata["num_classes"] == 10
    assert "t = 0 data" in metadata["convention"] and len(metadata["source_sha256"]) == 64
    samples = runtime.sample(4, seed=0, class_labels=[1, 2, 3, 4])
    assert samples.shape == (4, 3, 8, 8) and np.isfinite(samples).all()
    with pytest.raises(ValueError, match="class_labels"):
        runtime.sample(2)
    with pytest.raises(ValueError, match=r"shape \[B, 3, 8, 8\]"):
        runtime(np.zeros((2, 3, 4, 4), np.float32), [0, 0])


def test_jump_graph_chains_into_the_sampler(exported):
    """Two jumps of the jump graph on the uniform grid equal the 2-step sampler graph."""
    sampler, jump = OnnxSampler(exported["unet", "sampler"][1]), OnnxSampler(exported["unet", "jump"][1])
    noise = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(jump.generate(noise, [0, 5, 9], steps=2), sampler(noise, [0, 5, 9]), atol=1e-4)


def calibration_feeds(name: str, count: int = 4, batch: int = 8) -> list[dict[str, np.ndarray]]:
    """Sampler inputs for calibration: noise of the student's shape (and class labels for the UNets)."""
    shape = (2,) if name == "mlp" else (3, 8, 8)
    feeds = [{"noise": np.random.default_rng(i).standard_normal((batch, *shape)).astype(np.float32)}
             for i in range(count)]
    if name != "mlp":
        for feed in feeds:
            feed["class_labels"] = (np.arange(batch) % 10).astype(np.int64)
    return feeds


@pytest.mark.parametrize("name", ["mlp", "unet-preconditioned"])
@pytest.mark.parametrize("precision,tolerance",
                         [("fp16", 1e-2), ("int8", 0.1), ("int8-dynamic", 0.1), ("int8-mixed", 0.1)])
def test_lower_precisions_stay_close(exported, tmp_path, name, precision, tolerance):
    """Every lowered precision on the 2-D MLP and on a well-conditioned UNet student (its jump gains <= 1)."""
    student, path = exported[name, "sampler"]
    calibration = calibration_feeds(name)
    lowered = quantize_onnx(path, tmp_path / f"{precision}.onnx", QuantizeConfig(precision=precision), calibration)
    runtime = OnnxSampler(lowered)
    assert runtime.metadata["precision"] == precision
    max_abs, rel = parity(student, runtime, "sampler", steps=2, batch=64)
    assert 0 < rel < tolerance, (max_abs, rel)


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_uint8_activations_run_every_convolution_as_an_integer_kernel(exported, tmp_path, activation_type):
    """On ONNX Runtime's CPU provider a QDQ convolution fuses into QLinearConv with uint8 activations; with int8
    ones, those whose input feeds several consumers stay float between their Q/DQ pairs."""
    from exporters.quantize import kernel_counts

    student, path = exported["unet-preconditioned", "sampler"]
    config = QuantizeConfig(precision="int8", activation_type=activation_type)
    counts = kernel_counts(quantize_onnx(path, tmp_path / "int8.onnx", config, calibration_feeds("unet")))
    assert counts["integer"] > 0
    if activation_type == "uint8":
        assert counts["float"] == 0, counts


def test_a_k_step_sampler_stores_the_weights_once(exported, tmp_path):
    """Each step of a sampler calls the same network: its graph holds one copy of the weights (the exporter's folded
    per-call constants included), however many steps it bakes."""
    import onnx
    from onnx import numpy_helper

    student = exported["unet", "sampler"][0]
    weights = sum(p.numel() * p.element_size() for p in student.parameters())
    for steps in (1, 3):
        export_onnx(student, tmp_path / f"{steps}.onnx", OnnxExportConfig(steps=steps))
        graph = onnx.load(str(tmp_path / f"{steps}.onnx")).graph
        stored = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
        assert stored < 1.02 * weights, (steps, stored, weights)
    assert parity(student, OnnxSampler(tmp_path / "3.onnx"), "sampler", steps=3, batch=3)[1] < 1e-5


def test_int8_sampler_keeps_error_amplifying_steps_in_float(tmp_path):
    """An epsilon network's first jump from t_max multiplies its output error by ~(t - s) / (1 - t): that step runs
    on a float copy of the network, the others are quantised (QDQ nodes present), and the result is far closer to
    PyTorch than quantising every step."""
    import onnx

    from distill.solvers import time_grid
    from exporters.report import ExportConfig, _lower

    student = unet_student()
    gains = step_gains(student, time_grid(student, 2))
    assert gains[0] > 50 and gains[1] < 2
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(student, fp32, OnnxExportConfig(steps=2))
    _lower(student, "sampler", 2, fp32, tmp_path / "int8.onnx", QuantizeConfig(precision="int8"),
           ExportConfig(calibration=2, latency_batch=8))
    nodes = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    dequantized = {output for n in nodes if n.op_type == "DequantizeLinear" for output in n.output}
    convolutions = [n for n in nodes if n.op_type == "Conv"]
    quantized = [n for n in convolutions if n.input[1] in dequantized]
    assert len(quantized) == len(convolutions) // 2 > 0  # step 1 int8, step 0 float
    _, rel = parity(student, OnnxSampler(tmp_path / "int8.onnx"), "sampler", steps=2, batch=8)
    _lower(student, "sampler", 2, fp32, tmp_path / "all.onnx", QuantizeConfig(precision="int8", max_gain=1e9),
           ExportConfig(calibration=2, latency_batch=8))
    _, rel_all = parity(student, OnnxSampler(tmp_path / "all.onnx"), "sampler", steps=2, batch=8)
    assert rel < 0.1 and rel < rel_all / 3, (rel, rel_all)


def test_a_broken_export_is_caught(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    student, path = exported["unet", "sampler"]
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight, scaled by 1.1
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.1, weight.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(ParityError, match="relative error"):
        check_parity(student, OnnxSampler(tmp_path / "broken.onnx"), "sampler", 2, "fp32", 1e-4)


def test_runtime_runs_without_torch(exported):
    path = exported["mlp", "sampler"][1]
    code = ("import sys; from exporters.runtime import OnnxSampler; x = OnnxSampler(sys.argv[1]).sample(8, seed=1); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(x.shape)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(8, 2)"


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown graph"):
        OnnxExportConfig(graph="sampler-graph")
    with pytest.raises(ValueError, match="unknown precision"):
        QuantizeConfig(precision="int4")
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        OnnxSampler(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxSampler(tmp_path / "junk.onnx")


def test_export_command_writes_models_and_report(tmp_path, capsys):
    from distill.cli import main

    student = unet_student()
    student.save_pretrained(tmp_path / "student")
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "student"), "--steps", "1", "--precision", "fp32,int8", "--graphs",
                 "sampler,jump", "--samples", "0", "--batch", "4", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = {"path", "graph", "steps", "precision", "bytes", "max_abs_err", "rel_err", "latency_ms",
            "eager_latency_ms", "fd", "float_fd", "integer_ops", "float_ops"}
    assert [(a["graph"], a["precision"]) for a in report["artifacts"]] == [
        ("sampler", "fp32"), ("sampler", "int8"), ("jump", "fp32"), ("jump", "int8")]
    for artifact in report["artifacts"]:
        assert keys <= set(artifact) and artifact["bytes"] > 0 and artifact["latency_ms"] > 0
    assert report["artifacts"][0]["rel_err"] < 1e-4
    fp32_jump, int8_jump = report["artifacts"][2:]
    assert fp32_jump["integer_ops"] == 0 < fp32_jump["float_ops"]
    assert int8_jump["integer_ops"] > 0 and int8_jump["float_ops"] < fp32_jump["float_ops"]
    assert "| ms (batch 4) |" in (out / "report.md").read_text()
    assert all(a["latency_b1_ms"] > 0 and a["runtime"] == "onnxruntime" for a in report["artifacts"])
    assert main(["sample", report["artifacts"][0]["path"], "--n", "4", "--out", str(tmp_path / "s.npz"),
                 "--json"]) == 0
    sampled = json.loads(capsys.readouterr().out)
    assert sampled["precision"] == "fp32" and np.load(tmp_path / "s.npz")["samples"].shape == (4, 3, 8, 8)


def test_torchao_int8_round_trip(tmp_path):
    pytest.importorskip("torchao")
    from exporters.quantize import TorchaoConfig, load_torchao, quantize_torch, save_torchao

    student = mlp_student()
    x, t, s = torch.randn(16, 2), torch.full((16,), 0.9), torch.full((16,), 0.3)
    with torch.no_grad():
        expected = student(x, t, s)
        config = TorchaoConfig(mode="int8-weight", compile=False)
        quantized = quantize_torch(mlp_student(), config)
        got = quantized(x, t, s)
        assert 0 < (got - expected).norm() / expected.norm() < 0.02
        save_torchao(quantized, tmp_path / "int8.pt")
        reloaded = load_torchao(mlp_student(), tmp_path / "int8.pt", config)
        assert torch.equal(reloaded(x, t, s), got)
    with pytest.raises(ValueError, match="unknown torchao mode"):
        TorchaoConfig(mode="int3")


def test_openvino_runs_the_same_onnx_and_its_nncf_int8(exported, tmp_path):
    """OpenVINO reads the exported file itself (metadata included) and matches PyTorch in fp32; NNCF's int8 IR, from
    the same calibration inputs as ONNX Runtime's, stays within int8's tolerance on a well-conditioned UNet."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from exporters.quantize import quantize_openvino

    student, path = exported["unet-preconditioned", "sampler"]
    runtime = OnnxSampler(path, backend="openvino")
    assert runtime.metadata == read_metadata(path) and runtime.providers[0].startswith("OpenVINO")
    assert parity(student, runtime, "sampler", steps=2, batch=5)[1] < 1e-5
    xml = quantize_openvino(path, tmp_path / "int8.openvino.xml", calibration_feeds("unet"))
    quantized = OnnxSampler(xml)  # an IR file opens in OpenVINO by its suffix
    assert quantized.metadata["precision"] == "int8" and xml.with_suffix(".bin").is_file()
    assert 0 < parity(student, quantized, "sampler", steps=2, batch=64)[1] < 0.25  # int8 tolerance (random weights)


def test_a_missing_runtime_is_a_one_line_error(exported, monkeypatch):
    path = exported["mlp", "sampler"][1]
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'distill\[openvino\]'"):
        OnnxSampler(path, backend="openvino")
    with pytest.raises(ValueError, match="unknown runtime"):
        OnnxSampler(path, backend="tensorrt")
    with pytest.raises(ValueError, match="inference_precision"):
        OnnxSampler(path, inference_precision="bf16")  # an openvino setting


def test_the_report_says_why_a_precision_is_not_written_here(tmp_path, monkeypatch):
    """On an x86 CPU provider fp16 would only be slower: the report names the reason instead of shipping it."""
    import platform

    from exporters.report import ExportConfig, export_student

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    student = unet_student(PreconditionedFlowMap)
    student.save_pretrained(tmp_path / "student")
    report = export_student(tmp_path / "student", tmp_path / "export",
                            ExportConfig(steps=(1,), precisions=("fp32", "fp16"), samples=0, latency_batch=4,
                                         repeats=2, exporter="torchscript"))
    assert [a["precision"] for a in report["artifacts"]] == ["fp32"]
    assert report["skipped"][0]["precision"] == "fp16" and "no fp16 kernels" in report["skipped"][0]["reason"]
    assert "fp16" in (tmp_path / "export" / "report.md").read_text()
