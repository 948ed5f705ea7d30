"""``svfnet evaluate WORKDIR --model CKPT``: SVF-Net against LCC Log-Demons and the identity."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svfnet.commands.guard import guarded


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare SVF-Net with LCC Log-Demons and the identity on the test pairs (tables, HTML report)",
        description="Registers every ordered pair of the work folder's test subjects (split.json) with "
        "SVF-Net, LCC Log-Demons and the identity (and SimpleITK's demons with --sitk, ANTs SyN with "
        "--ants), scores each pair and region (Dice, Hausdorff, local correlation, log-Jacobian spread, "
        "folding) and writes "
        "WORKDIR/evaluation/: pairs.csv, summary.csv, statistics.csv, outliers.csv, report.html, figures/. "
        "An interrupted run resumes: finished pairs are kept.",
    )
    parser.add_argument("workdir", type=Path, metavar="WORKDIR")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="CKPT",
        help="SVF-Net checkpoint (default WORKDIR/models/svfnet/checkpoint.pt)",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="local processes for the demons (default: one per core)"
    )
    parser.add_argument(
        "--scheduler", metavar="ADDR", help="run the demons on this Dask scheduler (tcp://host:8786)"
    )
    parser.add_argument("--sitk", action="store_true", help="add SimpleITK's diffeomorphic demons as a peer")
    parser.add_argument(
        "--ants",
        action="store_true",
        help="add ANTs SyN with cross-correlation as a peer; needs the optional extra "
        "(pip install 'svfnet[ants]', i.e. antspyx); slow: tens of seconds a pair on 2 cores",
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="add SVF-Net + refinement: LCC Log-Demons started from SVF-Net's SVF (the two finest levels)",
    )
    parser.add_argument(
        "--segmentation",
        action="store_true",
        help="also segment every test subject from the training subjects (multi-atlas, as svfnet segment) "
        "and score it: Dice and Hausdorff 95%% per region for single atlas, majority and weighted vote (and "
        "with --refine the same after refinement), the uncertainty's calibration; "
        "WORKDIR/evaluation/segmentation/ and a section of the report",
    )
    parser.add_argument(
        "--demons-defaults",
        action="store_true",
        help="run LCC Log-Demons with its defaults even where `svfnet demons --tune WORKDIR` recorded "
        "parameters tuned on this folder's training pairs (used by default)",
    )
    parser.add_argument(
        "--max-pairs", type=int, metavar="N", help="at most N pairs, evenly spread over all of them"
    )
    parser.add_argument("--no-report", action="store_true", help="write the CSV tables only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=guarded(run, writes="workdir"))


def run(args: argparse.Namespace) -> int:
    from svfnet.common.workdir import WorkDir
    from svfnet.evaluation.evaluate import run_evaluation

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs must be at least 1, got {args.max_pairs}")
    checkpoint = args.model or WorkDir(args.workdir).models / "svfnet" / "checkpoint.pt"
    try:
        result = run_evaluation(
            args.workdir,
            checkpoint,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=not args.no_progress,
            include_sitk=args.sitk,
            include_ants=args.ants,
            include_refinement=args.refine,
            max_pairs=args.max_pairs,
            tuned_demons=not args.demons_defaults,
            report=not args.no_report,
            segmentation=args.segmentation,
        )
    except ImportError as error:  # --ants without antspyx: one clear line, said before any work
        print(f"svfnet evaluate: error: {error}", file=sys.stderr)
        return 2
    for line in result["headline"]:
        print(line)
    if result["demons_params_source"]:
        print(f"LCC Log-Demons parameters: {result['demons_params_source']}")
    computed = ", ".join(f"{method} {count}" for method, count in result["computed"].items())
    print(f"registered now: {computed} (of {result['pairs']} pairs each; the rest were on disk)")
    if result["failed"]:
        print(f"{result['failed']} registration(s) failed: see {result['files']['outliers']}")
    if "segmentation" in result:
        segmented = result["segmentation"]
        for line in segmented["headline"]:
            print(line)
        for subject, error in segmented["failed"].items():
            print(f"segmentation of {subject} failed: {error}")
        print(f"segmentation tables: {segmented['folder']}")
    print(f"tables: {result['folder']}")
    if result["report"]:
        print(f"report: {result['report']}")
    return 0
