"""LoRA students (PEFT adapters on the frozen teacher network + the gap embedding)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from distill.lora import LoraSettings, add_lora, merge_lora  # noqa: E402
from distill.students import FlowMap, load_student  # noqa: E402
from distill.teachers import DiffusersTeacher  # noqa: E402

from .conftest import tiny_unet  # noqa: E402


def teacher():
    from diffusers import DDPMScheduler

    return DiffusersTeacher(tiny_unet(num_class_embeds=10), DDPMScheduler())


def trained_lora_student(settings: LoraSettings | None = None) -> FlowMap:
    """A LoRA student whose adapters and gap embedding are not zero (as after training)."""
    student = add_lora(FlowMap.from_teacher(teacher()), settings or LoraSettings(rank=4))
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in student.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.05)
    return student.eval()


def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 8, 8, generator=generator), torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.2, 0.1, 0.0])


def test_only_adapters_and_gap_embedding_train_and_a_fresh_adapter_changes_nothing():
    student = FlowMap.from_teacher(teacher())
    x, t, s = inputs()
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        before = student(x, t, s, labels)
        add_lora(student, LoraSettings(rank=2))
        after = student(x, t, s, labels)
    torch.testing.assert_close(after, before)  # LoRA's B starts at zero
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("gap_embeddings.") for n in trainable)
    lora = sum(p.numel() for n, p in student.named_parameters() if "lora_" in n)
    assert 0 < lora < 0.2 * sum(p.numel() for p in student.parameters())


def test_adapter_round_trip_and_loads_with_peft(tmp_path):
    from peft import PeftModel

    student = trained_lora_student()
    x, t, s = inputs()
    labels = torch.tensor([4, 5, 6])
    student.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    fresh = load_student(tmp_path / "adapter", teacher()).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, s, labels), student(x, t, s, labels), rtol=0, atol=0)
        # PEFT's own loader puts the same adapters on the original teacher network (no gap embedding there)
        original = teacher()
        original.model = PeftModel.from_pretrained(original.model, str(tmp_path / "adapter")).eval()
        torch.testing.assert_close(original.velocity(x, t, labels), student.base.velocity(x, t, labels))
    reloaded = load_student(tmp_path / "adapter", teacher=teacher())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t, s, labels), student(x, t, s, labels), rtol=0, atol=0)


def test_merged_equals_unmerged():
    from peft.tuners.tuners_utils import BaseTunerLayer

    student = trained_lora_student()
    x, t, s = inputs()
    labels = torch.tensor([7, 8, 9])
    with torch.no_grad():
        expected = student(x, t, s, labels)
        merged = merge_lora(student)
        assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
        torch.testing.assert_close(merged(x, t, s, labels), expected, rtol=1e-5, atol=1e-4)


def test_bad_settings_give_clear_errors():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match=r"target module\(s\) to_qq not found in UNet2DModel; .*to_q"):
        add_lora(FlowMap.from_teacher(teacher()), LoraSettings(target_modules=("to_qq",)))


def test_distill_run_trains_a_lora_student_and_saves_an_adapter(tmp_path):
    from distill.recipes.distillation import load_distill_config, run_distillation

    overrides = ["student.kind=lora", "student.lora={rank: 4}", "train.steps=2", "train.batch_size=4",
                 "objective.trajectories=8", "eval.samples=20", "eval.nfe=[1]", "eval.reference_nfe=[]",
                 "eval.solvers=[euler]", f"run_dir={tmp_path / 'run'}", "train.progress=false"]
    report = run_distillation(load_distill_config("quickstart", overrides))
    folder = tmp_path / "run" / "student"
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "network").exists()
    student = load_student(folder)  # onto the bundled teacher named in its info
    assert student.lora.rank == 4 and report["eval"]["rows"][-1]["fd"] is not None
    with pytest.raises(ValueError, match="unknown key 'student.lora.rnak'"):
        load_distill_config("quickstart", ["student.kind=lora", "student.lora={rnak: 4}"])


def test_diffusers_load_lora_adapter_reads_the_adapter_folder(tmp_path):
    """diffusers' own loader (``UNet2DConditionModel.load_lora_adapter``) puts the saved adapters on the original
    network: outputs identical to the LoRA student's network."""
    from diffusers import DDIMScheduler

    from .conftest import tiny_unet_condition

    student = add_lora(FlowMap.from_teacher(DiffusersTeacher(tiny_unet_condition(), DDIMScheduler())),
                       LoraSettings(rank=2))
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in student.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.05)
    student.save_pretrained(tmp_path / "adapter")
    original = DiffusersTeacher(tiny_unet_condition(), DDIMScheduler())
    original.model.load_lora_adapter(str(tmp_path / "adapter"), prefix="base_model.model",
                                     weight_name="adapter_model.safetensors")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.7, 0.3])
    cond = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(original.velocity(x, t, cond), student.base.velocity(x, t, cond))
