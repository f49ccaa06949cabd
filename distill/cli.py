"""The ``distill`` command: a thin shell over the library. Reports go to stdout (``--json``), logs to stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _teachers(args: argparse.Namespace) -> dict:
    from .teachers import bundled_teachers

    rows = [{"name": name, "description": description} for name, description in bundled_teachers().items()]
    if not args.json:
        for row in rows:
            print(f"{row['name']:28s} {row['description']}")
    return {"teachers": rows}


def _sample(args: argparse.Namespace) -> dict:
    from .evaluation.tables import save_samples

    if args.model.endswith((".onnx", ".xml")):
        return _sample_onnx(args)
    from .conditions import with_scale
    from .data import class_cycle
    from .solvers import sample, solver_nfe, time_grid
    from .students import FlowMap, load_model
    from .teachers.guided import guide

    model, _ = load_model(args.model)  # a student samples by flow-map jumps, a teacher with args.solver
    is_student = isinstance(model, FlowMap)
    if model.sample_shape is None:
        raise ValueError(f"{args.model} does not declare its sample shape; sample it from Python instead")
    cond = class_cycle(model.info, args.n)  # a class-conditional model: every class in turn
    if args.class_label is not None:
        cond = torch.full((args.n,), args.class_label, dtype=torch.long)
    if args.prompt or args.prompts:  # a text-to-image model: the prompts in turn
        cond = model.encode_prompts(_prompt_cycle(args, args.n))
    if args.guidance is not None and is_student:  # one call per step: the scale is the student's input
        if not model.guidance_conditioned:
            raise ValueError(f"{args.model} was not distilled with guidance: distil it with objective.guidance="
                             "[w_min, w_max], or sample its teacher with --guidance")
        cond = with_scale(cond, args.guidance)
    elif args.guidance is not None:
        if cond is None:
            raise ValueError("--guidance needs a class-conditional teacher and its null label (--null-class)")
        model = guide(model, args.guidance, args.null_class)
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, *model.sample_shape, generator=generator)
    times = time_grid(model, args.steps, args.grid)
    start = time.perf_counter()
    solver = None if is_student else args.solver
    x = sample(model, noise, times=times, solver=solver, cond=cond)
    seconds = time.perf_counter() - start
    report = {"model": str(args.model), "solver": solver or "flow_map", "steps": args.steps,
              "nfe": args.steps if is_student else solver_nfe(args.solver, times), "samples": args.n,
              "seconds": round(seconds, 4),
              "out": str(args.out), "reference_rmse": None}
    exact = None if is_student else model.flow_map(float(times[0]) * noise.double(), float(times[0]), 0.0)
    if exact is not None:  # analytic teacher: error against its exact flow map from the same noise
        report["reference_rmse"] = float((x.double() - exact).pow(2).mean().sqrt())
    title = f"{args.model}: {report['solver']}, {report['nfe']} NFE"
    save_samples(model.decode(x), args.out, times=times.numpy(), title=title)
    if not args.json:
        extra = f", RMSE to the exact flow map {report['reference_rmse']:.4g}" if report["reference_rmse"] else ""
        print(f"{args.n} samples from {args.model} ({report['solver']}, {report['nfe']} NFE) in {seconds:.2f} s "
              f"-> {args.out}{extra}")
    return report


def _prompt_cycle(args: argparse.Namespace, n: int) -> list[str]:
    """``--prompt`` values, then the ``--prompts`` file's, repeated in turn to ``n``."""
    from .prompts import load_prompts

    prompts = list(args.prompt or []) + (load_prompts(args.prompts).prompts if args.prompts else [])
    return [prompts[i % len(prompts)] for i in range(n)]


def _sample_onnx(args: argparse.Namespace) -> dict:
    """``distill sample MODEL.onnx``: the exported graph in ONNX Runtime or OpenVINO (``exporters.runtime``, no
    PyTorch)."""
    from exporters.runtime import OnnxSampler

    from .data import class_cycle
    from .evaluation.tables import save_samples
    from .model_info import ModelInfo

    runtime = OnnxSampler(args.model, providers=args.providers, backend=args.runtime)
    # a class-conditional model: every class in turn
    labels = class_cycle(ModelInfo(num_classes=runtime.metadata.get("num_classes")), args.n)
    if args.class_label is not None:
        labels = [args.class_label] * args.n
    steps = runtime.metadata.get("steps") or args.steps
    start = time.perf_counter()
    x = runtime.sample(args.n, seed=args.seed, class_labels=labels, steps=steps, guidance=args.guidance)
    seconds = time.perf_counter() - start
    save_samples(torch.from_numpy(x), args.out, title=f"{args.model}: {steps} steps")
    report = {"model": str(args.model), "solver": "onnx", "steps": steps, "nfe": steps, "samples": args.n,
              "seconds": round(seconds, 4), "out": str(args.out), "providers": runtime.providers,
              "precision": runtime.metadata.get("precision")}
    if not args.json:
        print(f"{args.n} samples from {args.model} ({report['precision']}, {steps} steps, {runtime.providers[0]}) in "
              f"{seconds:.2f} s -> {args.out}")
    return report


def _export(args: argparse.Namespace) -> dict:
    from exporters.report import ExportConfig, export_student, markdown

    if args.pipeline:
        return _export_pipeline(args)
    config = ExportConfig(steps=tuple(args.steps), precisions=tuple(args.precision), graphs=tuple(args.graphs),
                          samples=args.samples, latency_batch=args.batch, threads=args.threads,
                          runtimes=tuple(args.runtime))
    report = export_student(args.model, args.out, config)
    if not args.json:
        print(markdown(report))
        print(f"\nmodels and report.json / report.md in {args.out}")
    return report


def _export_pipeline(args: argparse.Namespace) -> dict:
    from exporters.pipeline import export_pipeline

    from .students import load_student

    report = export_pipeline(load_student(args.model), args.out, steps=tuple(args.steps), source=str(args.model))
    if not args.json:
        errors = ", ".join(f"{stage} {error:.1e}" for stage, error in report["stage_errors"].items())
        print(f"pipeline -> {report['folder']}; relative errors: {errors}")
        for row in report["rows"]:
            print(f"  {row['steps']} steps, {report['prompts']} prompts: ONNX {row['onnx_ms']:.0f} ms, eager PyTorch "
                  f"{row['eager_ms']:.0f} ms")
    return report


def _dry_run(config) -> dict:
    """``--dry-run``: print the resolved config and stop."""
    from .config import dump

    print(dump(config), end="")
    return {"config": config.name, "dry_run": True}


def _drive(args: argparse.Namespace, config, execute, show) -> dict:
    """The training commands: ``--dry-run`` prints the resolved config; otherwise ``execute(config, restart)``
    trains (resuming its run folder) and returns the report, which ``show(report, config)`` prints unless ``--json``."""
    if args.dry_run:
        return _dry_run(config)
    report = execute(config, args.restart)
    if not args.json:
        show(report, config)
    return report


def _train_teacher(args: argparse.Namespace) -> dict:
    from .config import load_config
    from .recipes.teacher_training import TeacherConfig, train_teacher

    def execute(config, restart: bool) -> dict:
        output, result = train_teacher(config, restart)
        return {"teacher": str(output), "steps": result.step, "seconds": round(result.seconds, 1),
                "final_loss": result.history[-1]["loss"] if result.history else None}

    def show(report: dict, config) -> None:
        print(f"teacher {config.name} -> {report['teacher']} ({report['steps']} steps)")

    return _drive(args, load_config(TeacherConfig, args.config, "teachers", args.overrides), execute, show)


def _eval(args: argparse.Namespace) -> dict:
    from .evaluation.tables import Evaluation, markdown_table, plot_quality, report
    from .students import load_model

    model, teacher = load_model(args.model)
    if teacher is None:
        raise ValueError(f"{args.model} does not name the teacher it was distilled from (info.teacher)")
    student = None if model is teacher else model  # a student is shown beside its teacher's solvers at the same NFE
    guidance = args.guidance if args.guidance is not None or student is None else student.default_guidance
    evaluation = Evaluation(teacher, samples=args.samples, seed=args.seed, data=args.data, progress=not args.quiet,
                            guidance=guidance, prompts=args.prompts)  # a guidance-distilled student: its default w
    teacher_name = str(args.model if student is None else student.info.teacher)
    rows = evaluation.side_by_side(student, args.solvers, args.nfe, teacher_name=teacher_name,
                                   student_name=str(args.model))
    result = report(evaluation, rows)
    if args.plot:
        plot_quality(rows, args.plot, title=f"{args.model}: {args.samples} samples")
    if not args.json:
        print(markdown_table(rows))
        floor = ", ".join(f"{k} {v:.4g}" for k, v in result["data_floor"].items())
        print(f"\ndata floor (real vs real): {floor}")
    return result


def _run(args: argparse.Namespace) -> dict:
    from .recipes.distillation import load_distill_config, run_distillation

    return _drive(args, load_distill_config(args.config, args.overrides), run_distillation,
                  lambda report, config: _print_run(report))


def _finetune(args: argparse.Namespace) -> dict:
    from .recipes.finetuning import finetune, load_finetune_config

    def show(report: dict, config) -> None:
        print(f"adapter ({report['adapter_bytes'] / 1e3:.0f} kB) -> {report['adapter']}; merged teacher -> "
              f"{report['teacher']}")
        _print_rows(report["eval"])
        print(f"next: distill run quickstart teacher={report['teacher']} run_dir=runs/{config.name}-student")

    return _drive(args, load_finetune_config(args.config, args.overrides), finetune, show)


def _print_run(report: dict) -> None:
    print(f"student ({report['objective']}, {report['steps']} steps, {report['train_seconds']:.0f} s) -> "
          f"{report['student']}")
    _print_rows(report.get("eval"))


def _print_rows(evaluation: dict | None) -> None:
    """An eval report's rows as a markdown table (nothing without an evaluation)."""
    from .evaluation.tables import EvalRow, markdown_table

    if evaluation:
        print(markdown_table([EvalRow(**row) for row in evaluation["rows"]]))


def _quickstart(args: argparse.Namespace) -> dict:
    from .recipes.distillation import load_distill_config, run_distillation

    start = time.perf_counter()
    overrides = [f"run_dir={args.out}", *(["train.progress=false"] if args.json else []), *args.overrides]
    config = load_distill_config("quickstart", overrides)
    run = run_distillation(config, args.restart)
    export = None
    if args.export_steps:  # the student's ONNX sampler, checked against PyTorch, its FD beside the float student's
        from exporters.report import ExportConfig, export_student

        export = export_student(run["student"], f"{args.out}/export",
                                ExportConfig(steps=tuple(args.export_steps), precisions=("fp32",),
                                             samples=config.eval.samples, exporter="torchscript"))
    report = {"teacher": run["teacher"], "student": run["student"], "seconds": round(time.perf_counter() - start, 1),
              "eval": run["eval"], "export": export, "run": run}
    if not args.json:
        _print_run(run)
        if export:
            from exporters.report import markdown

            print(markdown(export))
        print(f"quickstart: {report['seconds']:.0f} s; samples {args.out}/samples.png, plot {args.out}/quality.png; "
              f"next: distill sample {run['student']} --steps 2 --class 3")
    return report


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _name_list(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    teachers = commands.add_parser("teachers", help="list bundled teachers")
    teachers.set_defaults(run=_teachers)

    sample = commands.add_parser("sample", help="sample a student (flow-map jumps) or a teacher (an ODE solver)")
    sample.add_argument("model", help="student folder, bundled teacher name, diffusers folder or hub id")
    sample.add_argument("--steps", type=int, default=16)
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--solver", default="heun", choices=["euler", "heun", "dpmpp2m"])
    sample.add_argument("--grid", default="uniform", choices=["uniform", "shifted", "edm", "trained"])
    sample.add_argument("--class", dest="class_label", type=int, default=None, help="class label to condition on")
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (a guidance-distilled student takes it as an input)")
    sample.add_argument("--null-class", type=int, default=None, help="the unconditional label, for --guidance")
    sample.add_argument("--prompt", action="append", default=None,
                        help="a prompt, for a text-to-image teacher (repeat it for several)")
    sample.add_argument("--prompts", default=None, help="a prompt file (.txt, .csv, .jsonl or an image-caption folder)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png", help="grid.png or samples.npz")
    sample.add_argument("--providers", default=None, help="ONNX Runtime providers for a .onnx model, e.g. cuda,cpu")
    sample.add_argument("--runtime", default=None, choices=["onnxruntime", "openvino"],
                        help="runtime for a .onnx model (default onnxruntime; an OpenVINO .xml runs in openvino)")
    sample.set_defaults(run=_sample)

    evaluate = commands.add_parser("eval", help="quality versus NFE: a teacher's solvers, or a student beside them")
    evaluate.add_argument("model", help="student folder, bundled teacher name, diffusers folder or hub id")
    evaluate.add_argument("--nfe", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64], help="e.g. 1,2,4")
    evaluate.add_argument("--solvers", type=_name_list, default=["euler", "heun", "dpmpp2m"])
    evaluate.add_argument("--samples", type=int, default=1000)
    evaluate.add_argument("--data", default=None, help="dataset name when the teacher does not record it")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--guidance", type=float, default=None,
                          help="classifier-free guidance scale: the teacher guided at it, a guidance-distilled student "
                               "asked for it")
    evaluate.add_argument("--prompts", default=None, help="a text-to-image model's prompt file to judge on (default: "
                          "the held-out phrasings of its pipeline's prompts.json)")
    evaluate.add_argument("--plot", default="eval.png", help="PNG of quality versus NFE ('' for none)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    evaluate.set_defaults(run=_eval)

    export = commands.add_parser("export", help="ONNX sampler graphs at each precision, checked against PyTorch")
    export.add_argument("model", help="a student folder (distill run / quickstart writes <run>/student)")
    export.add_argument("--steps", type=_int_list, default=[1, 2, 4], help="sampler graphs to write, e.g. 1,2,4")
    export.add_argument("--precision", type=_name_list, default=["fp32", "fp16", "int8"],
                        help="fp32, fp16, int8 (static QDQ), int8-dynamic, int8-mixed")
    export.add_argument("--graphs", type=_name_list, default=["sampler"], help="sampler and/or jump")
    export.add_argument("--runtime", type=_name_list, default=["onnxruntime"],
                        help="onnxruntime and/or openvino (fp32 and NNCF int8, bf16 where the CPU has it)")
    export.add_argument("--out", default="export", help="output folder")
    export.add_argument("--samples", type=int, default=500, help="samples for FD (0: skip)")
    export.add_argument("--batch", type=int, default=64, help="batch of the latency measurement")
    export.add_argument("--threads", type=int, default=None, help="threads for PyTorch and ONNX Runtime alike")
    export.add_argument("--pipeline", action="store_true", help="a text-to-image student: the whole pipeline "
                        "(text encoder, the student's jump, VAE decoder, tokenizer) in Optimum's ONNX layout")
    export.set_defaults(run=_export)

    def training_command(name: str, help: str, presets: str, example: str, run):
        command = commands.add_parser(name, help=help)
        command.add_argument("config", help=f"a YAML file or a preset in distill/configs/{presets}/")
        command.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
        command.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
        command.set_defaults(run=run)
        return command

    train_teacher = training_command("train-teacher", "train a teacher (how the bundled ones were made)", "teachers",
                                     "train.steps=100", _train_teacher)
    run = training_command("run", "distil a student; writes a run folder (config, checkpoints, logs, eval)",
                           "distill", "train.steps=100 objective.name=ctm", _run)
    tune = training_command("finetune", "adapt a teacher to new data with LoRA adapters (then distil it)",
                            "finetune", "data.classes=[3,7] lora.rank=4", _finetune)

    quickstart = commands.add_parser("quickstart", help="bundled MNIST teacher -> distilled student -> eval table")
    quickstart.add_argument("overrides", nargs="*",
                            help="key=value overrides of distill/configs/distill/quickstart.yaml")
    quickstart.add_argument("--out", default="runs/quickstart", help="the run folder")
    quickstart.add_argument("--export-steps", type=_int_list, default=[2],
                            help="ONNX sampler graphs to export and check ('' for none)")
    quickstart.set_defaults(run=_quickstart)

    for command in (teachers, sample, evaluate, export, train_teacher, run, tune, quickstart):
        command.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    for command in (train_teacher, run, tune, quickstart):
        command.add_argument("--restart", action="store_true",
                             help="the run folder holds a run of another config: move it aside and start over")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
