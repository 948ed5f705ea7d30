"""``svfnet segment``: multi-atlas segmentation of a NIfTI image with SVF-Net, with its uncertainty."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svfnet.commands.argument_types import add_refine_iterations, positive_int, refinement_option
from svfnet.commands.guard import guarded

# svfnet.segmentation.multi_atlas's FUSIONS, DEFAULT_FUSION and DEFAULT_MIN_CORRELATION, spelt out: `svfnet --help`
# must not import torch (tests/test_segmentation.py checks that they agree)
FUSIONS = ("majority", "weighted")
DEFAULT_FUSION = "weighted"
DEFAULT_MIN_CORRELATION = 0.4


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a NIfTI image from the labelled subjects of a work folder (multi-atlas, with "
        "uncertainty)",
        description="Aligns the image rigidly to the atlases' frame and resamples it onto their grid, "
        "registers every atlas (the labelled prepared subjects of WORKDIR: its training and validation "
        "subjects) to it with SVF-Net, warps their labels and fuses them, and writes, on the image's own "
        "grid: PREFIX_labels.nii.gz, PREFIX_uncertainty.nii.gz (normalised entropy of the fused labels, in "
        "[0, 1]), PREFIX_probabilities.nii.gz (one channel per label) and PREFIX_volumes.json (each region's "
        "volume in ml, with the interval of the atlases' volumes, and its mean uncertainty). "
        "See docs/segment.md.",
    )
    parser.add_argument(
        "--model", required=True, type=Path, metavar="CKPT", help="SVF-Net checkpoint (svfnet train)"
    )
    parser.add_argument(
        "--atlases",
        required=True,
        type=Path,
        metavar="WORKDIR",
        help="work folder whose labelled prepared "
        "subjects are the atlases (the one the model was trained on)",
    )
    parser.add_argument(
        "--image", required=True, type=Path, metavar="IMAGE.nii.gz", help="the image to segment"
    )
    parser.add_argument(
        "--out", required=True, metavar="PREFIX", help="output prefix (a folder when it ends with /)"
    )
    parser.add_argument(
        "--atlas-count",
        type=positive_int,
        metavar="N",
        help="use the N atlases whose prepared images correlate best with the image (default: all)",
    )
    parser.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=DEFAULT_FUSION,
        help=f"label fusion: equal votes, or votes weighted by local correlation (default {DEFAULT_FUSION})",
    )
    parser.add_argument(
        "--rigid-init",
        choices=("geometry", "world"),
        default="geometry",
        help="start of the rigid alignment: field-of-view centres aligned (default) or the scanner "
        "coordinates",
    )
    parser.add_argument(
        "--min-correlation",
        type=float,
        default=DEFAULT_MIN_CORRELATION,
        metavar="R",
        help="refuse the image (no heart in view) when no atlas correlates with it better than R after the "
        f"rigid alignment (default {DEFAULT_MIN_CORRELATION}; docs/segment.md)",
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="average both registration directions per atlas (twice the network time; no gain measured "
        "after the fusion)",
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="refine each atlas's registration with LCC Log-Demons started from SVF-Net's SVF (the two "
        "finest levels, a few iterations; seconds per atlas on the CPU)",
    )
    add_refine_iterations(parser)
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="B", help="atlases per network call"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if available"
    )
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=guarded(run))  # the output prefix is locked by segment()


def run(args: argparse.Namespace) -> int:

    refine = refinement_option(args)  # --refine-iterations without --refine, or negative: refused first
    import torch

    from svfnet import default_device
    from svfnet.segmentation.multi_atlas import segment

    if args.device == "cuda" and default_device().type != "cuda":
        raise ValueError(
            "--device cuda: no usable CUDA device (torch sees none, or svfnet was built without its CUDA "
            "launchers)"
        )
    for flag, path in (("--image", args.image), ("--model", args.model)):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file ({flag})")
    if not args.atlases.is_dir():
        raise FileNotFoundError(f"{args.atlases}: no such folder (--atlases)")
    device = default_device() if args.device == "auto" else torch.device(args.device)
    try:
        result = segment(
            args.image,
            args.model,
            args.atlases,
            out_prefix=args.out,
            atlas_count=args.atlas_count,
            fusion=args.fusion,
            rigid_initial=args.rigid_init,
            min_correlation=args.min_correlation,
            symmetric=args.symmetric,
            batch_size=args.batch_size,
            device=device,
            overwrite=args.force,
            progress=not args.no_progress,
            refine=refine,
        )
    except ImportError as error:  # SimpleITK missing: one clear line
        print(f"svfnet segment: error: {error}", file=sys.stderr)
        return 2
    record = result.volumes
    timings = record["timings_s"]
    print(
        f"segmented {args.image} from {len(result.atlas_ids)} atlases of {args.atlases} "
        f"({record['fusion']['method']} vote; registration {timings['register_warp']:.1f} s on "
        f"{record['device']}"
        + (f", refinement {timings['refinement']:.1f} s" if "refinement" in timings else "")
        + f", total {timings['total']:.1f} s): "
        f"{result.outputs['volumes']}"
    )
    for name, region in record["regions"].items():
        low, high = region["interval_ml"]
        uncertainty = region["mean_uncertainty"]
        print(
            f"  {name}: {region['volume_ml']:.1f} ml (expected {region['expected_volume_ml']:.1f} ml, "
            f"atlases {low:.1f}–{high:.1f} ml), mean uncertainty "
            + (f"{uncertainty:.2f}" if uncertainty is not None else "—")
        )
    for warning in record["warnings"]:
        print(f"  warning: {warning}")
    return 0
