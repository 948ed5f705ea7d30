"""``svfnet synth OUT``: write the built-in synthetic cohort as a plain-layout dataset."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write the built-in synthetic cardiac cohort (NIfTI, plain layout)",
        description="Writes N synthetic end-diastolic short-axis volumes with their label maps "
        "(OUT/synth_NNN.nii.gz + OUT/synth_NNN_gt.nii.gz, labels in svfnet's values) and OUT/synth.json "
        "(every subject's parameters). Then: svfnet prepare OUT WORKDIR.",
    )
    parser.add_argument("out", metavar="OUT", help="dataset folder to create (must be empty unless --force)")
    parser.add_argument(
        "--subjects", type=int, default=40, metavar="N", help="number of subjects (default 40)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    parser.add_argument(
        "--outliers",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="probability of an outlier heart: dilated LV or small RV (default 0.1)",
    )
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from svfnet.data.synthetic import write_synthetic_dataset

    written = write_synthetic_dataset(
        args.out,
        args.subjects,
        args.seed,
        outlier_fraction=args.outliers,
        overwrite=args.force,
        progress=not args.no_progress,
    )
    print(f"wrote {len(written)} synthetic subjects (seed {args.seed}) to {args.out}")
    return 0
