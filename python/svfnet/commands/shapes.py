"""``svfnet shapes WORKDIR``: register a template to every prepared subject, store the landmarks."""

from __future__ import annotations

import argparse

from svfnet.commands.argument_types import positive_int
from svfnet.commands.guard import guarded


def _landmarks(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from svfnet.shapes.parameters import LddmmParameters  # torch-free: `svfnet --help` stays light

    defaults = LddmmParameters()
    parser = subparsers.add_parser(
        "shapes",
        help="register a template's surfaces to every prepared subject (LDDMM, currents); store landmarks",
        description=(
            "For every prepared subject: extract the surfaces of its regions, register the template to them "
            "by LDDMM geodesic shooting in the space of currents, and store where the template's landmarks "
            "land (mm, prepared grid frame) in WORKDIR/shapes/landmarks/<id>.npz. Subjects already done are "
            "skipped; see docs/shapes.md."
        ),
    )
    parser.add_argument("workdir", metavar="WORKDIR", help="work folder prepared by `svfnet prepare`")
    parser.add_argument(
        "--template", metavar="ID", help="template subject (default: the closest on average to the others)"
    )
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on a Dask cluster (tcp://host:8786)")
    parser.add_argument("--workers", type=int, metavar="N", help="local processes (default: one per core)")
    _add_lddmm_arguments(parser, defaults)
    _add_surface_arguments(parser)
    parser.add_argument("--save-meshes", action="store_true", help="also write each deformed template (VTK)")
    parser.add_argument("--overwrite", action="store_true", help="recompute everything")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=guarded(run, writes="workdir"))


def _add_lddmm_arguments(parser: argparse.ArgumentParser, defaults) -> None:
    """The "registration (LDDMM)" options, their defaults those of ``LddmmParameters``."""
    group = parser.add_argument_group("registration (LDDMM)")
    group.add_argument(
        "--sigma-v",
        type=float,
        default=defaults.sigma_v_mm,
        metavar="MM",
        help=f"deformation kernel width (default {defaults.sigma_v_mm:g} mm)",
    )
    group.add_argument(
        "--sigma-w",
        type=float,
        default=defaults.sigma_w_mm,
        metavar="MM",
        help=f"currents kernel width (default {defaults.sigma_w_mm:g} mm)",
    )
    group.add_argument(
        "--sigma-noise",
        type=float,
        default=defaults.sigma_noise,
        metavar="MM2",
        help=f"currents distance counted as noise (default {defaults.sigma_noise:g} mm²)",
    )
    group.add_argument(
        "--control-spacing", type=float, metavar="MM", help="control point spacing (default: sigma-v)"
    )
    group.add_argument(
        "--time-steps",
        type=int,
        default=defaults.time_steps,
        metavar="N",
        help=f"shooting steps (default {defaults.time_steps})",
    )
    group.add_argument("--integrator", choices=("rk2", "euler"), default=defaults.integrator)
    group.add_argument(
        "--max-iterations",
        type=int,
        default=defaults.max_iterations,
        metavar="N",
        help=f"L-BFGS iterations at most (default {defaults.max_iterations})",
    )
    group.add_argument("--float64", action="store_true", help="compute in float64 (slower)")


def _add_surface_arguments(parser: argparse.ArgumentParser) -> None:
    """The "surfaces and landmarks" options."""
    group = parser.add_argument_group("surfaces and landmarks")
    group.add_argument(
        "--triangles",
        type=int,
        default=4000,
        metavar="N",
        help="triangles per subject, all regions together (default 4000)",
    )
    group.add_argument(
        "--smoothing",
        type=float,
        default=0.5,
        metavar="VOX",
        help="smoothing of the label indicators, voxels (default 0.5)",
    )
    group.add_argument(
        "--regions",
        type=int,
        nargs="+",
        metavar="R",
        help="regions to match (default: those every subject has; 1 LV, 2 LV myo, 3 RV, 4 RV myo)",
    )
    group.add_argument(
        "--landmarks",
        type=_landmarks,
        default=1000,
        metavar="N|all",
        help="template vertices to carry, farthest-point sampled (default 1000)",
    )


def run(args: argparse.Namespace) -> int:
    from svfnet.shapes.parameters import LddmmParameters
    from svfnet.shapes.stage import run_shapes

    parameters = LddmmParameters(
        sigma_v_mm=args.sigma_v,
        sigma_w_mm=args.sigma_w,
        sigma_noise=args.sigma_noise,
        control_spacing_mm=args.control_spacing,
        time_steps=args.time_steps,
        integrator=args.integrator,
        max_iterations=args.max_iterations,
        dtype="float64" if args.float64 else "float32",
    )
    summary = run_shapes(
        args.workdir,
        template=args.template,
        parameters=parameters,
        target_triangles=args.triangles,
        smoothing_vox=args.smoothing,
        landmarks=args.landmarks,
        regions=args.regions,
        workers=args.workers,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        save_meshes=args.save_meshes,
        progress=not args.no_progress,
    )
    print(
        f"template: {summary.template}; registered {len(summary.computed)}, "
        f"already done {len(summary.skipped)}"
    )
    print(summary.table())
    if summary.outliers:
        print(f"outliers (residual far from the others'): {', '.join(summary.outliers)}")
    return 0
