"""``svfnet references WORKDIR``: reference SVFs for all ordered pairs of training subjects."""

from __future__ import annotations

import argparse
import math

from svfnet.commands.guard import guarded


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "references",
        help="composed shape deformations + logarithm: a reference SVF for every ordered pair of subjects",
        description="For every ordered pair (moving, fixed) of training and validation subjects, compose the "
        "shapes stage's LDDMM deformations into one from the fixed subject to the moving one on the fixed grid "
        "(or, with --deformation ebs, spread the landmark displacements with an elastic body spline) and take "
        "the logarithm. Prints how many pairs are usable for training and why the others are left out. "
        "Resumes: a fixed subject already written from the same shapes, grid and subject list is kept.",
    )
    parser.add_argument("workdir", help="work folder with prepared subjects and landmarks (svfnet shapes)")
    parser.add_argument(
        "--subjects", nargs="+", metavar="ID", help="subjects to pair (default: train + val of the split)"
    )
    parser.add_argument(
        "--deformation",
        choices=("lddmm", "ebs"),
        default="lddmm",
        help="how a pair's displacement is made: 'lddmm' composes the shapes stage's flows "
        "(φ_moving ∘ φ_fixed⁻¹), 'ebs' spreads the landmark displacements with an elastic body spline "
        "(default lddmm)",
    )
    parser.add_argument("--nu", type=float, default=0.25, help="Poisson's ratio of the spline (default 0.25)")
    parser.add_argument(
        "--smoothing", type=float, default=0.0, help="spline smoothing λ (default 0: interpolate)"
    )
    parser.add_argument(
        "--log-tol",
        type=float,
        default=0.1,
        help="logarithm tolerance on the largest residual, voxels (default 0.1)",
    )
    parser.add_argument(
        "--log-tol-mean",
        type=float,
        default=0.01,
        help="logarithm tolerance on the mean residual, voxels (default 0.01)",
    )
    parser.add_argument(
        "--log-max-iter", type=int, default=30, help="logarithm iterations at most (default 30)"
    )
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="storage (default float16)"
    )
    parser.add_argument(
        "--moving-per-task",
        type=int,
        default=64,
        metavar="M",
        help="moving subjects per task: bounds a worker's memory to about M SVFs (default 64)",
    )
    parser.add_argument("--workers", type=int, help="local processes (default: one per core)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=guarded(run, writes="workdir"))  # one writer per work folder


def run(args: argparse.Namespace) -> int:
    from svfnet.references.stage import ReferenceParameters, run_references

    parameters = ReferenceParameters(
        deformation=args.deformation,
        nu=args.nu,
        smoothing=args.smoothing,
        log_tol=args.log_tol,
        log_tol_mean=args.log_tol_mean,
        log_max_iter=args.log_max_iter,
        dtype=args.dtype,
        moving_per_task=args.moving_per_task,
    )
    summary = run_references(
        args.workdir,
        subjects=args.subjects,
        parameters=parameters,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.no_progress,
    )
    print(
        f"references: {summary.pairs} pairs ({summary.fixed_done} fixed subjects computed, "
        f"{summary.fixed_skipped} already done); {summary.converged} reached the tolerance, "
        f"{summary.folded} folded"
    )
    if summary.pairs:
        left_out = (
            ", ".join(f"{reason} {count}" for reason, count in summary.excluded.items() if count) or "none"
        )
        print(
            f"  usable for training: {summary.usable} of {summary.pairs} ({100 * summary.usable_fraction:.1f}%); "
            f"left out: {left_out}"
        )
    if not math.isnan(summary.residual_mean):
        print(
            f"  logarithm residual (voxels mapped into the grid): mean {summary.residual_mean:.4f} voxel, "
            f"worst max {summary.residual_max:.3f} voxel"
        )
    if summary.seconds_per_pair:
        print(f"  {summary.seconds_per_pair:.3f} s per pair")
    return 0
