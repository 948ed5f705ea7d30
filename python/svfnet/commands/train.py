"""``svfnet train WORKDIR``: train SVF-Net on the work folder's training pairs."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train SVF-Net on reference (or random) SVFs",
        description="Train SVF-Net. Writes WORKDIR/models/RUN/{checkpoint.pt,config.json,log.csv}. The same command "
        "under torchrun trains data-parallel.",
    )
    parser.add_argument("workdir")
    parser.add_argument("--run", default="svfnet", help="run name, a folder under WORKDIR/models (default svfnet)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--targets", choices=("references", "random"), default="references")
    parser.add_argument("--shift", type=int, default=3, help="largest in-plane augmentation shift, voxels")
    parser.add_argument("--loss-mask", choices=("heart", "none"), default="heart",
                        help="where the loss counts: near the fixed labels (default) or the whole grid")
    parser.add_argument("--widths", type=int, nargs=4, metavar="W", help="channels of the four levels")
    parser.add_argument("--norm", choices=("instance", "batch", "group", "none"))
    parser.add_argument("--activation", choices=("leaky_relu", "relu", "elu"))
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from svfnet.model import SVFNetConfig
    from svfnet.train import TrainConfig, train

    config = None
    if not args.resume:
        model = SVFNetConfig()
        for name in ("widths", "norm", "activation"):
            if getattr(args, name) is not None:
                model = dataclasses.replace(model, **{name: getattr(args, name)})
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            targets=args.targets,
            shift_vox=args.shift,
            loss_mask=args.loss_mask,
            validate_every=args.validate_every,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            model=model,
        )
    result = train(args.workdir, config, run=args.run, resume=args.resume, progress=not args.no_progress,
                   tensorboard=args.tensorboard)
    print(f"train: {result.step} steps, checkpoint {result.checkpoint}")
    return 0
