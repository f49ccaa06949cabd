"""Continue a trained student with distribution matching (DMD2) and judge it beside its teacher.

    python scripts/dmd_finetune.py runs/quickstart/student --teacher mnist-flow --lr 2e-5 --steps 200 \
        --trajectories 2000 --out runs/quickstart-dmd
    python scripts/dmd_finetune.py runs/quickstart/student --teacher mnist-flow --batch 32 --generator-steps 1,2 \
        --steps 300 --eval-every 50 --out runs/quickstart-dmd-12      # FD at 1 and 2 NFE every 50 steps

The student folder is the regression warm start (``distill run`` with the trajectory objective); the DMD objective's
trajectory settings must match the ones it was trained with when ``--regression-weight`` is used. Rerunning resumes
from ``--out``. Prints the eval rows (FD on ``--samples`` samples, classes in turn) beside the teacher's dpmpp2m rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import distill
from distill.evaluation.tables import Evaluation
from distill.objectives import DistributionMatching, DMDConfig
from distill.recipes.distillation import RunEvalConfig, evaluate_student
from distill.students import load_student
from distill.train import TrainConfig, train, use_ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trajectories", type=int, default=2000)
    parser.add_argument("--fake-updates", type=int, default=2)
    parser.add_argument("--gan-weight", type=float, default=0.0)
    parser.add_argument("--regression-weight", type=float, default=0.0)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--generator-steps", default="1", help="the student's sampler lengths DMD trains, e.g. 1,2")
    parser.add_argument("--eval-every", type=int, default=0, help="also print FD at 1 and 2 NFE every N steps")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    teacher = distill.load_teacher(args.teacher).requires_grad_(False)
    student = load_student(args.student).requires_grad_(True)
    objective = DistributionMatching(teacher, DMDConfig(
        trajectories=args.trajectories, fake_updates=args.fake_updates, gan_weight=args.gan_weight,
        regression_weight=args.regression_weight,
        generator_steps=[int(k) for k in args.generator_steps.split(",")]))
    data = objective.training_data()
    # a constant learning rate after warm-up, so training to N steps and resuming to 2N is one run of 2N steps
    marks = list(range(args.eval_every, args.steps, args.eval_every)) if args.eval_every else []
    evaluation = Evaluation(teacher, samples=args.samples, progress=False) if marks else None
    for steps in [*marks, args.steps]:
        config = TrainConfig(steps=steps, batch_size=args.batch, learning_rate=args.lr, warmup_steps=10,
                             ema_decays=[0.99], checkpoint_every=min(100, steps), log_every=25, progress=False)
        result = train(student, objective, data, config, args.out)
        if steps != args.steps:
            print(json.dumps({"step": steps, **progress_fd(student, result, evaluation)}), flush=True)
    use_ema(student, result, 0.99)
    student.requires_grad_(False).eval().save_pretrained(Path(args.out) / "student")
    report = evaluate_student(student, teacher, RunEvalConfig(samples=args.samples, nfe=[1, 2, 4],
                                                              solvers=["dpmpp2m"], reference_nfe=[]),
                              Path(args.out), "dmd")
    print(json.dumps([{k: row[k] for k in ("model", "nfe", "fd", "agreement")} for row in report["rows"]]))


def progress_fd(student, result, evaluation: Evaluation) -> dict:
    """FD at 1 and 2 NFE of the EMA weights so far (the training weights are put back afterwards)."""
    current = {k: v.clone() for k, v in student.state_dict().items()}
    use_ema(student, result, 0.99)
    rows = evaluation.student_rows(student.eval(), [1, 2])
    student.load_state_dict(current)
    student.train()
    return {f"fd{row.nfe}": round(row.fd, 4) for row in rows}


if __name__ == "__main__":
    main()
