"""Argument types for the commands' numeric flags: checked by argparse, so that a bad value is one
line naming the flag (``argument --lr: must be a finite number > 0, got 'nan'``) before any work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """A type for integers ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def positive_finite(text: str) -> float:
    """A float that is finite and > 0 (Python's float() reads 'nan' and 'inf' without complaint)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_finite(text: str) -> float:
    """A float that is finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def add_refine_iterations(parser: argparse.ArgumentParser) -> None:
    """``--refine-iterations N [N ...]``, shared by ``svfnet register`` and ``svfnet segment``."""
    parser.add_argument(
        "--refine-iterations",
        type=int,
        nargs="+",
        metavar="N",
        help="with --refine: iterations per level, coarsest first (one number per level; default: "
        "svfnet.registration.arrays.REFINEMENT)",
    )


def refinement_option(args: argparse.Namespace) -> bool | dict:
    """``--refine`` and ``--refine-iterations`` as ``refine=`` of svfnet.register / svfnet.segment."""
    if args.refine_iterations is None:
        return bool(args.refine)
    if not args.refine:
        raise ValueError("--refine-iterations applies with --refine only")
    if any(n < 0 for n in args.refine_iterations):
        raise ValueError(f"--refine-iterations must be non-negative, got {args.refine_iterations}")
    return {"levels": len(args.refine_iterations), "iterations": tuple(args.refine_iterations)}
