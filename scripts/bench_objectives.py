"""Every distillation objective under the same budget on an analytic 2-D teacher, side by side.

    python scripts/bench_objectives.py [--steps 8000] [--batch 256] [--only meanflow,ctm] [--json]

A from-scratch ``TwoTimeMLP`` student is trained on the bundled ``eight-gaussians-exact`` teacher (a Gaussian mixture
with an exact velocity) with each objective's defaults, the same optimiser settings and the same number of steps.
Reported per objective: the 1-step flow-map error, RMSE of ``X(noise, t_max, 0)`` against the exact ODE solution
from the same noise relative to the data's standard deviation; the sliced Wasserstein distance (SWD) of 1-, 2- and
4-step samples to fresh mixture samples (objectives that learn only jumps to data sample with gamma = 1, the
consistency-model multistep); ``data_swd``, the SWD between two fresh draws (the floor); wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

import distill
from distill.data import Dataset
from distill.evaluation.metrics import sliced_wasserstein
from distill.nets import TwoTimeMLP
from distill.objectives import OBJECTIVES, TimePairs
from distill.students import TwoTimeFlowMap
from distill.train import TrainConfig, train, use_ema

# DMD's fake score is a trainable copy of the teacher's network; an analytic teacher has none (scripts/bench_distill.py
# measures DMD on the MNIST teachers)
NEEDS_NETWORK = ("dmd",)
# objectives that learn jumps to data only (s = 0) sample several steps as consistency models do: jump to 0, re-noise
MULTISTEP_GAMMA = {"consistency": 1.0, "continuous_consistency": 1.0}


# one time-pair law for every objective that samples pairs: uniform suits 2-D data (the logit-normal default is the
# image setting), with a quarter of the pairs at s = t and a quarter at s = 0
PAIRS = TimePairs(distribution="uniform", share_equal=0.25, share_zero=0.25)


def make_objective(name: str, teacher, steps: int):
    objective, config_class = OBJECTIVES[name]
    changes = {"times": PAIRS}
    if name == "progressive":  # spread 64 -> 1 steps (6 rounds) over the budget
        changes = {"start_steps": 64, "steps_per_round": max(1, steps // 6)}
    if name in ("consistency", "shortcut"):  # their own time laws
        changes = {}
    if name == "continuous_consistency":  # s = 0 always
        changes = {"warmup_steps": steps // 10}
    return objective(teacher, config_class(**changes))


def reference(teacher, samples: int) -> dict:
    """Noise, the exact 1-step map from it (float64 RK4, 512 steps), and fresh data samples."""
    noise = torch.randn(samples, 2, generator=torch.Generator().manual_seed(123))
    exact = teacher.flow_map(noise.double(), teacher.t_max, 0.0, steps=512).float()
    fresh = teacher.sample_data(samples, torch.Generator().manual_seed(7)).float()
    return {"noise": noise, "exact": exact, "fresh": fresh}


def evaluate(student, teacher, ref: dict, gamma: float = 0.0) -> dict:
    noise, exact, fresh = ref["noise"], ref["exact"], ref["fresh"]
    data_std = float(exact.std())
    generator = torch.Generator().manual_seed(124)
    with torch.no_grad():
        jumped = student(noise * teacher.t_max, teacher.t_max, 0.0)
        swd = {str(k): sliced_wasserstein(distill.sample(student, noise, steps=k, gamma=gamma, generator=generator),
                                          fresh) for k in (1, 2, 4)}
    return {"flow_map_rel_rmse": float((jumped - exact).pow(2).mean().sqrt()) / data_std, "swd": swd}


def run(name: str, teacher, data: Dataset, ref: dict, args) -> dict:
    torch.manual_seed(args.seed)
    network = TwoTimeMLP(hidden=args.hidden, time_scale=args.time_scale)
    student = TwoTimeFlowMap(network, t_min=teacher.t_min, t_max=teacher.t_max, sample_shape=(2,))
    config = TrainConfig(steps=args.steps, batch_size=args.batch, learning_rate=args.lr, warmup_steps=100,
                         lr_decay="cosine", ema_decays=[0.999], checkpoint_every=args.steps, log_every=100,
                         progress=False, seed=args.seed)
    objective = make_objective(name, teacher, args.steps)
    started = time.perf_counter()
    own = objective.training_data(progress=False)  # the trajectory objective learns the teacher's ODE
    data = data if own is None else own
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(student, objective, data, config, run_dir)
    seconds = time.perf_counter() - started
    use_ema(student, result, 0.999)
    quality = evaluate(student.eval(), teacher, ref, MULTISTEP_GAMMA.get(name, 0.0))
    return {"objective": name, **quality, "seconds": seconds,
            "final_loss": result.history[-1].get("loss") if result.history else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="eight-gaussians-exact")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--time-scale", type=float, default=100.0,
                        help="the student's time-embedding scale (1000 destabilises the JVP objectives here)")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(name for name in OBJECTIVES if name not in NEEDS_NETWORK),
                        help="comma-separated objective names")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    teacher = distill.load_teacher(args.teacher)
    data = Dataset(teacher.sample_data(50_000, torch.Generator().manual_seed(1)).float(), name=args.teacher)
    ref = reference(teacher, args.samples)
    data_swd = sliced_wasserstein(teacher.sample_data(args.samples, torch.Generator().manual_seed(8)).float(),
                                  ref["fresh"])
    rows = []
    for name in args.only.split(","):
        if name not in OBJECTIVES:
            parser.error(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        rows.append({**run(name, teacher, data, ref, args), "data_swd": data_swd})
        print(f"{name}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"teacher": args.teacher, "steps": args.steps, "batch": args.batch, "rows": rows}))
        return
    print(f"| objective | 1-step map RMSE / data std | SWD 1 step | SWD 2 | SWD 4 | seconds |  "
          f"({args.teacher}, {args.steps} steps x {args.batch}; SWD floor {data_swd:.4f})")
    print("|---|---|---|---|---|---|")
    for row in rows:
        swd = row["swd"]
        print(f"| {row['objective']} | {row['flow_map_rel_rmse']:.4f} | {swd['1']:.4f} | {swd['2']:.4f} | "
              f"{swd['4']:.4f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
