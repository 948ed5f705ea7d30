"""The options that say how to read a dataset folder, shared by the commands that read one."""

from __future__ import annotations

import argparse


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """``--layout``, ``--phase`` and ``--labels``, as :func:`dataset_from_options` reads them."""
    parser.add_argument(
        "--layout",
        choices=("plain", "nnunet", "acdc"),
        default=None,
        help="dataset layout (default: detected)",
    )
    parser.add_argument(
        "--phase",
        type=str.upper,
        choices=("ED", "ES"),
        default=None,
        help="acdc: which frame (default ED); plain: keep names ending in _ED/_ES (default all)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="SRC:DST,...",
        help="label mapping to svfnet's values (1 LV blood pool, 2 LV myocardium, 3 RV blood pool, "
        "4 RV myocardium), e.g. 3:1,2:2, or a preset: acdc, svfnet. Default: the layout's "
        "(plain: svfnet's own values; acdc: acdc; nnunet: by label name in dataset.json)",
    )


def add_long_axis_option(parser: argparse.ArgumentParser) -> None:
    """``--long-axis``: how ``svfnet prepare`` (and ``svfnet inspect``, which mirrors it) finds each
    subject's long axis."""
    parser.add_argument(
        "--long-axis",
        choices=("slices", "labels"),
        default="slices",
        help="long axis from the slice normal of the short-axis stack (default) or from the LV labels",
    )


def dataset_from_options(args: argparse.Namespace):
    """The :class:`svfnet.data.readers.Dataset` that ``args.dataset`` and the options name."""
    from svfnet.data.labels import parse_label_mapping
    from svfnet.data.readers import read_dataset

    mapping = parse_label_mapping(args.labels) if args.labels is not None else None
    return read_dataset(args.dataset, args.layout, phase=args.phase, label_mapping=mapping)
