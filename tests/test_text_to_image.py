"""Text-to-image pipeline folders as teachers: the bundled ``mnist-t2i`` StableDiffusionPipeline, loaded by
``load_teacher``, reproduces diffusers' own pipeline call (prompt encoding, guidance from the empty prompt, DDIM, VAE
decoding), and so do tiny SDXL, SD3 and FLUX pipelines; prompt embeddings are cached by the encoder's hash; prompt
datasets load from text, CSV, JSONL and image-caption folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import distill
from distill.prompts import conditions_in_turn, load_prompts
from distill.teachers import TextToImageTeacher
from distill.teachers.guided import guide
from distill.teachers.loading import ASSET_DIR

from .test_diffusers_equivalence import canonical_start, noise_like, relative_error, ve_sigmas_to_times

FOLDER = ASSET_DIR / "mnist-t2i"
PROMPTS = ["a handwritten seven", "the number three"]


@pytest.fixture(scope="module")
def teacher():
    return distill.load_teacher("mnist-t2i")  # conftest gives the session an empty DISTILL_CACHE


@pytest.fixture(scope="module")
def pipeline():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(FOLDER)


def native(teacher, x: torch.Tensor, t: float) -> torch.Tensor:
    """A canonical state at canonical time ``t`` as the scheduler's native one, ``x (alpha + sigma)``."""
    alpha, sigma = teacher.schedule.alpha_sigma(teacher.schedule.native_time(torch.tensor(t, dtype=torch.float64)))
    return x * float(alpha + sigma)


def test_the_bundled_pipeline_loads_as_a_latent_text_teacher(teacher):
    assert isinstance(teacher, TextToImageTeacher)
    assert teacher.sample_shape == (4, 8, 8) and teacher.parameterization.prediction_type == "epsilon"
    cond = teacher.encode_prompts(PROMPTS)
    assert cond.shape[0] == 2 and cond.ndim == 3
    assert teacher.state_dict().keys() == {f"model.{k}" for k in teacher.model.state_dict()}  # the denoiser only


@pytest.mark.parametrize("steps,guidance", [(10, 3.0), (5, 1.0)])
def test_guided_ddim_reproduces_the_stable_diffusion_pipeline(teacher, pipeline, steps, guidance):
    noise = noise_like(2, 4, 8, 8, seed=3)
    with torch.no_grad():
        theirs = pipeline(PROMPTS, latents=noise.clone(), num_inference_steps=steps, guidance_scale=guidance,
                          output_type="latent").images
        images = pipeline(PROMPTS, latents=noise.clone(), num_inference_steps=steps, guidance_scale=guidance,
                          output_type="pt").images
    model = guide(teacher, guidance) if guidance > 1 else teacher  # diffusers skips guidance at w <= 1
    times = teacher.training_grid(steps)
    ours = distill.solve(model, canonical_start(teacher, noise, float(times[0])), times, solver="euler",
                         cond=teacher.encode_prompts(PROMPTS))
    assert relative_error(native(teacher, ours, float(times[-1])), theirs) <= 1e-5
    decoded = (model.decode(native(teacher, ours, float(times[-1]))) + 1) / 2
    assert relative_error(decoded, images) <= 1e-4


def test_the_bundled_pipeline_draws_the_digits_its_prompts_name(teacher):
    """100 prompts, digits in turn, guidance 3, 12 DPM-Solver++ steps in latent space, decoded by the VAE: the
    bundled ``mnist16`` classifier reads the named digit (its card: 97% on held-out phrasings at 25 DDIM steps)."""
    from distill.evaluation.metrics import BundledClassifier, class_agreement

    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    digits = torch.arange(100) % 10
    cond = teacher.encode_prompts([f"a handwritten {words[d]}" for d in digits])
    noise = torch.randn(100, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    latents = distill.sample(guide(teacher, 3.0), noise, steps=12, solver="dpmpp2m", cond=cond)
    images = torch.nn.functional.avg_pool2d(teacher.decode(latents), 2)
    assert class_agreement(BundledClassifier("mnist16").run(images)[1], digits) > 0.9


def test_the_empty_prompt_is_the_unconditional_branch(teacher, pipeline):
    null = teacher.null_condition()
    theirs, _ = pipeline.encode_prompt([""], "cpu", 1, False)
    assert torch.equal(null, theirs)
    assert guide(teacher, 2.0).null_cond is not None


def test_prompt_embeddings_are_cached_by_the_encoders_hash(teacher, monkeypatch):
    first = teacher.encode_prompts(["digit 4", "a bold four"])
    again = distill.load_teacher("mnist-t2i")  # a new process's teacher: nothing in memory
    encoder = again.parts.encoders[0]
    monkeypatch.setattr(type(encoder), "forward", lambda *a, **k: pytest.fail("encoded again"))
    assert torch.equal(again.encode_prompts(["a bold four", "digit 4"]), first.flip(0))
    monkeypatch.undo()
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)  # other weights: another key, so no stale embeddings
    changed = type(again)(again.parts.pipeline)
    assert changed.parts.key != teacher.parts.key
    assert not torch.equal(changed.encode_prompts(["digit 4"]), first[:1])


def test_prompt_errors_are_one_line(teacher):
    with pytest.raises(TypeError, match="list of strings"):
        teacher.encode_prompts("a handwritten 7")
    with pytest.raises(TypeError, match="not text-conditioned"):
        distill.load_teacher("mnist").encode_prompts(["a 7"])


def test_the_pipelines_own_prompts_name_their_classes(teacher):
    held_out, trained = teacher.prompt_set("held_out"), teacher.prompt_set("train")
    assert held_out.prompts[:3] == ["a picture of a handwritten zero", "a picture of a handwritten one",
                                    "a picture of a handwritten two"]
    assert held_out.labels[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # classes in turn, template by template
    assert "digit 7, thick strokes" in trained.prompts and "a bold seven" in trained.prompts
    assert not set(held_out.prompts) & set(trained.prompts)  # agreement is judged on phrasings never trained
    assert all(trained.labels[i] == int(d) for i, p in enumerate(trained.prompts) for d in p if d.isdigit())
    with pytest.raises(ValueError, match="unknown prompt split"):
        teacher.prompt_set("test")
    bare = TextToImageTeacher(teacher.parts.pipeline)  # a user's folder without prompts.json
    with pytest.raises(ValueError, match="no prompts.json: give a prompt dataset"):
        conditions_in_turn(bare, 4)


def test_conditions_in_turn_are_labels_or_encoded_prompts(teacher, tmp_path):
    labels, named = conditions_in_turn(distill.load_teacher("mnist"), 12)
    assert torch.equal(labels, torch.arange(12) % 10) and named is labels
    cond, named = conditions_in_turn(teacher, 12, split="held_out")
    prompts = teacher.prompt_set("held_out").prompts
    assert torch.equal(cond, teacher.encode_prompts(prompts[:12])) and torch.equal(named, torch.arange(12) % 10)
    (tmp_path / "mine.txt").write_text("digit 4\na bold four\n")
    cond, named = conditions_in_turn(teacher, 3, tmp_path / "mine.txt")
    assert torch.equal(cond, teacher.encode_prompts(["digit 4", "a bold four", "digit 4"])) and named is None
    with pytest.raises(TypeError, match="not text-conditioned"):
        conditions_in_turn(distill.load_teacher("mnist"), 2, tmp_path / "mine.txt")


def test_prompt_datasets_load_from_every_format(tmp_path):
    (tmp_path / "p.txt").write_text("a handwritten 3\n\n the number five \n")
    assert load_prompts(tmp_path / "p.txt").prompts == ["a handwritten 3", "the number five"]
    (tmp_path / "p.csv").write_text("id,caption\n1,digit 4\n2,\"a bold, thick 8\"\n")
    assert load_prompts(tmp_path / "p.csv").prompts == ["digit 4", "a bold, thick 8"]
    (tmp_path / "p.jsonl").write_text('{"text": "a 1"}\n"a 2"\n')
    assert load_prompts(tmp_path / "p.jsonl").prompts == ["a 1", "a 2"]
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "a.txt").write_text("a handwritten 9")
    assert load_prompts(folder).prompts == ["a handwritten 9"] and load_prompts(folder).images == [folder / "a.png"]
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "nine"}) + "\n")
    assert load_prompts(folder).prompts == ["nine"]


@pytest.mark.parametrize("name,content,message", [
    ("p.csv", "id,words\n1,digit 4\n", "no caption column"),
    ("p.jsonl", '{"text": "a 1"}\n{oops\n', "p.jsonl:2: not a JSON object"),
    ("p.yaml", "- a 1\n", "unknown prompt file type"),
    ("p.txt", "\n\n", "holds no prompts"),
])
def test_bad_prompt_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_prompts(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no prompt file"):
        load_prompts(tmp_path / "missing.txt")


def tiny_sd3_pipeline():
    """SD3 with two tiny CLIP encoders (the bundled tokenizer) and no T5 (the pipeline then uses zeros)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from .conftest import tiny_sd3

    tokenizer = CLIPTokenizer.from_pretrained(FOLDER / "tokenizer")

    def clip(hidden: int, projection: int, seed: int):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=1, max_position_embeddings=tokenizer.model_max_length, projection_dim=projection,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))

    torch.manual_seed(2)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, shift_factor=0.1, scaling_factor=1.5)
    # CLIP widths 4 + 8 = the transformer's joint dimension 12; projections 2 + 4 = its pooled dimension 6
    return StableDiffusion3Pipeline(transformer=tiny_sd3(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=clip(4, 2, 0), tokenizer=tokenizer,
                                    text_encoder_2=clip(8, 4, 1), tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)


def test_an_sd3_pipeline_reproduces_its_pipeline_call():
    pipeline = tiny_sd3_pipeline()
    teacher = distill.load_teacher(pipeline)  # in memory: a hub folder without T5 loads only with text_encoder_3=None
    assert isinstance(teacher, TextToImageTeacher) and teacher.sample_shape == (4, 8, 8)
    noise = noise_like(2, 4, 8, 8, seed=5)
    with torch.no_grad():
        theirs = pipeline(PROMPTS, latents=noise.clone(), num_inference_steps=4, guidance_scale=2.0,
                          output_type="latent").images
        images = pipeline(PROMPTS, latents=noise.clone(), num_inference_steps=4, guidance_scale=2.0,
                          output_type="pt").images
    pipeline.scheduler.set_timesteps(4)
    ours = distill.sample(guide(teacher, 2.0), noise, times=pipeline.scheduler.sigmas, solver="euler",
                          cond=teacher.encode_prompts(PROMPTS))
    assert relative_error(ours, theirs) <= 1e-5
    assert relative_error((teacher.decode(ours) + 1) / 2, images) <= 1e-4


def tiny_sdxl_pipeline():
    """SDXL with two tiny CLIP encoders (widths 4 + 8 = cross-attention 12; the second's projection 4 is pooled)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(FOLDER / "tokenizer")
    config = dict(vocab_size=len(tokenizer), num_hidden_layers=2, num_attention_heads=1,
                  max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=4, intermediate_size=8, **config))
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=8, intermediate_size=16, projection_dim=4,
                                                           **config))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, norm_num_groups=4, attention_head_dim=4, addition_embed_type="text_time",
        addition_time_embed_dim=2, projection_class_embeddings_input_dim=4 + 6 * 2)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


def test_an_sdxl_pipeline_folder_reproduces_its_pipeline_call(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    tiny_sdxl_pipeline().save_pretrained(tmp_path / "sdxl")
    pipeline = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    teacher = distill.load_teacher(tmp_path / "sdxl")
    assert isinstance(teacher, TextToImageTeacher) and teacher.sample_shape == (4, 8, 8)
    null = teacher.null_condition()  # SDXL forces zeros for the empty prompt
    assert not null["encoder_hidden_states"].any() and not null["added_cond_kwargs"]["text_embeds"].any()
    noise = noise_like(2, 4, 8, 8, seed=6)
    with torch.no_grad():
        theirs = pipeline(PROMPTS, latents=noise.clone(), num_inference_steps=5, guidance_scale=2.0,
                          output_type="latent").images  # Euler from noise * sigma_max, a VE state
    pipeline.scheduler.set_timesteps(5)
    sigmas = pipeline.scheduler.sigmas
    ours = distill.solve(guide(teacher, 2.0), noise * float(sigmas[0] / (1 + sigmas[0])), ve_sigmas_to_times(sigmas),
                         solver="euler", cond=teacher.encode_prompts(PROMPTS))
    assert relative_error(ours, theirs) <= 1e-5


def test_sample_takes_prompts_and_writes_decoded_images(tmp_path, capsys):
    from distill.cli import main

    (tmp_path / "prompts.txt").write_text("a handwritten seven\nthe number one\n")
    out = tmp_path / "grid.npz"
    assert main(["sample", "mnist-t2i", "--prompt", "digit 4", "--prompts", str(tmp_path / "prompts.txt"),
                 "--guidance", "3", "--steps", "4", "--solver", "dpmpp2m", "--n", "6", "--out", str(out),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 6
    images = np.load(out)["samples"]
    assert images.shape == (6, 1, 32, 32) and images.min() >= -1 and images.max() <= 1  # decoded, not latents
    assert main(["sample", "mnist", "--prompt", "a 3", "--n", "2", "--out", str(out)]) != 0  # one-line error
    assert "not text-conditioned" in capsys.readouterr().err


def tiny_flux_pipeline():
    """FLUX with a tiny CLIP (pooled width 6) and a tiny T5 (width 12, the transformer's joint dimension); the bundled
    CLIP tokenizer stands in for T5's."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from .conftest import tiny_flux

    tokenizer = CLIPTokenizer.from_pretrained(FOLDER / "tokenizer")
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=6, intermediate_size=12, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=12, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, shift_factor=0.1, scaling_factor=1.5)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae, text_encoder=clip,
                        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer,
                        transformer=tiny_flux(guidance_embeds=True))


def test_a_flux_pipeline_reproduces_its_pipeline_call():
    from diffusers import FluxPipeline

    pipeline = tiny_flux_pipeline()
    teacher = distill.load_teacher(pipeline)
    noise = noise_like(2, 4, 8, 8, seed=7)
    with torch.no_grad():  # 16 px with the VAE's 2x: the 8x8 latent, packed into 2x2 patches as the pipeline wants
        packed = pipeline(PROMPTS, latents=FluxPipeline._pack_latents(noise, 2, 4, 8, 8), height=16, width=16,
                          num_inference_steps=4, guidance_scale=3.5, output_type="latent").images
    theirs = FluxPipeline._unpack_latents(packed, 16, 16, 2)
    cond = teacher.encode_prompts(PROMPTS)
    assert torch.equal(cond["guidance"], torch.full((2,), 3.5))
    ours = distill.sample(teacher, noise, times=pipeline.scheduler.sigmas, solver="euler", cond=cond)
    assert relative_error(ours, theirs) <= 1e-5


def test_a_student_of_the_pipeline_saves_as_a_pipeline_and_samples_from_prompts(teacher, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from distill.cli import main

    student = distill.FlowMap.from_teacher(teacher)
    with torch.no_grad():
        next(student.base.model.parameters()).mul_(1.01)  # the student's own weights, not the teacher's
    student.save_pretrained(tmp_path / "student")
    loaded = distill.load_student(tmp_path / "student")
    noise = noise_like(2, *teacher.sample_shape, seed=8)
    cond = loaded.encode_prompts(PROMPTS)
    assert torch.equal(distill.sample(loaded, noise, steps=2, cond=cond), distill.sample(student, noise, steps=2,
                                                                                         cond=cond))
    assert loaded.decode(noise).shape == (2, 1, 32, 32)
    assert loaded.prompt_set("held_out") == teacher.prompt_set("held_out")  # prompts.json travels with it
    network = StableDiffusionPipeline.from_pretrained(tmp_path / "student" / "network").unet  # diffusers opens it
    assert torch.equal(next(network.parameters()), next(student.base.model.parameters()))
    out = tmp_path / "grid.npz"
    assert main(["sample", str(tmp_path / "student"), "--prompt", "digit 4", "--steps", "2", "--n", "3",
                 "--out", str(out)]) == 0
    assert np.load(out)["samples"].shape == (3, 1, 32, 32)


def test_distill_run_distils_the_guided_pipeline_from_its_prompts_and_judges_decoded_images(tmp_path, monkeypatch):
    """The mnist-t2i preset, a few steps: trajectories of the teacher guided at each one's w from its training
    phrasings, a w-conditioned student, judged at w = 3 on held-out phrasings after the VAE decodes (FD and prompt
    agreement in the bundled classifier)."""
    from distill.recipes.distillation import load_distill_config, run_distillation

    overrides = ["objective.trajectories=24", "train.steps=2", "train.batch_size=8",
                 "train.progress=false", "eval.samples=20", "eval.nfe=[1]", "eval.solvers=[euler]",
                 "eval.reference_nfe=[]", f"run_dir={tmp_path}/run"]
    report = run_distillation(load_distill_config("mnist-t2i", overrides))
    rows = report["eval"]["rows"]
    assert {(row["kind"], row["guidance"]) for row in rows} == {("teacher", 3.0), ("student", 3.0)}
    assert all(row["fd"] > 0 and 0 <= row["agreement"] <= 1 for row in rows)
    student = distill.load_student(report["student"])
    assert student.guidance_conditioned and student.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 1, 32, 32)
    from distill.cli import main

    (tmp_path / "mine.txt").write_text("a handwritten 3\n")
    assert main(["eval", report["student"], "--samples", "6", "--nfe", "1", "--solvers", "euler", "--plot", "",
                 "--quiet", "--prompts", str(tmp_path / "mine.txt")]) == 0  # no classes named: FD without agreement


def trained_looking_lora(student):
    """Rank-4 adapters on ``student`` with non-zero B matrices (so they change the network)."""
    from distill.lora import LoraSettings, add_lora

    add_lora(student, LoraSettings(rank=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return student


def test_a_lora_student_of_the_pipeline_loads_with_diffusers_load_lora_weights(teacher, tmp_path):
    """The adapter folder carries diffusers' own pipeline LoRA file: ``StableDiffusionPipeline.load_lora_weights``
    puts the student's adapters on the user's pipeline UNet, which then computes the student's network (the gap
    and guidance embeddings, outside the UNet, are what it does not carry)."""
    from diffusers import StableDiffusionPipeline

    student = trained_looking_lora(distill.FlowMap.from_teacher(teacher))
    student.save_pretrained(tmp_path / "adapter")
    pipe = StableDiffusionPipeline.from_pretrained(FOLDER)
    pipe.load_lora_weights(tmp_path / "adapter")
    x, timestep = noise_like(2, 4, 8, 8, seed=2), torch.tensor([700, 300])
    states = teacher.encode_prompts(PROMPTS)
    with torch.no_grad():
        theirs = pipe.unet(x, timestep, encoder_hidden_states=states).sample
        ours = student.base.model(x, timestep, encoder_hidden_states=states).sample
        plain = teacher.model(x, timestep, encoder_hidden_states=states).sample
    assert relative_error(theirs, ours) <= 1e-5 and relative_error(theirs, plain) > 1e-3


def test_broken_pipeline_folders_and_long_prompts(teacher, tmp_path):
    import shutil

    from diffusers import AutoencoderKL

    broken = tmp_path / "no-vae"
    shutil.copytree(FOLDER, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match=r"lacks vae/ \(model_index.json names a AutoencoderKL\)"):
        distill.load_teacher(broken)
    pipeline = teacher.parts.pipeline
    other = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=3, block_out_channels=(8,),
                          norm_num_groups=8)
    with pytest.raises(ValueError, match="3-channel latents but the UNet2DConditionModel takes 4"):
        TextToImageTeacher(type(pipeline)(**{**pipeline.components, "vae": other}))
    long = teacher.encode_prompts([" ".join(["seven"] * 40)])  # truncated to the tokenizer's limit, as diffusers does
    assert long.shape == teacher.encode_prompts(["seven"]).shape


def test_a_consistency_form_lora_is_an_lcm_lora_for_the_users_own_pipeline(teacher, tmp_path):
    """No gap embedding: the adapter is the whole student. One step of diffusers' own LCMScheduler on the user's
    pipeline with the adapter loaded (guidance 1: the student carries its w) is the student's one-step sample."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from distill.students import ConsistencyFormFlowMap

    student = trained_looking_lora(ConsistencyFormFlowMap.from_teacher(teacher))
    assert not student.gap_embeddings and student.hooked_modules
    student.save_pretrained(tmp_path / "lcm")
    assert not (tmp_path / "lcm" / "gap_embeddings.safetensors").exists()
    loaded = distill.load_student(tmp_path / "lcm", teacher)
    pipe = StableDiffusionPipeline.from_pretrained(FOLDER)
    pipe.load_lora_weights(tmp_path / "lcm")
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    noise = noise_like(2, 4, 8, 8, seed=4)
    with torch.no_grad():
        theirs = pipe(PROMPTS, latents=noise.clone(), num_inference_steps=1, guidance_scale=1.0,
                      output_type="latent").images
    t = teacher.schedule.canonical_time(torch.tensor(999.0, dtype=torch.float64))  # LCMScheduler's one timestep
    with torch.no_grad():
        ours = loaded(canonical_start(teacher, noise, float(t)), float(t), 0.0, teacher.encode_prompts(PROMPTS))
    assert relative_error(ours, theirs) <= 1e-4


def test_the_pipeline_exports_to_onnx_and_runs_from_prompts_without_torch(teacher, tmp_path, capsys):
    """``distill export STUDENT --pipeline``: Optimum's folder layout, every stage and the whole prompt -> image path
    within 1e-4 of PyTorch (checked by the export itself), then run in a process that never imports torch."""
    import subprocess
    import sys

    from distill.cli import main

    student = trained_looking_lora(distill.FlowMap.from_teacher(teacher)).add_guidance_embedding(default=3.0)
    student.info = teacher.info.replace(teacher="mnist-t2i")  # as distill run records it: the adapter's base
    student.save_pretrained(tmp_path / "student")
    out = tmp_path / "pipeline"
    assert main(["export", str(tmp_path / "student"), "--pipeline", "--steps", "2", "--out", str(out)]) == 0
    assert "relative errors: tokenizer 0.0e+00" in capsys.readouterr().out
    for part in ("model_index.json", "text_encoder/model.onnx", "text_encoder/config.json", "unet/model.onnx",
                 "unet/config.json", "vae_decoder/model.onnx", "vae_decoder/config.json", "tokenizer/tokenizer.json",
                 "scheduler/scheduler_config.json"):
        assert (out / part).is_file(), part
    script = ("import sys\nfrom exporters.runtime import OnnxTextToImage\n"
              f"pipe = OnnxTextToImage({str(out)!r})\n"
              "images = pipe(['a handwritten seven', ' '.join(['seven'] * 40)], steps=2, seed=0)\n"
              "assert images.shape == (2, 1, 32, 32) and 'torch' not in sys.modules, sorted(sys.modules)\n"
              "print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
    with pytest.raises(FileNotFoundError, match="unet/model.onnx is missing"):
        (out / "unet" / "model.onnx").unlink()
        from exporters.runtime import OnnxTextToImage

        OnnxTextToImage(out)
