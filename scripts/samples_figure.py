"""One picture of a class-conditional student beside its teacher: a row per generator (and guidance scale), a column
per class.

    python scripts/samples_figure.py runs/quickstart/student --out docs/quickstart.png
    python scripts/samples_figure.py runs/mnist-guided/student --out docs/guidance.png    # a row triple per w

Rows, top to bottom: the student's 1-step and 2-step samples (one network call per step) and the teacher's
DPM-Solver++(2M) samples at 64 steps, all from the same noise; for a guidance-distilled student, these three for each
w in --scales, the teacher with classifier-free guidance (two calls per step). It prints, per row, the share of
samples the bundled classifier assigns to the requested class.
"""

from __future__ import annotations

import argparse

import torch

from distill.conditions import with_scale
from distill.evaluation.metrics import BundledClassifier, class_agreement
from distill.evaluation.tables import CLASSIFIER_FOR_DATA, save_samples
from distill.solvers import sample
from distill.students import load_model
from distill.teachers.guided import guide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", help="a class-conditional student folder")
    parser.add_argument("--scales", type=lambda text: [float(v) for v in text.split(",")], default=[1.0, 2.0, 4.0],
                        help="guidance scales, for a guidance-distilled student")
    parser.add_argument("--per-class", type=int, default=2, help="samples of each class per row")
    parser.add_argument("--teacher-steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png")
    args = parser.parse_args()

    student, teacher = load_model(args.student)
    classes = student.info.num_classes
    if not classes:
        raise SystemExit(f"{args.student} is not class-conditional: this picture has a column per class")
    scales = args.scales if student.guidance_conditioned else [None]
    labels = torch.arange(classes).repeat_interleave(args.per_class)
    noise = torch.randn(len(labels), *student.sample_shape, generator=torch.Generator().manual_seed(args.seed))
    data = student.info.data
    classifier = BundledClassifier(CLASSIFIER_FOR_DATA[(data.name, data.size)])
    rows = []
    with torch.no_grad():
        for w in scales:
            scale = "" if w is None else f", w={w:g}"
            cond = labels if w is None else with_scale(labels, w)
            for steps in (1, 2):
                rows.append((f"student, {steps} step{'s' * (steps > 1)}{scale}", sample(student, noise, steps=steps,
                                                                                      cond=cond)))
            guided = guide(teacher, w)
            rows.append((f"teacher, dpmpp2m {args.teacher_steps} steps{scale}",
                         sample(guided, noise, steps=args.teacher_steps, solver="dpmpp2m", cond=labels)))
    for name, images in rows:
        agreement = class_agreement(classifier.run(images)[1], labels)
        print(f"{name:36s} classified as the requested class: {agreement:.0%}")
    save_samples(torch.cat([images for _, images in rows]), args.out, columns=len(labels))
    print(f"rows top to bottom as listed, classes 0-{classes - 1} left to right -> {args.out}")


if __name__ == "__main__":
    main()
