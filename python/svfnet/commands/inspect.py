"""``svfnet inspect DATASET``: what a dataset holds and what ``svfnet prepare`` would make of it."""

from __future__ import annotations

import argparse
import json
import sys

from svfnet.commands.dataset_options import add_dataset_options, add_long_axis_option, dataset_from_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list what a dataset holds (geometry, header problems, regions) before preparing it",
        description="Reads every subject of DATASET as `svfnet prepare` would and prints, per subject, the "
        "layout and frame, shape, voxel size and orientation (as ITK reads the headers), header warnings, "
        "label values, each region's volume in ml and the slices it covers, the regions missing and "
        "prepare's warnings; then a summary. Writes nothing. Exits with 1, naming them, when prepare would "
        "refuse subjects. See docs/data.md.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder")
    add_dataset_options(parser)
    add_long_axis_option(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document (subjects and summary)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _subject_lines(s) -> list[str]:
    head = f"{s.id}  [{s.layout}{' ' + s.phase if s.phase else ''}]"
    if s.shape is not None:
        head += (
            f"  {'×'.join(map(str, s.shape))}  {' × '.join(f'{v:.4g}' for v in s.spacing_mm)} mm"
            f"  {s.orientation} (from the {s.geometry_source})"
        )
    lines = [head]
    if s.label_values:
        lines.append(
            f"    label values {s.label_values}; labels on {s.labelled_slices} of {s.shape[2]} slices"
        )
    for region in s.regions.values():
        lines.append(
            f"    {region.name}: {region.volume_ml:.1f} ml, slices {region.slices[0]}–{region.slices[-1]} "
            f"({len(region.slices)})"
        )
    if s.missing_regions and s.error is None:
        from svfnet.data.inspect import REGION_NAMES

        lines.append(f"    missing: {', '.join(REGION_NAMES[r] for r in s.missing_regions)}")
    lines += [f"    header: {w}" for w in s.header_warnings]
    lines += [f"    warning: {w}" for w in s.warnings]
    if s.error:
        lines.append(f"    REFUSED by prepare: {s.error}")
    return lines


def run(args: argparse.Namespace) -> int:
    import warnings

    from svfnet.data.inspect import inspect_dataset, summarise
    from svfnet.data.nifti import HeaderWarning

    dataset = dataset_from_options(args)
    with warnings.catch_warnings():
        # the header problems are part of the report, once per subject, not warnings on the side
        warnings.simplefilter("ignore", HeaderWarning)
        inspections = inspect_dataset(dataset, long_axis=args.long_axis, progress=not args.no_progress)
    summary = summarise(dataset, inspections)
    if args.json:
        print(json.dumps({"subjects": [s.record() for s in inspections], "summary": summary}, indent=1))
    else:
        for s in inspections:
            print("\n".join(_subject_lines(s)))
        print(
            f"\n{summary['subjects']} subjects ({summary['layout']} layout) in {summary['dataset']}: "
            f"in-plane {summary['in_plane_mm']} mm, slices {summary['slice_mm']} mm thick, "
            f"{summary['slices']} slices"
        )
        for name, subjects in summary["missing_regions"].items():
            if subjects:
                print(f"  no {name}: {len(subjects)} subjects")
        if summary["with_header_warnings"]:
            print(
                f"  header warnings: {len(summary['with_header_warnings'])} subjects (read as ITK reads them)"
            )
        if summary["with_warnings"]:
            print(f"  prepare warnings: {len(summary['with_warnings'])} subjects")
    if summary["refused"]:
        print(
            f"svfnet inspect: prepare would refuse {len(summary['refused'])} subjects: "
            + ", ".join(summary["refused"]),
            file=sys.stderr,
        )
        return 1
    return 0
