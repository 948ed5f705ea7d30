"""``svfnet register``: register NIfTI images in their original geometry with a trained SVF-Net."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svfnet.commands.argument_types import add_refine_iterations, refinement_option
from svfnet.commands.guard import guarded


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register a pair (or a list of pairs) of NIfTI images with a trained SVF-Net",
        description="Prepares the images onto the model's grid as training data was prepared (from the "
        "label maps when both are given, else after a rigid intensity-based pre-alignment with SimpleITK), "
        "predicts the SVF, exponentiates and warps, and writes PREFIX_warped.nii.gz, PREFIX_svf.nii.gz, "
        "PREFIX_displacement.nii.gz (prepared grid), PREFIX_*_original.nii.gz (the fixed image's grid), "
        "PREFIX_displacement_itk.nii.gz (ITK/ANTs convention) and PREFIX_registration.json. "
        "See docs/register.md.",
    )
    parser.add_argument("--model", required=True, metavar="CKPT", help="SVF-Net checkpoint (svfnet train)")
    parser.add_argument("--moving", metavar="M.nii.gz", help="moving image")
    parser.add_argument("--fixed", metavar="F.nii.gz", help="fixed image")
    parser.add_argument("--out", metavar="PREFIX", help="output prefix (a folder when it ends with /)")
    parser.add_argument("--moving-labels", metavar="L.nii.gz", help="moving label map (warped along)")
    parser.add_argument(
        "--fixed-labels",
        metavar="L.nii.gz",
        help="fixed label map (with --moving-labels: preparation from labels)",
    )
    parser.add_argument(
        "--pairs",
        metavar="LIST.csv",
        help="register many pairs with one loaded model: a CSV with the header "
        "moving,fixed,out_prefix[,moving_labels,fixed_labels] (paths relative to the CSV's folder)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="SRC:DST,...",
        help="label mapping of the label maps to svfnet's values (e.g. acdc, or 3:1,2:2; "
        "default: svfnet's own)",
    )
    parser.add_argument(
        "--rigid-init",
        choices=("geometry", "world"),
        default="geometry",
        help="start of the rigid pre-alignment without labels: field-of-view centres aligned (default) or "
        "the scanner coordinates as they are",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if available"
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="refine SVF-Net's SVF with LCC Log-Demons started from it (the two finest levels, a few "
        "iterations: about a third of the demons' time alone)",
    )
    add_refine_iterations(parser)
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument("--keep-going", action="store_true", help="--pairs: go on past a failing pair")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=guarded(run))  # each output prefix is locked by register_pairs


def _check_arguments(args: argparse.Namespace) -> None:
    single = [
        name for name in ("moving", "fixed", "out", "moving_labels", "fixed_labels") if getattr(args, name)
    ]
    if args.pairs:
        if single:
            raise ValueError(f"--pairs registers the pairs of its list; drop --{single[0].replace('_', '-')}")
        return
    missing = [name for name in ("moving", "fixed", "out") if not getattr(args, name)]
    if missing:
        raise ValueError(f"give --{', --'.join(missing)} (or --pairs LIST.csv)")
    if args.keep_going:
        raise ValueError("--keep-going applies to --pairs only")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    refine = refinement_option(args)
    import torch

    from svfnet import default_device
    from svfnet.data.labels import parse_label_mapping
    from svfnet.registration.files import register_pairs
    from svfnet.registration.pairs import PairFiles, read_pairs

    mapping = parse_label_mapping(args.labels) if args.labels is not None else None
    if args.device == "cuda" and default_device().type != "cuda":
        raise ValueError(
            "--device cuda: no usable CUDA device (torch sees none, or svfnet was built without its CUDA launchers)"
        )
    device = default_device() if args.device == "auto" else torch.device(args.device)
    if args.pairs:
        pairs = read_pairs(args.pairs)
    else:
        pairs = [
            PairFiles(
                Path(args.moving),
                Path(args.fixed),
                args.out,
                Path(args.moving_labels) if args.moving_labels else None,
                Path(args.fixed_labels) if args.fixed_labels else None,
            )
        ]
    for pair in pairs if not args.keep_going else ():  # every input before the model is loaded
        if missing := pair.missing_files():
            raise FileNotFoundError(f"{missing[0]}: no such file")
    try:
        batch = register_pairs(
            pairs,
            args.model,  # loaded once, after every pair's inputs and outputs are checked
            label_mapping=mapping,
            rigid_initial=args.rigid_init,
            overwrite=args.force,
            keep_going=args.keep_going,
            progress=not args.no_progress and len(pairs) > 1,
            device=device,
            refine=refine,
        )
    except ImportError as error:  # SimpleITK missing: one clear line
        print(f"svfnet register: error: {error}", file=sys.stderr)
        return 2
    for done in batch.done:
        timings, metadata = done.metadata["timings_s"], done.metadata
        print(
            f"registered {metadata['inputs']['moving']} → {metadata['inputs']['fixed']} "
            f"(preparation: {done.path}, frames from {done.prepared.record['frame_from']}; "
            f"network + exp + warp {1000 * timings['network_exp_warp']:.0f} ms "
            + (f"+ refinement {timings['refinement']:.1f} s " if "refinement" in timings else "")
            + f"on {metadata['model']['device']}, "
            f"total {timings['total']:.1f} s): {done.outputs['metadata']}"
        )
        for warning in done.metadata["warnings"]:
            print(f"  warning: {warning}")
    for pair, reason in batch.failed:
        print(f"failed {pair.moving} → {pair.fixed}: {reason}", file=sys.stderr)
    return 1 if batch.failed else 0
