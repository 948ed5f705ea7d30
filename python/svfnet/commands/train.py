"""``svfnet train WORKDIR``: train SVF-Net on the work folder's training pairs."""

from __future__ import annotations

import argparse

from svfnet.commands.argument_types import (
    non_negative_finite,
    non_negative_int,
    positive_finite,
    positive_int,
)
from svfnet.commands.guard import guarded


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train SVF-Net on reference (or random) SVFs",
        description="Train SVF-Net. Writes WORKDIR/models/RUN/{checkpoint.pt,config.json,log.csv,refused.csv}. Pairs "
        "with non-finite images or reference SVFs, or SVFs beyond the grid's size where the loss counts, are left "
        "out and named; a non-finite loss, gradient or prediction stops the run, naming the step, and keeps the last "
        "good checkpoint. The same command under torchrun trains data-parallel.",
    )
    parser.add_argument("workdir")
    parser.add_argument(
        "--run", default="svfnet", help="run name, a folder under WORKDIR/models (default svfnet)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    # defaults are None here and TrainConfig's below: with --resume only the flags given count
    parser.add_argument(
        "--steps", type=positive_int, help="optimiser steps (default 2000; with --resume, may grow)"
    )
    parser.add_argument("--batch-size", type=positive_int, help="pairs per step (default 4)")
    parser.add_argument("--lr", type=positive_finite, help="Adam learning rate (default 1e-3)")
    parser.add_argument(
        "--targets", choices=("references", "random"), help="training targets (default references)"
    )
    parser.add_argument(
        "--shift", type=non_negative_int, help="largest in-plane augmentation shift, voxels (default 3)"
    )
    parser.add_argument(
        "--loss-mask",
        choices=("heart", "none"),
        help="where the loss counts: near the fixed labels (default heart) or the whole grid",
    )
    parser.add_argument(
        "--recipe",
        choices=("paper", "overlap"),
        help="the loss: overlap (default: squared difference to the reference SVF plus a soft Dice "
        "term on the moving labels warped by the prediction) or paper (the first term alone)",
    )
    parser.add_argument(
        "--overlap-weight",
        type=non_negative_finite,
        help="weight of the overlap recipe's soft Dice term (default 3)",
    )
    parser.add_argument(
        "--intensity-augmentation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a bias field, gamma, contrast and noise for each image (default off)",
    )
    parser.add_argument(
        "--rotation",
        type=non_negative_finite,
        metavar="DEGREES",
        help="largest in-plane rotation of a pair and its target (default 0: none)",
    )
    parser.add_argument(
        "--inverse-consistency",
        type=non_negative_finite,
        metavar="WEIGHT",
        help="weight of an inverse-consistency term on each pair and its reverse (default 0: off)",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "auto"),
        help="network arithmetic while training: float32 (default), bfloat16 (autocast), or auto "
        "(bfloat16 where the CPU or GPU computes it natively)",
    )
    parser.add_argument(
        "--widths", type=positive_int, nargs=4, metavar="W", help="channels of the four levels"
    )
    parser.add_argument("--norm", choices=("instance", "batch", "group", "none"))
    parser.add_argument("--activation", choices=("leaky_relu", "relu", "elu"))
    parser.add_argument("--validate-every", type=positive_int, help="steps between validations (default 100)")
    parser.add_argument(
        "--checkpoint-every", type=positive_int, help="steps between checkpoints (default 50)"
    )
    parser.add_argument("--seed", type=non_negative_int, help="seed (default 0)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=guarded(run, writes="workdir"))


_TRAIN_FLAGS = {  # flag -> TrainConfig field
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "targets": "targets",
    "shift": "shift_vox",
    "loss_mask": "loss_mask",
    "validate_every": "validate_every",
    "checkpoint_every": "checkpoint_every",
    "seed": "seed",
    "recipe": "recipe",
    "overlap_weight": "overlap_weight",
    "intensity_augmentation": "intensity_augmentation",
    "rotation": "rotation_deg",
    "precision": "precision",
    "inverse_consistency": "inverse_consistency_weight",
}


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from svfnet.training.train import run_training, saved_config
    from svfnet.training.train_config import TrainConfig

    # a resumed run starts from its saved configuration; a new one from the defaults. The flags
    # given change it (run_training() refuses a resumed run whose flags change anything but --steps).
    base = (saved_config(args.workdir, args.run) if args.resume else None) or TrainConfig()
    given = {
        field: getattr(args, flag) for flag, field in _TRAIN_FLAGS.items() if getattr(args, flag) is not None
    }
    model = dataclasses.replace(
        base.model,
        **{
            name: getattr(args, name)
            for name in ("widths", "norm", "activation")
            if getattr(args, name) is not None
        },
    )
    config = dataclasses.replace(base, **given, model=model)
    result = run_training(
        args.workdir,
        config,
        run=args.run,
        resume=args.resume,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )
    print(f"train: {result.step} steps, checkpoint {result.checkpoint}")
    return 0
