"""Evaluate a bundled teacher and write its model card (README.md, eval.json, samples.png in its asset folder).

    python scripts/make_model_card.py mnist --samples 1000
    python scripts/make_model_card.py checkerboard --samples 2000

The card states the data, network, training command and cost, and the quality-versus-NFE table measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import distill
from distill.evaluation.tables import Evaluation, markdown_table, plot_quality, report, save_samples
from distill.solvers import steps_for_nfe
from distill.teachers.loading import ASSET_DIR


def card_text(name: str, teacher, result: dict, rows, evaluation: Evaluation) -> str:
    folder = ASSET_DIR / name
    info = teacher.info
    summary = json.loads((folder / "train_summary.json").read_text())
    config_text = (folder / "train_config.yaml").read_text()
    parameters = sum(p.numel() for p in teacher.parameters())
    floor = ", ".join(f"{k} {v:.4g}" for k, v in result["data_floor"].items() if k != "samples")
    minutes = summary["train_seconds"] / 60
    data = f"`{info.data.name}`"
    if info.data.size:
        data += f" at {info.data.size}x{info.data.size}"
    if info.num_classes:
        data += f", {info.num_classes} classes, null label {info.null_label} (label dropout for guidance)"
    network = type(getattr(teacher, "network", teacher)).__name__  # analytic teachers have none
    return f"""# Teacher `{name}`

{info.description or ''}

- **Data**: {data}.
- **Network**: {network}, {parameters:,} parameters; path `{type(teacher.schedule).__name__}`, prediction
  `{teacher.parameterization.prediction_type}`, canonical range t in [{teacher.t_min:.4g}, {teacher.t_max:.4g}].
- **Training**: {summary['steps']} steps, final loss {summary['final_loss']:.4g}, {minutes:.1f} min of training
  on this project's 2-core CPU (summed over resumed sessions){f"; {summary['note']}" if summary.get("note") else ""}.
- **Recreate**: `distill train-teacher {name}` (config: `distill/configs/teachers/{name}.yaml`; the resolved config is
  `train_config.yaml` here).
- **Load**: `distill.load_teacher("{name}")`.

## Quality versus NFE

`python scripts/make_model_card.py {name} --samples {evaluation.samples}` — {evaluation.samples} samples, seed
{evaluation.seed}{", classes in turn" if evaluation.cond is not None else ""}; fidelity is the RMSE to the teacher's own
64-step DPM-Solver++(2M) solution from the same noise (so that row reads 0). Real data against real data: {floor}.

{markdown_table(rows)}

![samples](samples.png)

<details><summary>training config</summary>

```yaml
{config_text}```
</details>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--nfe", default="1,2,4,8,16,32,64")
    parser.add_argument("--out", default=None, help="where the card goes (default: the teacher's asset folder)")
    args = parser.parse_args()

    teacher = distill.load_teacher(args.name)
    evaluation = Evaluation(teacher, samples=args.samples)
    rows = evaluation.teacher_rows(nfes=[int(n) for n in args.nfe.split(",")], name=args.name)
    result = report(evaluation, rows)
    folder = Path(args.out) if args.out else ASSET_DIR / args.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(result, indent=1))
    best = min(rows, key=lambda r: r.fd if r.fd is not None else r.swd)
    shown = 100 if evaluation.is_image else evaluation.samples
    x = evaluation.generate_with_solver(best.solver, steps_for_nfe(best.solver, best.nfe)).x[:shown]  # cached
    save_samples(x, folder / "samples.png", title=f"{args.name}: {best.solver}, {best.nfe} NFE")
    plot_quality(rows, folder / "quality.png", title=args.name)
    (folder / "README.md").write_text(card_text(args.name, teacher, result, rows, evaluation))
    print(markdown_table(rows))
    print(f"card -> {folder / 'README.md'}")


if __name__ == "__main__":
    main()
