"""``svfnet run``, ``svfnet demo`` and ``svfnet config``: the whole pipeline in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from svfnet.commands.guard import guarded


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    run_parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline (data, prepare, shapes, references, train, evaluate) from a TOML file",
        description="Runs every stage in one work folder, skipping stages that are up to date and resuming the "
        "one that was interrupted. `svfnet config --defaults` prints every parameter.",
    )
    run_parser.add_argument("config", nargs="?", help="TOML configuration (default: every default)")
    run_parser.add_argument("--workdir", default="svfnet-work", help="work folder (default ./svfnet-work)")
    run_parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler for the parallel stages")
    run_parser.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages")
    run_parser.add_argument("--no-progress", action="store_true")
    run_parser.set_defaults(func=guarded(run, writes="workdir"))

    demo_parser = subparsers.add_parser(
        "demo",
        help="the whole method on the built-in synthetic cohort, sized for a 2-core laptop",
        description="Synthetic cohort -> shapes -> references -> SVF-Net -> evaluation against LCC Log-Demons.",
    )
    demo_parser.add_argument(
        "--quick",
        action="store_true",
        help="8 subjects and 120 training steps: about a minute instead of about 19 minutes",
    )
    demo_parser.add_argument(
        "--realistic",
        action="store_true",
        help="the clinical synthetic cohort (5-10 mm slices, partial coverage, breath-hold offsets, bias and noise, "
        "ACDC's groups, odd NIfTI headers) instead of the standard one",
    )
    demo_parser.add_argument("--workdir", default="svfnet-demo", help="work folder (default ./svfnet-demo)")
    demo_parser.add_argument("--no-progress", action="store_true")
    demo_parser.set_defaults(func=guarded(demo, writes="workdir"))

    config_parser = subparsers.add_parser(
        "config", help="print the run configuration (TOML) with every default"
    )
    config_parser.add_argument(
        "--defaults", action="store_true", help="print every parameter with its default"
    )
    config_parser.set_defaults(func=show_config)


def _print_outcome(outcome) -> None:
    detail = ", ".join(f"{k}={v}" for k, v in outcome.result.items() if not isinstance(v, (dict, list)))
    timing = f" in {outcome.seconds:.1f} s" if outcome.status != "skipped" else ""
    print(f"[{outcome.stage}] {outcome.status}{timing}" + (f": {detail}" if detail else ""), flush=True)


def run(args: argparse.Namespace) -> int:
    from svfnet.config import STAGES, load_config
    from svfnet.pipeline import run_pipeline

    overrides = {"run": {"scheduler": args.scheduler}} if args.scheduler else None
    config = load_config(args.config, overrides)
    stages = tuple(args.stages) if args.stages else STAGES
    run_pipeline(args.workdir, config, stages=stages, progress=not args.no_progress, on_stage=_print_outcome)
    print(f"work folder: {Path(args.workdir).resolve()}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from svfnet.config import demo_config
    from svfnet.pipeline import run_pipeline

    outcomes = run_pipeline(
        args.workdir,
        demo_config(args.quick, args.realistic),
        progress=not args.no_progress,
        on_stage=_print_outcome,
    )
    evaluation = outcomes[-1].result
    print()
    print(f"work folder: {Path(args.workdir).resolve()}")
    if "report" in evaluation:
        print(f"report: {evaluation['report']}")
    for line in evaluation.get("headline", []):
        print(line)
    return 0


def show_config(args: argparse.Namespace) -> int:
    from svfnet.config import render_config

    print(render_config(), end="")
    return 0
