"""``svfnet demons``: LCC Log-Demons on the command line, in two modes.

``svfnet demons --tune WORKDIR [--pairs N] [--grid NAME=V[,V...]]... [--workers N] [--no-progress]``
tunes the method's parameters on the work folder's training pairs
(:func:`svfnet.baselines.tuning.tune_lcc_demons`), writes ``WORKDIR/evaluation/demons_tuning.json``
and prints the table of the configurations; the registration flags below are refused with it.

``svfnet demons --moving M --fixed F --out OUT`` registers two NIfTI images. It writes into the
folder ``OUT`` (each file atomically, in the layout of ``svfnet register``'s prepared-grid
outputs, docs/register.md):

- ``svf.nii.gz``: the stationary velocity field ``v`` on the fixed grid, 4D ``(I, J, K, 3)``
  float32 with the fixed image's affine, ``intent_name`` ``svf vox ijk``. **Components are
  ``(v_i, v_j, v_k)`` in voxels of the fixed grid, along its array axes** — svfnet's convention,
  deliberately not a 5D ITK vector image (ITK stores millimetres along physical axes).
  :func:`read_field` reads it back as ``(3, I, J, K)``.
- ``displacement.nii.gz``: ``u = exp(v)`` likewise (``disp vox ijk``):
  ``warped(x) = moving(x + u(x))``.
- ``warped.nii.gz``: the moving image resampled on the fixed grid through ``u``.
- ``warped_labels.nii.gz``: the moving labels too (one-hot interpolation), with ``--moving-labels``.
- ``demons.json``: the parameters, the levels (shape, spacing, iterations, mean LCC before and
  after) and the wall time.

Both images must be on one grid (same shape and affine), as ``svfnet prepare`` leaves them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from svfnet.commands.argument_types import positive_int
from svfnet.commands.guard import guarded

SVF_FILE = "svf.nii.gz"
WARPED_FILE = "warped.nii.gz"
WARPED_LABELS_FILE = "warped_labels.nii.gz"
RECORD_FILE = "demons.json"
SVF_INTENT_NAME = "svf vox ijk"  # as svfnet register writes them
DISPLACEMENT_INTENT_NAME = "disp vox ijk"
DISPLACEMENT_FILE = "displacement.nii.gz"


# the flags of each mode, as (attribute, flag): each is refused in the other mode
_REGISTER_FLAGS = (
    ("moving", "--moving"),
    ("fixed", "--fixed"),
    ("out", "--out"),
    ("moving_labels", "--moving-labels"),
    ("levels", "--levels"),
    ("iterations", "--iterations"),
    ("sigma_lcc", "--sigma-lcc"),
    ("sigma_fluid", "--sigma-fluid"),
    ("sigma_elastic", "--sigma-elastic"),
    ("sigma_i", "--sigma-i"),
    ("no_symmetric", "--no-symmetric"),
    ("force", "--force"),
)
_TUNE_FLAGS = (
    ("pairs", "--pairs"),
    ("grid", "--grid"),
    ("workers", "--workers"),
    ("no_progress", "--no-progress"),
)
DEFAULT_TUNING_PAIRS = 12


def _grid_entry(text: str) -> tuple[str, list]:
    """``NAME=V[,V...]`` -> (name, values): ints, floats, or true/false."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE[,VALUE...], got {text!r}")
    parsed: list = []
    for item in values.split(","):
        item = item.strip()
        if item.lower() in ("true", "false"):
            parsed.append(item.lower() == "true")
            continue
        try:
            parsed.append(int(item))
            continue
        except ValueError:
            pass
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name}: {item!r} is not a finite number (nor true/false)")
        parsed.append(value)
    return name, parsed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # parameters default to None, meaning LCCDemonsParams' tuned defaults (listed in docs/evaluation.md):
    # importing the method here would load SciPy for every `svfnet --help`
    parser = subparsers.add_parser(
        "demons",
        help="register two images with LCC Log-Demons (the optimisation baseline), or tune it on a work "
        "folder's training pairs (--tune)",
        description="Registers MOVING to FIXED with symmetric log-domain demons and the local correlation "
        "criterion (Lorenzi et al. 2013). Writes OUT/svf.nii.gz (the SVF on the fixed grid, components "
        "(v_i, v_j, v_k) in voxels), OUT/warped.nii.gz, OUT/demons.json, and OUT/warped_labels.nii.gz with "
        "--moving-labels. Lengths are in mm; parameters left out take the tuned defaults of "
        "svfnet.baselines.lcc_demons.LCCDemonsParams (docs/evaluation.md). "
        "With --tune WORKDIR instead: a grid search of the parameters on pairs of the work folder's "
        "training subjects (never validation or test), scored by the mean Dice among configurations that "
        "fold nowhere; writes WORKDIR/evaluation/demons_tuning.json and prints the table.",
    )
    parser.add_argument("--moving", type=Path, metavar="M.nii.gz", help="moving image (without --tune)")
    parser.add_argument("--fixed", type=Path, metavar="F.nii.gz", help="fixed image (without --tune)")
    parser.add_argument("--out", type=Path, metavar="OUT", help="output folder (without --tune)")
    parser.add_argument("--moving-labels", type=Path, metavar="L.nii.gz", help="also warp this label map")
    parser.add_argument("--levels", type=int, help="resolution levels (default 3)")
    parser.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        metavar="N",
        help="iterations per level, coarsest first, or one count for every level",
    )
    parser.add_argument(
        "--sigma-lcc", type=float, metavar="MM", help="Gaussian window of the local correlation"
    )
    parser.add_argument("--sigma-fluid", type=float, metavar="MM", help="Gaussian smoothing of each update")
    parser.add_argument(
        "--sigma-elastic", type=float, metavar="MM", help="Gaussian smoothing of the velocity"
    )
    parser.add_argument(
        "--sigma-i",
        type=float,
        metavar="PER_MM2",
        help="step-length weight σ_I in 1/mm² (the largest step is |Λ|/(2√σ_I) mm)",
    )
    parser.add_argument("--no-symmetric", action="store_true", help="forward forces only")
    parser.add_argument("--force", action="store_true", help="replace results already in OUT")
    tuning = parser.add_argument_group(
        "tuning on a work folder (svfnet demons --tune WORKDIR; none of the flags above goes with it)"
    )
    tuning.add_argument(
        "--tune",
        type=Path,
        metavar="WORKDIR",
        help="search the parameters on WORKDIR's training pairs; writes "
        "WORKDIR/evaluation/demons_tuning.json",
    )
    tuning.add_argument(
        "--pairs",
        type=positive_int,
        metavar="N",
        help=f"at most N ordered training pairs (default {DEFAULT_TUNING_PAIRS})",
    )
    tuning.add_argument(
        "--grid",
        type=_grid_entry,
        action="append",
        metavar="NAME=V[,V...]",
        help="search these values of the LCCDemonsParams field NAME (repeatable; given at all, the grid is "
        "exactly the fields given, e.g. --grid sigma_lcc_mm=4,5,6.5 --grid sigma_i=0.3,0.5; default: "
        "svfnet.baselines.tuning_search.DEFAULT_GRID, 18 configurations)",
    )
    tuning.add_argument("--workers", type=int, metavar="N", help="local processes (default: one per core)")
    tuning.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=dispatch)


_register_command = guarded(lambda args: run(args), writes="out", what="output folder", recover=False)
_tune_command = guarded(lambda args: run_tune(args), writes="tune", what="work folder")


def _given(args: argparse.Namespace, flags: tuple[tuple[str, str], ...]) -> list[str]:
    return [flag for name, flag in flags if getattr(args, name, None) not in (None, False)]


def dispatch(args: argparse.Namespace) -> int:
    """Runs the mode the flags ask for; a flag of the other mode is one clear error, before any work."""
    if args.tune is not None:
        refused = _given(args, _REGISTER_FLAGS)
        if refused:
            raise ValueError(
                f"--tune searches the parameters on a work folder's training pairs: {', '.join(refused)} "
                "cannot be given with it (choose what it searches with --grid NAME=V[,V...])"
            )
        return _tune_command(args)
    refused = _given(args, _TUNE_FLAGS)
    if refused:
        raise ValueError(f"{', '.join(refused)} only go(es) with --tune WORKDIR")
    missing = [flag for name, flag in _REGISTER_FLAGS[:3] if getattr(args, name) is None]
    if missing:
        raise ValueError(
            f"the following arguments are required: {', '.join(missing)} "
            "(or --tune WORKDIR to tune the parameters on a work folder)"
        )
    return _register_command(args)


def run_tune(args: argparse.Namespace) -> int:
    """``svfnet demons --tune WORKDIR``: the grid search, its table on stdout, the record's path."""
    from svfnet.baselines.tuning import summary_lines, tune_lcc_demons

    grid = None
    if args.grid:
        grid = {}
        for name, values in args.grid:
            if name in grid:
                raise ValueError(f"--grid {name} is given twice: give its values once, comma-separated")
            grid[name] = values
    result = tune_lcc_demons(
        args.tune,
        pairs=args.pairs if args.pairs is not None else DEFAULT_TUNING_PAIRS,
        grid=grid,
        workers=args.workers,
        progress=not args.no_progress,
    )
    for line in summary_lines(result):
        print(line)
    print(f"\nwrote {result.path}")
    return 0 if result.selected is not None else 1


def params_from_args(args: argparse.Namespace):
    """The :class:`LCCDemonsParams` of the command line: the defaults with the options given replaced."""
    from svfnet.baselines.lcc_demons import LCCDemonsParams

    given = {
        "levels": args.levels,
        "sigma_lcc_mm": args.sigma_lcc,
        "sigma_fluid_mm": args.sigma_fluid,
        "sigma_elastic_mm": args.sigma_elastic,
        "sigma_i": args.sigma_i,
        "iterations": None
        if args.iterations is None
        else (args.iterations[0] if len(args.iterations) == 1 else tuple(args.iterations)),
    }
    params = dataclasses.replace(
        LCCDemonsParams(),
        **{k: v for k, v in given.items() if v is not None},
        symmetric=not args.no_symmetric,
    )
    return params.checked()  # with --levels alone, the default iterations follow it (LCCDemonsParams)


def run(args: argparse.Namespace) -> int:
    """``svfnet demons MOVING FIXED --out OUT``: one registration, its files and record in OUT."""
    import time

    from svfnet.baselines import lcc_demons
    from svfnet.common.atomic import write_json
    from svfnet.ops import fields

    params = params_from_args(args)  # bad parameters fail before any file is read
    moving, fixed, fixed_affine, labels = _read_inputs(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    names = (RECORD_FILE, SVF_FILE, DISPLACEMENT_FILE, WARPED_FILE, WARPED_LABELS_FILE)
    outputs = [out / name for name in names]
    existing = [path for path in outputs if path.exists()]
    if existing and not args.force:
        raise FileExistsError(f"{existing[0]} exists: choose another --out, or --force to replace it")

    spacing = spacing_of(fixed_affine)
    started = time.perf_counter()
    svf, info = lcc_demons.register(moving, fixed, spacing=spacing, params=params, return_info=True)
    disp = fields.exp(svf)

    _write_outputs(out, outputs, svf, disp, moving, labels, fixed_affine)
    write_json(
        out / RECORD_FILE,
        {
            "method": "LCC Log-Demons (svfnet.baselines.lcc_demons)",
            "moving": str(args.moving),
            "fixed": str(args.fixed),
            "spacing_mm": list(spacing),
            "params": {
                k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()
            },
            "levels": [dataclasses.asdict(level) for level in info.levels],
            "seconds": time.perf_counter() - started,
            "svf": {
                "file": SVF_FILE,
                "units": "voxels of the fixed grid",
                "components": "(v_i, v_j, v_k)",
                "transformation": "warped(x) = moving(x + exp(v)(x))",
            },
        },
    )
    final = info.levels[-1]
    print(
        f"registered in {info.seconds:.2f} s ({info.iterations} iterations over {len(info.levels)} levels); "
        f"mean LCC on the finest level {final.lcc_start:.3f} -> {final.lcc_end:.3f}; wrote {out}"
    )
    return 0


def _read_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The moving and fixed images, the fixed affine and the moving labels (or None), on one grid."""
    from svfnet.data.nifti import read_nifti
    from svfnet.data.readers import refuse_complex

    refuse_complex(args.moving, "moving image")
    refuse_complex(args.fixed, "fixed image")
    moving, moving_affine = read_nifti(args.moving, kind="image")
    fixed, fixed_affine = read_nifti(args.fixed, kind="image")
    check_same_grid(args.moving, moving.shape, moving_affine, args.fixed, fixed.shape, fixed_affine)
    labels = None
    if args.moving_labels is not None:
        labels, labels_affine = read_nifti(args.moving_labels, kind="labels")
        check_same_grid(
            args.moving_labels, labels.shape, labels_affine, args.moving, moving.shape, moving_affine
        )
    return moving, fixed, fixed_affine, labels


def _write_outputs(
    out: Path,
    outputs: list[Path],
    svf: np.ndarray,
    disp: np.ndarray,
    moving: np.ndarray,
    labels: np.ndarray | None,
    fixed_affine: np.ndarray,
) -> None:
    """Writes the SVF, displacement, warped image (and labels) into ``out``, replacing a previous set."""
    from svfnet.data.nifti import write_nifti
    from svfnet.ops import fields

    out.mkdir(parents=True, exist_ok=True)
    # replacing a result: the new files are written beside the old ones first (a folder of their own
    # in OUT; the command holds OUT's lock, so a leftover one is a killed run's), and only when all
    # are written does the old set go, its record (the mark of a complete set) first, so that no
    # file of another registration stays beside the new ones
    for leftover in out.glob(".demons-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".demons-", dir=out))
    try:
        write_field(staging / SVF_FILE, svf, fixed_affine)
        write_field(staging / DISPLACEMENT_FILE, disp, fixed_affine, name=DISPLACEMENT_INTENT_NAME)
        write_nifti(
            staging / WARPED_FILE, np.asarray(fields.warp(moving, disp), dtype=np.float32), fixed_affine
        )
        if labels is not None:
            warped_labels = np.asarray(fields.warp_labels(labels.astype(np.int32), disp, mode="onehot"))
            write_nifti(
                staging / WARPED_LABELS_FILE, warped_labels.astype(_label_dtype(labels)), fixed_affine
            )
        for path in outputs:
            if not (staging / path.name).exists():
                path.unlink(missing_ok=True)
        for written in sorted(staging.iterdir()):
            os.replace(written, out / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the array axes: the norms of the affine's columns."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def check_same_grid(
    path_a: Path,
    shape_a: tuple[int, ...],
    affine_a: np.ndarray,
    path_b: Path,
    shape_b: tuple[int, ...],
    affine_b: np.ndarray,
) -> None:
    """ValueError naming both files unless they have the same shape and affine (to 1e-3 mm)."""
    if tuple(shape_a) != tuple(shape_b):
        raise ValueError(
            f"{path_a} has shape {tuple(shape_a)} but {path_b} has {tuple(shape_b)}: the images must be "
            "on one grid (resample them first, e.g. with `svfnet prepare`)"
        )
    if not np.allclose(affine_a, affine_b, rtol=0.0, atol=1e-3):
        raise ValueError(
            f"{path_a} and {path_b} have different affines (voxel-to-world maps): the images must be "
            f"on one grid (resample them first, e.g. with `svfnet prepare`)\n{affine_a}\nvs\n{affine_b}"
        )


def _label_dtype(labels: np.ndarray) -> type:
    return np.uint8 if labels.size == 0 or int(labels.max()) < 256 else np.int32


def write_field(
    path: str | Path, field: np.ndarray, affine: np.ndarray, *, name: str = SVF_INTENT_NAME
) -> None:
    """Writes a ``(3, I, J, K)`` field in voxels atomically, in ``svfnet register``'s layout
    (:func:`svfnet.data.nifti.vector_image`)."""
    import nibabel as nib

    from svfnet.common.atomic import atomic_path
    from svfnet.data.nifti import vector_image

    field = np.asarray(field, dtype=np.float32)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"write_field(): 'field' must be (3, I, J, K), got shape {field.shape}")
    with atomic_path(path) as temporary:
        nib.save(vector_image(field, affine, name=name), str(temporary))


def read_field(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a field written by :func:`write_field`: ``((3, I, J, K) float32 in voxels, (4, 4) affine)``."""
    from svfnet.data.nifti import read_vector_field

    return read_vector_field(path)
