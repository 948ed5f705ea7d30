"""``svfnet prepare DATASET OUT``: align, crop and resample a dataset onto the common grid."""

from __future__ import annotations

import argparse

from svfnet.commands.dataset_options import add_dataset_options, add_long_axis_option, dataset_from_options
from svfnet.commands.guard import guarded


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="align a dataset from its labels and resample it onto the common grid (OUT/prepared/)",
        description="Reads DATASET (layout plain, nnunet or acdc; detected when not given), aligns every "
        "subject rigidly from its labels to a canonical orientation (LV centre, long axis base to apex, RV "
        "direction), resamples image and labels onto one grid, normalises intensities to [0, 1], and writes "
        "OUT/prepared/{images,labels,transforms}/<id> and OUT/prepared/subjects.json. See docs/data.md.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder")
    parser.add_argument("out", metavar="OUT", help="work folder (prepared/ is written inside it)")
    add_dataset_options(parser)
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(64, 64, 16),
        metavar=("I", "J", "K"),
        help="common grid shape (default 64 64 16)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SI", "SJ", "SK"),
        help="common grid spacing in mm (default: fitted to hold every heart plus --margin)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=10.0,
        metavar="MM",
        help="margin around the hearts when the spacing is fitted (default 10 mm)",
    )
    add_long_axis_option(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/prepared/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=guarded(run, writes="out"))


def run(args: argparse.Namespace) -> int:
    from svfnet.common.workdir import REGIONS
    from svfnet.data.prepare import run_prepare

    dataset = dataset_from_options(args)
    report = run_prepare(
        args.out,
        dataset,
        shape=tuple(args.shape),
        spacing_mm=tuple(args.spacing) if args.spacing else None,
        margin_mm=args.margin,
        long_axis=args.long_axis,
        overwrite=args.force,
        progress=not args.no_progress,
    )
    grid = report.grid
    shape_text = "×".join(map(str, grid.shape))
    spacing_text = " × ".join(f"{s:g}" for s in grid.spacing_mm)
    prepared_folder = report.workdir / "prepared"
    print(
        f"prepared {len(report.entries)} subjects ({dataset.layout} layout) into {prepared_folder}: "
        f"grid {shape_text} at {spacing_text} mm"
    )
    missing = report.with_missing_regions
    if missing:
        print(f"{len(missing)} subjects lack regions (kept; listed in subjects.json):")
        for subject_id, regions in missing.items():
            print(f"  {subject_id}: no {', '.join(REGIONS[r] for r in regions)}")
    warnings = report.with_warnings
    if warnings:
        print(f"{len(warnings)} subjects have warnings:")
        for subject_id, messages in warnings.items():
            for message in messages:
                print(f"  {subject_id}: {message}")
    return 0
