"""A consistency-form LoRA student (``student.output=consistency``, ``student.kind=lora``) in the user's own diffusers
pipeline, beside ``distill``'s sampler of the same student: what LCM-LoRA gives SD users.

    distill run mnist-t2i student.kind=lora student.output=consistency objective.guidance=3.0 \\
        objective.to_data=true objective.jumps=null objective.stride=1 run_dir=runs/mnist-t2i-lcm
    python scripts/lcm_in_diffusers.py runs/mnist-t2i-lcm/student [--steps 2,4] [--samples 500] [--json]

The diffusers side imports nothing of ``distill``: ``StableDiffusionPipeline.from_pretrained(teacher folder)``,
``pipe.load_lora_weights(student folder)`` (the file the student saved with diffusers' own writer), a stock
``LCMScheduler`` from the pipeline's scheduler config, ``guidance_scale=1`` (the student carries the guidance it was
distilled at), the same held-out prompts and starting noise as ``distill``'s side. Both sides' latents are judged by
the same ``Evaluation`` (the VAE decodes them; FD and prompt agreement in the bundled ``mnist16`` classifier).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch


def diffusers_latents(teacher_folder: Path, adapter: Path, prompts: list[str], noise: torch.Tensor, steps: int,
                      batch: int = 100) -> tuple[torch.Tensor, float]:
    """Latents from the plain pipeline with the adapter and LCMScheduler (no ``distill`` object involved)."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(teacher_folder, safety_checker=None)
    pipe.load_lora_weights(adapter)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    start, parts = time.perf_counter(), []
    for i in range(0, len(prompts), batch):
        parts.append(pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=1.0,
                          latents=noise[i:i + batch].clone(), output_type="latent",
                          generator=torch.Generator().manual_seed(i)).images)
    return torch.cat(parts), time.perf_counter() - start


def main() -> None:
    from distill.evaluation.tables import Evaluation, markdown_table
    from distill.students import load_student
    from distill.teachers import load_teacher
    from distill.teachers.loading import ASSET_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student")
    parser.add_argument("--steps", default="2,4")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--guidance", type=float, default=3.0, help="the scale the student was distilled at")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    student = load_student(args.student).eval().requires_grad_(False)
    if student.output_rule != "consistency" or student.lora is None:
        raise SystemExit(f"{args.student} is not a consistency-form LoRA student (student.output=consistency, "
                         "student.kind=lora): an any-step student's gap embedding does not ride in the adapter")
    teacher_spec = student.info.teacher
    folder = ASSET_DIR / teacher_spec if (ASSET_DIR / teacher_spec).is_dir() else Path(teacher_spec)
    evaluation = Evaluation(load_teacher(teacher_spec), samples=args.samples, guidance=args.guidance, progress=False)
    chosen = evaluation.teacher.prompt_set("held_out")
    prompts = [chosen.prompts[i % len(chosen)] for i in range(args.samples)]  # Evaluation's prompts, in its order
    rows = evaluation.teacher_rows(["dpmpp2m"], [64])
    for steps in (int(k) for k in args.steps.split(",")):
        rows += evaluation.student_rows(student, [steps], name="distill.sample")
        latents, seconds = diffusers_latents(folder, Path(args.student), prompts, evaluation.noise, steps)
        rows.append(evaluation.score(latents, "diffusers+LCMScheduler", "student", "lcm", steps, seconds))
    if args.json:
        print(json.dumps([asdict(row) for row in rows]))
    else:
        print(markdown_table(rows))


if __name__ == "__main__":
    main()
