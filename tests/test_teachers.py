"""Teacher contracts: ranges, loading paths, guidance, plain modules, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import distill
from distill.conventions import DiscreteVPSchedule, FlowMatchSchedule
from distill.teachers import DiffusersTeacher, GuidedTeacher, ModuleTeacher

from .conftest import tiny_unet

F64 = torch.float64


def test_import_distill_stays_light():
    heavy = ["diffusers", "accelerate", "peft", "onnx", "onnxruntime", "transformers"]
    code = f"import sys, distill, exporters; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_loaded_teacher_reports_its_range(tmp_path, unet):
    from diffusers import DDPMScheduler

    unet.save_pretrained(tmp_path / "model")
    DDPMScheduler().save_config(tmp_path / "model")  # scheduler_config.json beside the model
    teacher = distill.load_teacher(tmp_path / "model")
    table = DDPMScheduler().alphas_cumprod.double()  # t = sigma / (alpha + sigma) at the first and last entries
    t_first, t_last = ((1 - table) ** 0.5 / (table**0.5 + (1 - table) ** 0.5))[[0, -1]].tolist()
    assert teacher.t_min == pytest.approx(t_first, rel=1e-12) and teacher.t_max == pytest.approx(t_last, rel=1e-12)
    assert teacher.sample_shape == (3, 8, 8)


def test_zero_terminal_snr_teacher_ranges():
    from diffusers import DDIMScheduler

    config = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    v_teacher = DiffusersTeacher(tiny_unet(), DDIMScheduler(prediction_type="v_prediction", **config))
    assert v_teacher.t_max == 1.0
    x = torch.randn(2, 3, 8, 8)
    assert torch.isfinite(v_teacher.velocity(x, 1.0)).all()
    eps_teacher = DiffusersTeacher(tiny_unet(), DDIMScheduler(prediction_type="epsilon", **config))
    assert eps_teacher.t_max < 1.0  # epsilon is undefined at alpha = 0: the range stops one table entry earlier
    with pytest.raises(ValueError, match="alpha = 0"):
        eps_teacher.velocity(x, 1.0)


def test_guided_teacher_combines_branches():
    from diffusers import DDIMScheduler

    teacher = DiffusersTeacher(tiny_unet(num_class_embeds=11), DDIMScheduler())
    x, t, labels = torch.randn(3, 3, 8, 8), torch.full((3,), 0.5), torch.tensor([1, 4, 9])
    v_cond, v_null = teacher.velocity(x, t, labels), teacher.velocity(x, t, torch.full((3,), 10))
    guided = GuidedTeacher(teacher, guidance_scale=3.0, null_cond=10)
    assert torch.allclose(guided.velocity(x, t, labels), v_null + 3.0 * (v_cond - v_null), atol=1e-5)
    assert torch.allclose(guided.velocity(x, t, labels, guidance=1.0), v_cond, atol=1e-5)
    per_example = torch.tensor([0.0, 1.0, 2.0])
    expected = v_null + per_example[:, None, None, None] * (v_cond - v_null)
    assert torch.allclose(guided.velocity(x, t, labels, guidance=per_example), expected, atol=1e-5)


class TinyEpsilonNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x, timestep):
        return self.linear(torch.cat([x, timestep[:, None] / 1000], dim=1))


def test_module_teacher_converts_its_declared_prediction():
    net = TinyEpsilonNet().double()
    schedule = DiscreteVPSchedule.from_betas(beta_schedule="linear")
    teacher = ModuleTeacher(net, schedule, "epsilon", sample_shape=(2,))
    x, t = torch.randn(5, 2, dtype=F64), torch.rand(5, dtype=F64) * 0.9 + 0.05
    alpha, sigma = schedule.alpha_sigma(schedule.native_time(t))
    x_nat = x * (alpha + sigma)[:, None]
    eps = net(x_nat, schedule.native_time(t))
    x_data = (x_nat - sigma[:, None] * eps) / alpha[:, None]
    assert torch.allclose(teacher.velocity(x, t), eps - x_data, atol=1e-12)


# --- bad input -----------------------------------------------------------------------------------------------
def test_unknown_prediction_type_is_named():
    with pytest.raises(ValueError, match="unknown prediction type 'x_start'"):
        ModuleTeacher(TinyEpsilonNet(), FlowMatchSchedule(), "x_start")


def test_unknown_scheduler_class_is_named():
    with pytest.raises(ValueError, match="unsupported scheduler class 'LMSDiscreteScheduler'.*DDIMScheduler"):
        DiffusersTeacher(tiny_unet(), ("LMSDiscreteScheduler", {}))


def test_unsupported_model_class_is_named():
    with pytest.raises(ValueError, match="unsupported model class 'Linear'.*UNet2DModel"):
        DiffusersTeacher(nn.Linear(2, 2), ("DDIMScheduler", {}))


def test_folder_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no diffusers model"):
        distill.load_teacher(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        distill.load_teacher(tmp_path / "missing")


def test_pipeline_without_a_supported_denoiser(tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(ValueError, match="no supported denoiser"):
        distill.load_teacher(tmp_path / "pipe")


def test_model_folder_without_scheduler(tmp_path, unet):
    unet.save_pretrained(tmp_path / "lonely")
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        distill.load_teacher(tmp_path / "lonely")


def test_wrong_state_shape_is_named():
    from diffusers import DDIMScheduler

    teacher = DiffusersTeacher(tiny_unet(), DDIMScheduler())
    with pytest.raises(ValueError, match=r"expects x of shape \[B, 3, H, W\], got \[2, 4, 8, 8\]"):
        teacher.velocity(torch.randn(2, 4, 8, 8), 0.5)
    mixture = distill.load_teacher("eight-gaussians-exact")
    with pytest.raises(ValueError, match=r"must have shape \[B, 2\], got \[4, 3\]"):
        mixture.velocity(torch.randn(4, 3), 0.5)


@pytest.mark.parametrize("t", [1.5, -0.1, float("nan")])
def test_time_outside_unit_interval_is_named(t):
    mixture = distill.load_teacher("eight-gaussians-exact")
    with pytest.raises(ValueError, match=r"canonical t must lie in \[0, 1\]"):
        mixture.velocity(torch.randn(4, 2), t)


def test_time_batch_mismatch_is_named():
    mixture = distill.load_teacher("eight-gaussians-exact")
    with pytest.raises(ValueError, match="t must be a number or a \\[B\\] tensor with B = 4"):
        mixture.velocity(torch.randn(4, 2), torch.rand(3))


def test_conditional_model_without_cond():
    from diffusers import DDIMScheduler

    teacher = DiffusersTeacher(tiny_unet(num_class_embeds=10), DDIMScheduler())
    with pytest.raises(ValueError, match="needs cond = class labels"):
        teacher.velocity(torch.randn(2, 3, 8, 8), 0.5)


def test_bad_grids_are_named():
    mixture = distill.load_teacher("eight-gaussians-exact")
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match="strictly decreasing"):
        distill.sample(mixture, noise, times=torch.tensor([0.2, 0.5, 0.0]))
    with pytest.raises(ValueError, match="exactly one of steps"):
        distill.sample(mixture, noise)
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        distill.sample(mixture, noise, steps=2, solver="rk45")
    with pytest.raises(ValueError, match="unknown time grid 'cosine'"):
        distill.sample(mixture, noise, steps=2, grid="cosine")


def test_unreachable_hub_id_is_one_clear_error():
    code = "\n".join(["import distill", "try:", "    distill.load_teacher('someone/no-such-model')",
                      "except FileNotFoundError as error:", "    print(error)"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    message = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "not a local folder and could not be fetched from the hub" in message


def test_guided_teacher_with_dict_conditions():
    """SD3-style conditioning: a dict of text states and pooled projections, each with its null counterpart."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .conftest import tiny_sd3

    teacher = DiffusersTeacher(tiny_sd3(), FlowMatchEulerDiscreteScheduler(shift=3.0))
    generator = torch.Generator().manual_seed(0)
    cond = {"encoder_hidden_states": torch.randn(2, 3, 12, generator=generator),
            "pooled_projections": torch.randn(2, 6, generator=generator)}
    null = {"encoder_hidden_states": torch.zeros(1, 3, 12), "pooled_projections": torch.zeros(6)}
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([0.3, 0.8])
    v_cond = teacher.velocity(x, t, cond)
    v_null = teacher.velocity(x, t, {"encoder_hidden_states": torch.zeros(2, 3, 12),
                                     "pooled_projections": torch.zeros(2, 6)})
    guided = GuidedTeacher(teacher, guidance_scale=4.0, null_cond=null)
    assert torch.allclose(guided.velocity(x, t, cond), v_null + 4.0 * (v_cond - v_null), atol=1e-5)


@pytest.mark.parametrize("name", sorted(distill.teachers.bundled_teachers()))
def test_bundled_teachers_load_and_give_finite_velocities(name):
    teacher = distill.load_teacher(name)
    x = torch.randn(3, *teacher.sample_shape)
    cond = None if not teacher.info.num_classes else torch.tensor([0, 1, teacher.info.null_label])
    if isinstance(teacher, distill.teachers.TextToImageTeacher):
        cond = teacher.encode_prompts(["a handwritten 7", "digit 1", ""])
    v = teacher.velocity(x, torch.tensor([teacher.t_min, 0.5, teacher.t_max]), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert 0 <= teacher.t_min < teacher.t_max <= 1 and teacher.info.data.name
