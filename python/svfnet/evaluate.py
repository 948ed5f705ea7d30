"""The experiment of the paper: SVF-Net against LCC Log-Demons and the identity, on every test pair.

``run_evaluation(workdir, checkpoint)`` registers every ordered pair ``(moving, fixed)`` of the work
folder's test subjects (``split.json``; the validation subjects when there are none, which the
report then says) with each method, scores every pair and region with
:func:`svfnet.metrics.evaluate_pair`, and writes into ``WORKDIR/evaluation/``:

- ``records/<method>/<moving>__<fixed>.json``: one file per pair and method, written atomically as
  soon as the pair is done: an interrupted run resumes at the first missing one, and a finished
  one is skipped on a re-run unless the method's settings changed (another checkpoint, other
  demons parameters). Records of failed pairs are retried.
- ``pairs.csv``: one row per pair × method × region (the four regions and the whole grid): every
  metric, the region's status, the method's wall time and its threads.
- ``summary.csv``: per method, region and metric: count, mean, standard deviation, median,
  quartiles, extremes (and ``seconds`` per registration).
- ``statistics.csv``: SVF-Net against each other method, per region and metric: the fraction of
  pairs where SVF-Net is better, equal, worse (in the metric's direction: higher Dice and LCC are
  better, lower distances, log-Jacobian spread and folding are better), and Welch's t-test.
- ``outliers.csv``: pairs where a method failed badly (raised, lost a region, fell below the
  identity's Dice, folded), and pairs whose inputs lack a region.
- ``report.html`` and ``figures/*.png`` (:mod:`svfnet.evaluation_report`); ``evaluation.json``,
  what :func:`run_evaluation` returns.

SVF-Net and the identity run in this process (one forward pass each: fast); LCC Log-Demons and the
optional peers (SimpleITK's demons, ANTs SyN) run as tasks of :func:`svfnet.parallel.run_tasks` (local
processes or a Dask cluster), after SVF-Net so that the timings do not compete for the cores.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import svfnet
from svfnet._io import atomic_path, write_json
from svfnet.metrics import METRIC_KEYS
from svfnet.workdir import REGIONS, WorkDir

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "METRICS",
    "Metric",
    "run_evaluation",
]

logger = logging.getLogger(__name__)

# Method keys, in the order tables and figures show them, and their display names.
METHODS = ("svfnet", "svfnet_refined", "lcc_demons", "sitk_demons", "ants_syn", "identity")
METHOD_NAMES = {
    "svfnet": "SVF-Net",
    "svfnet_refined": "SVF-Net + refinement",
    "lcc_demons": "LCC Log-Demons",
    "sitk_demons": "SimpleITK demons",
    "ants_syn": "ANTs SyN (CC)",
    "identity": "identity",
}
# Methods run as parallel tasks (optimisation: seconds per pair), the others in this process.
TASK_METHODS = ("svfnet_refined", "lcc_demons", "sitk_demons", "ants_syn")
# Bumped when what a record holds changes: older records are then recomputed.
RECORD_VERSION = 1
# Region 0 of evaluate_pair: the whole grid (LCC, log-Jacobian spread and folding only).
WHOLE_GRID = 0
# An outlier: a region's Dice below the identity's by more than this ...
DICE_MARGIN = 0.05
# ... or more than this fraction of the grid folded (det J <= 0).
FOLDING_LIMIT = 0.01
# Two values closer than this count as a tie in the better/worse fractions.
TIE_TOLERANCE = 1e-12
# SimpleITK's diffeomorphic demons (sum of squared differences): iterations, update smoothing (voxels).
SITK_DEFAULTS = {"iterations": 50, "smoothing_sigma_vox": 1.5}
# ANTs SyN, deformable stage only (the pairs are rigidly aligned by preparation), neighbourhood
# cross-correlation: iterations per level, coarsest first (three levels, shrunk in plane by 4, 2, 1
# and never across the thick slices, Gaussian smoothing 2, 1, 0 voxels); the correlation window's
# radius in voxels, the same along every axis in ANTs: 2 (5 voxels: 9 mm in plane, 36-40 mm across
# slices) rather than SyNCC's 4, whose 9 voxels span 9 of 16 slices, scored lower on synthetic
# 64x64x16 pairs and takes twice as long; SyN's gradient step (voxels), update and total field
# variances (voxels²); the random seed. See docs/experiment.md for the measurements.
ANTS_DEFAULTS = {
    "iterations": [60, 40, 20],
    "cc_radius": 2,
    "grad_step": 0.2,
    "flow_sigma": 3.0,
    "total_sigma": 0.0,
    "random_seed": 1,
}
ANTS_INSTALL = "pip install antspyx (or the extra: pip install 'svfnet[ants]')"


@dataclass(frozen=True)
class Metric:
    """One column of ``pairs.csv`` as the tables, figures and sentences show it.

    Attributes:
        key: the column (a key of :func:`svfnet.metrics.evaluate_pair`'s rows).
        label: short name for axes and tables.
        higher_is_better: the direction in which a method is "better".
        meaning: what it measures, in plain words.
    """

    key: str
    label: str
    higher_is_better: bool
    meaning: str


METRICS: tuple[Metric, ...] = (
    Metric("dice", "Dice", True, "overlap of the registered and target regions, 1 when identical"),
    Metric(
        "hausdorff95_mm",
        "Hausdorff 95% (mm)",
        False,
        "distance between the registered and target outlines (95th percentile), in mm",
    ),
    Metric(
        "hausdorff_mm",
        "Hausdorff (mm)",
        False,
        "largest distance between the registered and target outlines, in mm",
    ),
    Metric(
        "lcc",
        "local correlation",
        True,
        "similarity of the registered and target images, locally, 1 when they match",
    ),
    Metric(
        "log_jacobian_var",
        "log-Jacobian variance",
        False,
        "how unevenly the tissue is stretched and compressed; 0 for a uniform change",
    ),
    Metric(
        "log_jacobian_normvar",
        "log-Jacobian normalised variance",
        False,
        "the same spread relative to the overall volume change",
    ),
    Metric(
        "folding_fraction",
        "folding fraction",
        False,
        "share of the tissue where the transformation folds (physically impossible), 0 when none",
    ),
)
assert {m.key for m in METRICS} == set(METRIC_KEYS), "METRICS must cover svfnet.metrics.METRIC_KEYS"

# Column order of the CSV files.
PAIR_COLUMNS = (
    "moving",
    "fixed",
    "method",
    "region",
    "name",
    "status",
    "voxels_fixed",
    "voxels_warped",
    *METRIC_KEYS,
    "seconds",
    "threads",
    "error",
)
SUMMARY_COLUMNS = (
    "method",
    "region",
    "name",
    "metric",
    "n",
    "mean",
    "std",
    "median",
    "q1",
    "q3",
    "min",
    "max",
)
STATISTICS_COLUMNS = (
    "method",
    "baseline",
    "region",
    "name",
    "metric",
    "direction",
    "pairs",
    "svfnet_better",
    "tied",
    "svfnet_worse",
    "svfnet_mean",
    "baseline_mean",
    "svfnet_median",
    "baseline_median",
    "welch_t",
    "p_value",
    "n_svfnet",
    "n_baseline",
)
OUTLIER_COLUMNS = ("moving", "fixed", "method", "region", "name", "kind", "value", "detail")
# Kinds of outliers.csv, in the order it lists them.
OUTLIER_KINDS = ("failed", "lost", "below identity", "folding", "input")


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class PairTask:
    """One registration to run: a method and the pair's arrays (tasks carry their inputs, so that
    Dask workers need not see the work folder).

    Attributes:
        method: a key of :data:`METHODS` run as a task (one of :data:`TASK_METHODS`).
        moving_id, fixed_id: subject ids.
        moving_image, fixed_image: ``(I, J, K)`` float32.
        moving_labels, fixed_labels: ``(I, J, K)`` uint8.
        spacing_mm: voxel size along ``(i, j, k)``.
        params: the method's parameters (keyword arguments).
        scores: compute the metrics (``True``) or return the displacement (``False``, the gallery).
        initial_svf: SVF-Net + refinement: the network's SVF the demons start from.
        network_seconds: SVF-Net + refinement: the network's time, counted in the pair's time.
    """

    method: str
    moving_id: str
    fixed_id: str
    moving_image: np.ndarray
    fixed_image: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    params: dict[str, Any]
    scores: bool = True
    initial_svf: np.ndarray | None = None
    network_seconds: float = 0.0


def _pair_name(moving_id: str, fixed_id: str) -> str:
    return f"{moving_id}__{fixed_id}"


def _evaluation_subjects(workdir: Path) -> tuple[list[str], str]:
    """The subjects to evaluate on and which part of the split they are ("test" or "val")."""
    from svfnet.split import subject_split

    split = subject_split(workdir)
    if split.test:
        return sorted(split.test), "test"
    if split.val:
        logger.warning(
            "%s has no test subjects: evaluating on the %d validation subjects instead",
            workdir / "split.json",
            len(split.val),
        )
        return sorted(split.val), "val"
    raise ValueError(
        f"{workdir / 'split.json'} has neither test nor validation subjects: nothing to evaluate "
        "(remove it to re-split with test subjects)"
    )


def _ordered_pairs(subjects: Sequence[str], max_pairs: int | None) -> list[tuple[str, str]]:
    """All ordered pairs of distinct subjects; at most ``max_pairs`` of them, evenly spread."""
    pairs = [(moving, fixed) for moving in subjects for fixed in subjects if moving != fixed]
    if max_pairs is not None and max_pairs < len(pairs):
        # evenly spread over the list, so that every moving subject still appears
        chosen = np.unique(np.round(np.linspace(0, len(pairs) - 1, max_pairs)).astype(int))
        pairs = [pairs[i] for i in chosen]
    return pairs


def _grid_problem(moving: Any, fixed: Any) -> str | None:
    """Why two prepared subjects cannot be compared voxel to voxel, or None."""
    if moving.image.shape != fixed.image.shape:
        return (
            f"different grids: {moving.id} is {'x'.join(map(str, moving.image.shape))}, "
            f"{fixed.id} is {'x'.join(map(str, fixed.image.shape))}"
        )
    if not np.allclose(moving.spacing_mm, fixed.spacing_mm, rtol=0.0, atol=1e-3):
        return (
            f"different voxel sizes: {moving.id} {tuple(moving.spacing_mm)} mm, "
            f"{fixed.id} {tuple(fixed.spacing_mm)} mm"
        )
    return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _subject_digest(subject: Any) -> str:
    """A short fingerprint of a prepared subject as the methods see it (image, labels, spacing)."""
    digest = hashlib.sha256()
    for array in (subject.image, subject.labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(repr(tuple(float(s) for s in subject.spacing_mm)).encode())
    return digest.hexdigest()[:16]


def _settings_key(method: str, settings: Mapping[str, Any]) -> str:
    """A short fingerprint of what a method's results depend on (records with another are redone)."""
    payload = json.dumps(
        {"version": RECORD_VERSION, "method": method, **settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _demons_settings(demons_params: Mapping[str, Any] | None) -> dict[str, Any]:
    from svfnet.baselines.lcc_demons import LCCDemonsParams

    overrides = dict(demons_params or {})
    if isinstance(overrides.get("iterations"), list):
        overrides["iterations"] = tuple(overrides["iterations"])
    try:
        params = dataclasses.replace(LCCDemonsParams(), **overrides).checked()
    except TypeError as error:
        raise ValueError(
            f"run_evaluation(): bad 'demons_params' {dict(demons_params or {})!r}: {error}"
        ) from None
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(params).items()
    }


def _ants_settings(ants_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """ANTs SyN's settings: :data:`ANTS_DEFAULTS` with ``ants_params`` replacing some, checked."""
    func = "run_evaluation"
    overrides = dict(ants_params or {})
    unknown = set(overrides) - set(ANTS_DEFAULTS)
    if unknown:
        raise ValueError(f"{func}(): unknown 'ants_params' {sorted(unknown)}; known: {sorted(ANTS_DEFAULTS)}")
    settings = {**ANTS_DEFAULTS, **overrides}
    iterations = settings["iterations"]
    if isinstance(iterations, int | np.integer) and not isinstance(iterations, bool):
        iterations = [iterations]
    if (
        not isinstance(iterations, Sequence)
        or not iterations
        or any(isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0 for n in iterations)
    ):
        raise ValueError(
            f"{func}(): 'ants_params' iterations must be non-negative integers per level, got {iterations!r}"
        )
    settings["iterations"] = [int(n) for n in iterations]
    radius = settings["cc_radius"]
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 1:
        raise ValueError(f"{func}(): 'ants_params' cc_radius must be an integer >= 1, got {radius!r}")
    for name in ("grad_step", "flow_sigma", "total_sigma"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{func}(): 'ants_params' {name} must be a finite number, got {value!r}")
        if value < 0 or (name == "grad_step" and value == 0):
            bound = "> 0" if name == "grad_step" else ">= 0"
            raise ValueError(f"{func}(): 'ants_params' {name} must be {bound}, got {value!r}")
        settings[name] = float(value)
    seed = settings["random_seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ValueError(f"{func}(): 'ants_params' random_seed must be an integer or None, got {seed!r}")
    settings["random_seed"] = None if seed is None else int(seed)
    settings["cc_radius"] = int(radius)
    return settings


# ------------------------------------------------------------------------------------------ methods
def _sitk_demons(
    moving: np.ndarray,
    fixed: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    iterations: int = 50,
    smoothing_sigma_vox: float = 1.5,
) -> np.ndarray:
    """SimpleITK's diffeomorphic demons (SSD criterion, one level); displacement ``(3, I, J, K)`` in voxels.

    Arrays are handed to ITK transposed, so that ITK's x, y, z are our i, j, k; ITK's displacement
    (in mm, pull-back like ours: ``fixed(x) ≈ moving(x + d(x))``) is divided by the spacing.
    """
    import SimpleITK as sitk
    import torch

    from svfnet.metrics import standardised

    def to_itk(volume: np.ndarray) -> Any:
        image = sitk.GetImageFromArray(
            np.ascontiguousarray(np.transpose(volume, (2, 1, 0)), dtype=np.float32)
        )
        image.SetSpacing(tuple(float(s) for s in spacing_mm))
        return image

    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetStandardDeviations(float(smoothing_sigma_vox))
    demons.SetNumberOfThreads(torch.get_num_threads())  # the worker's share of the cores
    field = demons.Execute(to_itk(standardised(fixed)), to_itk(standardised(moving)))
    disp_mm = np.transpose(sitk.GetArrayFromImage(field), (3, 2, 1, 0))  # (K, J, I, 3) -> (3, I, J, K)
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3, 1, 1, 1)
    return np.ascontiguousarray(disp_mm / spacing, dtype=np.float32)


def _require_ants() -> Any:
    """The ``ants`` module (antspyx), or an ImportError that says how to install it."""
    try:
        import ants
    except ImportError as error:
        raise ImportError(
            f"ANTs SyN (--ants, include_ants=True) needs the package antspyx, which is not importable "
            f"({error}): {ANTS_INSTALL}"
        ) from error
    return ants


# The thread count this process's ITK (antspyx's own copy) was started with: ITK reads
# ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once, at its first multithreaded filter, and keeps it.
_ants_threads: int | None = None


def _pin_ants_threads(threads: int) -> None:
    """Gives antspyx's ITK ``threads`` threads (the worker's share of the cores), before its first use."""
    global _ants_threads
    if _ants_threads is None:
        for name in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ITK_NUMBER_OF_THREADS"):
            os.environ[name] = str(int(threads))
        _ants_threads = int(threads)
    elif _ants_threads != threads:
        logger.warning(
            "ANTs already runs on %d threads in this process; %d were asked for", _ants_threads, threads
        )


def _ants_syn(
    moving: np.ndarray,
    fixed: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    iterations: Sequence[int] = (60, 40, 20),
    cc_radius: int = 2,
    grad_step: float = 0.2,
    flow_sigma: float = 3.0,
    total_sigma: float = 0.0,
    random_seed: int | None = 1,
) -> np.ndarray:
    """ANTs SyN with the neighbourhood cross-correlation (antspyx); displacement ``(3, I, J, K)`` in voxels.

    One deformable stage (``type_of_transform="SyNOnly"``, identity initial transform: the pairs
    are rigidly aligned by preparation), ``n = len(iterations)`` levels shrunk by ``2^(n-1) ... 1``
    (ANTs shrinks an axis of larger voxels less: ``[4, 4, 1], [2, 2, 1], [1, 1, 1]`` at
    1.96 × 1.96 × 7.1 mm) with Gaussian smoothing ``n-1 ... 0`` voxels, metric
    ``CC[fixed, moving, 1, cc_radius]`` (window ``2 cc_radius + 1`` voxels along each axis),
    transform ``SyN[grad_step, flow_sigma, total_sigma]``.

    Geometry: ``ants.from_numpy`` keeps the array's axis order, so with origin 0, identity
    direction and ``spacing_mm`` the physical point of voxel ``(i, j, k)`` is
    ``(i s_i, j s_j, k s_k)`` mm. ANTs' forward warp (``fwdtransforms[0]``, what
    ``ants.apply_transforms(fixed, moving, fwdtransforms)`` uses to resample the moving image onto
    the fixed grid) holds at each fixed voxel the physical displacement to the moving point: our
    pull-back convention, ``fixed(x) ≈ moving(x + d(x))``; its millimetres are divided by the spacing.

    Args:
        moving, fixed: ``(I, J, K)`` images on the same grid.
        spacing_mm: voxel size along ``(i, j, k)``.
        iterations: iterations per level, coarsest first.
        cc_radius: radius of the correlation window, in voxels.
        grad_step: SyN's gradient step (largest update per iteration, voxels).
        flow_sigma, total_sigma: variances (voxels²) of the Gaussian smoothing of the update and of
            the total field (0: none).
        random_seed: ANTs' ``--random-seed`` (the dense CC metric samples nothing at random; the
            result is deterministic for a given thread count); None leaves ANTs' default.

    Returns:
        float32 ``(3, I, J, K)`` displacement in voxels of the fixed grid.
    """
    import torch

    _pin_ants_threads(torch.get_num_threads())  # the worker's share of the cores, before ITK starts
    ants = _require_ants()
    moving, fixed = np.asarray(moving), np.asarray(fixed)
    if moving.ndim != 3 or moving.shape != fixed.shape:
        raise ValueError(
            f"_ants_syn(): 'moving' and 'fixed' must be (I, J, K) images of one grid, got {moving.shape} "
            f"and {fixed.shape}"
        )
    spacing = tuple(float(s) for s in spacing_mm)

    def to_ants(volume: np.ndarray) -> Any:
        return ants.from_numpy(
            np.ascontiguousarray(volume, dtype=np.float32),
            origin=(0.0, 0.0, 0.0),
            spacing=spacing,
            direction=np.eye(3),
        )

    settings = {
        "type_of_transform": "SyNOnly",
        "initial_transform": "Identity",
        "syn_metric": "CC",
        "syn_sampling": int(cc_radius),
        "reg_iterations": tuple(int(n) for n in iterations),
        "grad_step": float(grad_step),
        "flow_sigma": float(flow_sigma),
        "total_sigma": float(total_sigma),
    }
    config = getattr(ants, "config", None)  # ants.registration reads its seed from there
    seeded = random_seed is not None and hasattr(config, "_random_seed")
    previous_seed = config._random_seed if seeded else None
    with tempfile.TemporaryDirectory(prefix="svfnet-ants-") as folder:
        try:
            if seeded:
                config._random_seed = int(random_seed)
            result = ants.registration(
                to_ants(fixed), to_ants(moving), outprefix=os.path.join(folder, "syn_"), **settings
            )
        finally:
            if seeded:
                config._random_seed = previous_seed
        transforms = list(result["fwdtransforms"])
        warps = [path for path in transforms if path.endswith("Warp.nii.gz")]
        others = [path for path in transforms if path not in warps]
        if len(warps) != 1:
            raise RuntimeError(f"_ants_syn(): expected one forward warp from ANTs, got {transforms}")
        for path in others:  # the identity initial transform, written as an affine
            matrix = np.asarray(ants.read_transform(path).parameters, dtype=np.float64)
            if not np.allclose(matrix, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6):
                raise RuntimeError(f"_ants_syn(): ANTs' initial transform {path} is not the identity")
        warp = ants.image_read(warps[0])
        if tuple(warp.shape) != fixed.shape or warp.components != 3:
            raise RuntimeError(
                f"_ants_syn(): ANTs' warp is {tuple(warp.shape)} with {warp.components} components, "
                f"expected {fixed.shape} with 3"
            )
        if not (
            np.allclose(warp.spacing, spacing, rtol=1e-5)
            and np.allclose(warp.origin, 0.0, atol=1e-5)
            and np.allclose(warp.direction, np.eye(3), atol=1e-6)
        ):
            raise RuntimeError(
                f"_ants_syn(): ANTs' warp has spacing {warp.spacing}, origin {warp.origin}, direction "
                f"{np.asarray(warp.direction).tolist()}: not the fixed grid"
            )
        disp_mm = np.moveaxis(np.asarray(warp.numpy(), dtype=np.float64), -1, 0)  # (I, J, K, 3) -> (3, ...)
    scale = np.asarray(spacing, dtype=np.float64).reshape(3, 1, 1, 1)
    return np.ascontiguousarray(disp_mm / scale, dtype=np.float32)


def _task_displacement(task: PairTask) -> tuple[np.ndarray, float]:
    """Runs an optimisation method on a pair: ``(displacement (3, I, J, K) in voxels, seconds)``.

    The time covers the registration and, for LCC Log-Demons, the exponential of its SVF.
    """
    from svfnet import fields

    started = time.perf_counter()
    if task.method in ("lcc_demons", "svfnet_refined"):
        from svfnet.baselines import lcc_demons

        params = dict(task.params)
        if isinstance(params.get("iterations"), list):
            params["iterations"] = tuple(params["iterations"])
        if task.method == "svfnet_refined":
            if task.initial_svf is None:
                raise ValueError("_task_displacement(): SVF-Net + refinement needs the network's SVF")
            params["initial_svf"] = task.initial_svf
            started -= task.network_seconds  # the user waits for the network, then the demons
        svf = lcc_demons.register(task.moving_image, task.fixed_image, spacing=task.spacing_mm, **params)
        disp = np.asarray(fields.exp(svf))
    elif task.method == "sitk_demons":
        disp = _sitk_demons(task.moving_image, task.fixed_image, task.spacing_mm, **task.params)
    elif task.method == "ants_syn":
        disp = _ants_syn(task.moving_image, task.fixed_image, task.spacing_mm, **task.params)
    else:
        raise ValueError(f"_task_displacement(): {task.method!r} is not run as a task")
    return disp, time.perf_counter() - started


def evaluate_task(task: PairTask) -> dict[str, Any]:
    """A worker's job: register the pair with ``task.method`` and score it (or return the field).

    Returns:
        ``{"seconds", "threads", "rows"}`` (rows of :func:`svfnet.metrics.evaluate_pair`), or with
        ``task.scores`` false ``{"seconds", "threads", "disp"}``.
    """
    import torch

    from svfnet.metrics import evaluate_pair

    disp, seconds = _task_displacement(task)
    result: dict[str, Any] = {"seconds": seconds, "threads": torch.get_num_threads()}
    if not task.scores:
        result["disp"] = disp
        return result
    result["rows"] = evaluate_pair(
        task.moving_image,
        task.fixed_image,
        task.moving_labels,
        task.fixed_labels,
        spacing=task.spacing_mm,
        disp=disp,
    )
    return result


def _svfnet_displacement(model: Any, moving: Any, fixed: Any) -> tuple[np.ndarray, float]:
    """SVF-Net on a pair: ``(displacement, seconds of network + exponential + warp)``."""
    from svfnet.registration import register

    registration = register(moving.image, fixed.image, model, spacing_mm=tuple(moving.spacing_mm))
    return np.asarray(registration.displacement, dtype=np.float32), float(registration.seconds)


# ------------------------------------------------------------------------------------------ records
class _Records:
    """The per pair × method result files under ``evaluation/records`` (written atomically).

    A record counts as done for the same method settings (``key``) and the same inputs:
    ``inputs_of(moving, fixed)`` fingerprints the pair's prepared images and labels, so that a
    work folder prepared again under the same subject ids has its pairs computed again.
    """

    def __init__(self, folder: Path, inputs_of: Callable[[str, str], str]) -> None:
        self.folder = folder / "records"
        self.inputs_of = inputs_of

    def path(self, method: str, moving_id: str, fixed_id: str) -> Path:
        return self.folder / method / f"{_pair_name(moving_id, fixed_id)}.json"

    def read(self, method: str, moving_id: str, fixed_id: str) -> dict[str, Any] | None:
        path = self.path(method, moving_id, fixed_id)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable: redo the pair
            logger.warning("ignoring the unreadable record %s", path)
            return None

    def done(self, method: str, moving_id: str, fixed_id: str, key: str) -> bool:
        record = self.read(method, moving_id, fixed_id)
        return (
            record is not None
            and record.get("key") == key
            and (record.get("moving"), record.get("fixed")) == (moving_id, fixed_id)
            and record.get("inputs") == self.inputs_of(moving_id, fixed_id)
            and not record.get("error")
        )

    def write(
        self,
        method: str,
        moving_id: str,
        fixed_id: str,
        key: str,
        *,
        rows: list[dict] | None = None,
        seconds: float | None = None,
        threads: int | None = None,
        error: str | None = None,
    ) -> None:
        write_json(
            self.path(method, moving_id, fixed_id),
            {
                "moving": moving_id,
                "fixed": fixed_id,
                "method": method,
                "key": key,
                "inputs": self.inputs_of(moving_id, fixed_id),
                "seconds": seconds,
                "threads": threads,
                "error": error,
                "rows": rows or [],
            },
        )


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


# ------------------------------------------------------------------------------------------ tables
def as_float(value: Any) -> float:
    """``value`` as a float; NaN for empty or non-numeric cells."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _pair_rows(
    records: _Records, pairs: Sequence[tuple[str, str]], methods: Sequence[str], regions: Mapping[int, str]
) -> list[dict[str, Any]]:
    """The rows of ``pairs.csv`` from the records (a failed pair: one "failed" row per region)."""
    rows = []
    for moving_id, fixed_id in pairs:
        for method in methods:
            record = records.read(method, moving_id, fixed_id) or {
                "error": "not computed",
                "rows": [],
                "seconds": None,
                "threads": None,
            }
            common = {
                "moving": moving_id,
                "fixed": fixed_id,
                "method": method,
                "seconds": as_float(record.get("seconds")),
                "threads": record.get("threads") or "",
                "error": record.get("error") or "",
            }
            if record.get("error"):
                for value, name in [*regions.items(), (WHOLE_GRID, "whole grid")]:
                    rows.append(
                        {
                            **common,
                            "region": value,
                            "name": name,
                            "status": "failed",
                            "voxels_fixed": "",
                            "voxels_warped": "",
                            **{key: math.nan for key in METRIC_KEYS},
                        }
                    )
                continue
            for row in record["rows"]:
                rows.append(
                    {
                        **common,
                        **{key: row.get(key, "") for key in PAIR_COLUMNS if key in row},
                        **{key: as_float(row.get(key)) for key in METRIC_KEYS},
                    }
                )
    return rows


def _format(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return "nan" if not math.isfinite(value) else repr(float(value))
    return value


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(row.get(key, "")) for key in columns})


def _describe(values: Sequence[float]) -> dict[str, float]:
    data = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {
        "n": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(data.min()),
        "max": float(data.max()),
    }


def _region_names(rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Region value → name, in first-seen order (the four regions, then the whole grid)."""
    names: dict[int, str] = {}
    for row in rows:
        names.setdefault(int(row["region"]), str(row["name"]))
    return names


def group_rows(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    """Rows by ``(method, region)`` (tables of 1,369 pairs × methods × regions are read many times)."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["region"])), []).append(row)
    return groups


def finite_values(
    groups: Mapping[tuple[str, int], Sequence[Mapping[str, Any]]], method: str, region: int, key: str
) -> dict[tuple[str, str], float]:
    """(moving, fixed) → the metric ``key`` of ``method`` in ``region``, where it is defined.

    Rows of regions lost by the registration count (Dice 0); rows of failed pairs and of regions
    missing from an input do not.
    """
    values = {}
    for row in groups.get((method, region), ()):
        if row["status"] in ("ok", "lost"):
            value = as_float(row[key])
            if math.isfinite(value):
                values[(row["moving"], row["fixed"])] = value
    return values


def _timings(rows: Iterable[Mapping[str, Any]], method: str) -> list[float]:
    """Seconds per registration of ``method`` (one per pair that did not fail)."""
    seen: dict[tuple[str, str], float] = {}
    for row in rows:
        if row["method"] == method and not row["error"] and math.isfinite(as_float(row["seconds"])):
            seen[(row["moving"], row["fixed"])] = as_float(row["seconds"])
    return list(seen.values())


def summary_rows(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """``summary.csv``: descriptive statistics per method, region and metric, then the timings."""
    out = []
    regions = _region_names(rows)
    groups = group_rows(rows)
    for method in methods:
        for region, name in regions.items():
            for metric in METRICS:
                values = list(finite_values(groups, method, region, metric.key).values())
                if values:
                    out.append(
                        {
                            "method": method,
                            "region": region,
                            "name": name,
                            "metric": metric.key,
                            **_describe(values),
                        }
                    )
        seconds = _timings(rows, method)
        if seconds:
            out.append(
                {
                    "method": method,
                    "region": "",
                    "name": "per registration",
                    "metric": "seconds",
                    **_describe(seconds),
                }
            )
    return out


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value; NaN when either sample is too small or both are constant."""
    from scipy.stats import ttest_ind

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan, math.nan
    with warnings.catch_warnings():
        # near-constant samples make SciPy warn about precision; the NaN or value it returns is kept
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def statistics_rows(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """``statistics.csv``: SVF-Net (and SVF-Net + refinement, when evaluated) against every other
    method, per region and metric; ``method`` names the compared one, ``svfnet_*`` its values.

    Everything is taken over the pairs where both methods have the metric (``pairs``): a method
    that fails or loses a region on the hard pairs must not be averaged over the easy ones only.
    ``svfnet_better`` / ``tied`` / ``svfnet_worse`` are fractions of those pairs, in the metric's
    direction; means, medians and the t-test (Welch: unequal variances) compare the two methods on
    them. ``n_svfnet`` / ``n_baseline`` count the pairs where each method has the metric at all.
    """
    compared = [m for m in ("svfnet", "svfnet_refined") if m in methods]
    out = []
    regions = _region_names(rows)
    groups = group_rows(rows)
    for method, baseline in (
        (m, b) for m in compared for b in methods if b not in compared[: compared.index(m) + 1]
    ):
        for region, name in regions.items():
            for metric in METRICS:
                ours = finite_values(groups, method, region, metric.key)
                theirs = finite_values(groups, baseline, region, metric.key)
                if not ours or not theirs:
                    continue
                common = sorted(set(ours) & set(theirs))
                if not common:
                    continue
                ours_common, theirs_common = [ours[p] for p in common], [theirs[p] for p in common]
                sign = 1.0 if metric.higher_is_better else -1.0
                gains = sign * (np.array(ours_common) - np.array(theirs_common))
                count = len(common)
                t_value, p_value = _welch(ours_common, theirs_common)
                out.append(
                    {
                        "method": method,
                        "baseline": baseline,
                        "region": region,
                        "name": name,
                        "metric": metric.key,
                        "direction": "higher is better" if metric.higher_is_better else "lower is better",
                        "pairs": count,
                        "svfnet_better": float(np.mean(gains > TIE_TOLERANCE)) if count else math.nan,
                        "tied": float(np.mean(np.abs(gains) <= TIE_TOLERANCE)) if count else math.nan,
                        "svfnet_worse": float(np.mean(gains < -TIE_TOLERANCE)) if count else math.nan,
                        "svfnet_mean": float(np.mean(ours_common)),
                        "baseline_mean": float(np.mean(theirs_common)),
                        "svfnet_median": float(np.median(ours_common)),
                        "baseline_median": float(np.median(theirs_common)),
                        "welch_t": t_value,
                        "p_value": p_value,
                        "n_svfnet": len(ours),
                        "n_baseline": len(theirs),
                    }
                )
    return out


def outlier_rows(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    *,
    dice_margin: float = DICE_MARGIN,
    folding_limit: float = FOLDING_LIMIT,
) -> list[dict[str, Any]]:
    """``outliers.csv``: where a method failed badly, and pairs whose inputs lack a region.

    Kinds: ``failed`` (the method raised; ``detail`` holds the error), ``lost`` (a region present
    in both inputs vanished after warping), ``below identity`` (Dice below the identity's by more
    than ``dice_margin``), ``folding`` (more than ``folding_limit`` of the grid folded), and
    ``input`` (a region missing from an input label map: listed once per pair, method ``all``; a
    region missing from every subject, as the RV myocardium of a data set without it, is not
    listed pair by pair: see :func:`absent_regions`). Sorted by kind in that order, then by pair.
    """
    out: list[dict[str, Any]] = []
    absent = set(absent_regions(rows))
    identity_dice = {
        (r["moving"], r["fixed"], int(r["region"])): as_float(r["dice"])
        for r in rows
        if r["method"] == "identity" and r["status"] in ("ok", "lost")
    }
    failed_seen: set[tuple[str, str, str]] = set()
    input_seen: set[tuple[str, str, int]] = set()
    for row in rows:
        pair_method = (row["moving"], row["fixed"], row["method"])
        base = {
            "moving": row["moving"],
            "fixed": row["fixed"],
            "method": row["method"],
            "region": row["region"],
            "name": row["name"],
        }
        status = row["status"]
        if status == "failed":
            if pair_method not in failed_seen:
                failed_seen.add(pair_method)
                out.append(
                    {**base, "region": "", "name": "", "kind": "failed", "value": "", "detail": row["error"]}
                )
            continue
        if status.startswith("missing"):
            key = (row["moving"], row["fixed"], int(row["region"]))
            if key not in input_seen and row["name"] not in absent:
                input_seen.add(key)
                out.append({**base, "method": "all", "kind": "input", "value": "", "detail": status})
            continue
        if status == "lost" and row["method"] != "identity":
            out.append(
                {
                    **base,
                    "kind": "lost",
                    "value": 0.0,
                    "detail": f"{row['name']} present in both images but absent after registration",
                }
            )
            continue
        dice = as_float(row["dice"])
        reference = identity_dice.get((row["moving"], row["fixed"], int(row["region"])), math.nan)
        if (
            row["method"] != "identity"
            and math.isfinite(dice)
            and math.isfinite(reference)
            and dice < reference - dice_margin
        ):
            out.append(
                {
                    **base,
                    "kind": "below identity",
                    "value": dice,
                    "detail": f"Dice {dice:.3f} against {reference:.3f} without registration",
                }
            )
        folding = as_float(row["folding_fraction"])
        if int(row["region"]) == WHOLE_GRID and math.isfinite(folding) and folding > folding_limit:
            out.append(
                {
                    **base,
                    "kind": "folding",
                    "value": folding,
                    "detail": f"{100 * folding:.2f}% of the grid folds (limit {100 * folding_limit:g}%)",
                }
            )
    order = {kind: rank for rank, kind in enumerate(OUTLIER_KINDS)}
    return sorted(
        out, key=lambda r: (order[r["kind"]], r["moving"], r["fixed"], r["method"], str(r["region"]))
    )


def absent_regions(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the regions missing from the label maps of every pair (not evaluated at all)."""
    statuses: dict[str, set[str]] = {}
    for row in rows:
        if int(row["region"]) != WHOLE_GRID and row["status"] != "failed":
            statuses.setdefault(str(row["name"]), set()).add(str(row["status"]))
    return [name for name, seen in statuses.items() if seen == {"missing in both"}]


def pair_scores(rows: Sequence[Mapping[str, Any]], method: str) -> dict[tuple[str, str], float]:
    """(moving, fixed) → mean Dice over the regions where it is defined, for one method."""
    per_pair: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["method"] == method and int(row["region"]) != WHOLE_GRID and row["status"] in ("ok", "lost"):
            dice = as_float(row["dice"])
            if math.isfinite(dice):
                per_pair.setdefault((row["moving"], row["fixed"]), []).append(dice)
    return {pair: float(np.mean(values)) for pair, values in per_pair.items()}


def headline_lines(
    summary: Sequence[Mapping[str, Any]], methods: Sequence[str], pair_count: int, subject_set: str
) -> list[str]:
    """A few printable lines: mean Dice per region for each method, then median time per registration."""
    pairs = "ordered pair" if pair_count == 1 else "ordered pairs"
    lines = [f"{pair_count} {pairs} of the {subject_set} subjects; mean Dice per region:"]
    by_key = {(row["method"], row["name"], row["metric"]): row for row in summary}
    region_names = [
        name for name in (*REGIONS.values(),) if any((m, name, "dice") in by_key for m in methods)
    ]
    for name in region_names:
        parts = [
            f"{METHOD_NAMES[m]} {by_key[(m, name, 'dice')]['mean']:.3f}"
            for m in methods
            if (m, name, "dice") in by_key
        ]
        lines.append(f"  {name}: " + ", ".join(parts))
    times = [
        f"{METHOD_NAMES[m]} {seconds_text(by_key[(m, 'per registration', 'seconds')]['median'])}"
        for m in methods
        if (m, "per registration", "seconds") in by_key
    ]
    if times:
        lines.append("median time per registration: " + ", ".join(times))
    return lines


def seconds_text(seconds: float) -> str:
    """A duration for people: "0 s", "850 µs", "120 ms", "3.21 s"."""
    if seconds < 1e-3:
        return "0 s" if seconds == 0 else f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


# ------------------------------------------------------------------------------------------ the run
def run_evaluation(
    workdir: str | Path,
    checkpoint: str | Path | None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    methods: Sequence[str] = ("svfnet", "lcc_demons", "identity"),
    include_sitk: bool = False,
    include_ants: bool = False,
    include_refinement: bool = False,
    max_pairs: int | None = None,
    demons_params: Mapping[str, Any] | None = None,
    sitk_params: Mapping[str, Any] | None = None,
    ants_params: Mapping[str, Any] | None = None,
    tuned_demons: bool = True,
    refine_params: Mapping[str, Any] | None = None,
    report: bool = True,
    segmentation: bool = False,
) -> dict[str, Any]:
    """Runs the experiment on the work folder's test pairs and writes its tables and report.

    Args:
        workdir: the work folder (prepared subjects and ``split.json``, created if missing).
        checkpoint: SVF-Net checkpoint (``svfnet train``'s ``checkpoint.pt``); may be None only
            when ``"svfnet"`` is not among ``methods``.
        workers: local processes for the optimisation methods (default: one per core).
        scheduler: address of a Dask scheduler to run them on instead.
        progress: show progress bars.
        methods: among ``"svfnet"``, ``"lcc_demons"``, ``"identity"``, ``"sitk_demons"``, ``"ants_syn"``.
        include_sitk: add SimpleITK's diffeomorphic demons as a peer.
        include_ants: add ANTs SyN with cross-correlation as a peer (needs antspyx: the optional
            extra ``svfnet[ants]``; tens of seconds a pair).
        include_refinement: add "SVF-Net + refinement": LCC Log-Demons started from SVF-Net's SVF
            (:func:`svfnet.registration.register` with ``refine``), with LCC Log-Demons' parameters
            of this run and the levels and iterations of
            :data:`svfnet.registration.REFINEMENT` (``refine_params`` replacing some).
        max_pairs: evaluate at most this many pairs, evenly spread over all ordered pairs.
        demons_params: fields of :class:`svfnet.baselines.lcc_demons.LCCDemonsParams` replacing
            the defaults (e.g. ``{"levels": 1, "iterations": 5}``) and those tuned on the cohort.
        tuned_demons: run LCC Log-Demons with the parameters ``svfnet demons --tune`` selected on
            this folder's training pairs (:func:`svfnet.baselines.tuning.read_tuned_params`) where
            a current record exists, as the paper tuned its baseline; False: the defaults. The
            report and ``evaluation.json`` say which (``demons_params_source``).
        sitk_params: ``iterations`` and ``smoothing_sigma_vox`` of SimpleITK's demons.
        ants_params: keys of :data:`ANTS_DEFAULTS` replacing those defaults (see :func:`_ants_syn`).
        refine_params: fields of ``LCCDemonsParams`` for the refinement (e.g. ``{"iterations": (5, 10)}``).
        report: write ``report.html`` and its figures.
        segmentation: also segment every test subject from the training atlases and score it
            (:func:`svfnet.segmentation_evaluation.evaluate_segmentation`; with
            ``include_refinement`` the methods after refinement too, ``refine_params`` updating
            :data:`svfnet.registration.REFINEMENT`): files in ``evaluation/segmentation/``, a
            section of the report.

    Returns:
        A JSON-ready dict: ``report`` (path of the HTML page, or ``""`` without report),
        ``headline`` (printable lines: mean Dice per region and method, median time per
        registration), ``folder``, ``subjects``, ``subject_set`` (``"test"``, or ``"val"`` when the
        split has no test subjects), ``pairs``, ``methods``, ``computed`` (pairs run now per
        method; the rest were on disk), ``failed`` (pair × method failures), ``outliers``,
        ``files`` and, with ``segmentation``, ``segmentation`` (its summary, with ``headline``).

    Raises:
        ValueError: unknown methods, bad parameters, fewer than two subjects to pair, a
            checkpoint that is not an SVF-Net one (or has non-finite weights), or a model trained on
            another grid or voxel size than the work folder's subjects.
        FileNotFoundError: no prepared subjects, or no checkpoint.
        ImportError: ANTs SyN asked for without antspyx installed (before any work).
    """
    func = "run_evaluation"
    workdir = Path(workdir)
    methods = list(dict.fromkeys(methods))
    if include_sitk and "sitk_demons" not in methods:
        methods.append("sitk_demons")
    if include_ants and "ants_syn" not in methods:
        methods.append("ants_syn")
    if include_refinement and "svfnet_refined" not in methods:
        methods.append("svfnet_refined")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"{func}(): unknown or no methods {unknown or methods}; known: {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in methods]  # the display order
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1
    ):
        raise ValueError(f"{func}(): 'max_pairs' must be a positive integer, got {max_pairs!r}")
    if "ants_syn" in methods:
        _require_ants()  # a missing package is said once, before any work, not once per pair
    segmentation_refine: bool | dict[str, Any] = False
    if segmentation:
        from svfnet.registration import refinement_params

        if checkpoint is None:
            raise ValueError(f"{func}(): 'checkpoint' is needed to evaluate the segmentation")
        if include_refinement:
            segmentation_refine = dict(refine_params) if refine_params else True
        refinement_params(segmentation_refine, f"{func}()")  # bad refine_params: said before any work

    keys: dict[str, str] = {}
    params: dict[str, dict[str, Any]] = {}
    model = None
    if "svfnet" in methods or "svfnet_refined" in methods:
        if checkpoint is None:
            raise ValueError(f"{func}(): 'checkpoint' is needed to evaluate SVF-Net")
        from svfnet.model import load

        checkpoint = Path(checkpoint)
        model = load(checkpoint, svfnet.default_device())
        keys["svfnet"] = _settings_key("svfnet", {"checkpoint_sha256": _file_digest(checkpoint)})
    demons_source = ""
    if "lcc_demons" in methods or "svfnet_refined" in methods:
        from svfnet.baselines.tuning import read_tuned_params, record_path
        from svfnet.registration import REFINEMENT

        tuned = read_tuned_params(workdir) if tuned_demons else None
        demons = {**(tuned or {}), **dict(demons_params or {})}
        demons_source = _demons_source(tuned, demons_params, record_path(workdir), tuned_demons)
        if "lcc_demons" in methods:
            params["lcc_demons"] = _demons_settings(demons)
            keys["lcc_demons"] = _settings_key("lcc_demons", params["lcc_demons"])
        if "svfnet_refined" in methods:
            params["svfnet_refined"] = _demons_settings({**demons, **REFINEMENT, **dict(refine_params or {})})
            keys["svfnet_refined"] = _settings_key(
                "svfnet_refined", {**params["svfnet_refined"], "checkpoint_sha256": _file_digest(checkpoint)}
            )
    if "sitk_demons" in methods:
        unknown_sitk = set(sitk_params or {}) - set(SITK_DEFAULTS)
        if unknown_sitk:
            raise ValueError(
                f"{func}(): unknown 'sitk_params' {sorted(unknown_sitk)}; known: {sorted(SITK_DEFAULTS)}"
            )
        params["sitk_demons"] = {**SITK_DEFAULTS, **dict(sitk_params or {})}
        keys["sitk_demons"] = _settings_key("sitk_demons", params["sitk_demons"])
    if "ants_syn" in methods:
        params["ants_syn"] = _ants_settings(ants_params)
        keys["ants_syn"] = _settings_key("ants_syn", params["ants_syn"])
    if "identity" in methods:
        keys["identity"] = _settings_key("identity", {})

    subject_ids, subject_set = _evaluation_subjects(workdir)
    if len(subject_ids) < 2:
        raise ValueError(
            f"{func}(): the {subject_set} set has {len(subject_ids)} subject(s): at least 2 are needed "
            "for a pair"
        )
    pairs = _ordered_pairs(subject_ids, max_pairs)
    folder = WorkDir(workdir).evaluation
    folder.mkdir(parents=True, exist_ok=True)
    subjects, unreadable = _read_subjects(workdir, subject_ids)
    if model is not None:
        _check_model_grid(checkpoint, model, subjects)
    digests = {
        subject_id: _subject_digest(subjects[subject_id]) if subject_id in subjects else "unreadable"
        for subject_id in subject_ids
    }
    records = _Records(folder, lambda moving_id, fixed_id: f"{digests[moving_id]}-{digests[fixed_id]}")

    computed = {method: 0 for method in methods}
    pending = {method: [p for p in pairs if not records.done(method, *p, keys[method])] for method in methods}
    for method in methods:
        logger.info("%s: %d of %d pairs to compute", METHOD_NAMES[method], len(pending[method]), len(pairs))

    def problem_of(moving_id: str, fixed_id: str) -> str | None:
        for subject_id in (moving_id, fixed_id):
            if subject_id in unreadable:
                return f"cannot read subject {subject_id}: {unreadable[subject_id]}"
        return _grid_problem(subjects[moving_id], subjects[fixed_id])

    # in this process first (fast), then the optimisation methods in parallel: no competing timings
    for method in (m for m in methods if m not in TASK_METHODS):
        computed[method] = _run_in_process(
            method, pending[method], subjects, problem_of, records, keys[method], model, progress
        )
    task_pairs = [(method, pair) for method in methods if method in TASK_METHODS for pair in pending[method]]
    computed_tasks = _run_as_tasks(
        task_pairs,
        subjects,
        problem_of,
        records,
        keys,
        params,
        model,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    for method, count in computed_tasks.items():
        computed[method] = count

    regions = dict(REGIONS)
    rows = _pair_rows(records, pairs, methods, regions)
    summary = summary_rows(rows, methods)
    statistics = statistics_rows(rows, methods)
    outliers = outlier_rows(rows, methods)
    files = {
        "pairs": folder / "pairs.csv",
        "summary": folder / "summary.csv",
        "statistics": folder / "statistics.csv",
        "outliers": folder / "outliers.csv",
    }
    _write_csv(files["pairs"], PAIR_COLUMNS, rows)
    _write_csv(files["summary"], SUMMARY_COLUMNS, summary)
    _write_csv(files["statistics"], STATISTICS_COLUMNS, statistics)
    _write_csv(files["outliers"], OUTLIER_COLUMNS, outliers)

    failed = len({(r["moving"], r["fixed"], r["method"]) for r in rows if r["status"] == "failed"})
    headline = headline_lines(summary, methods, len(pairs), subject_set)
    segmented = None
    if segmentation:
        from svfnet.segmentation_evaluation import evaluate_segmentation

        segmented = evaluate_segmentation(
            workdir, checkpoint, model=model, refine=segmentation_refine, progress=progress
        )
    report_path = ""
    if report:
        from svfnet.evaluation_report import ReportInputs, write_report

        gallery = _gallery(
            rows,
            methods,
            subjects,
            problem_of,
            folder,
            keys,
            params,
            model,
            inputs_of=records.inputs_of,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
        )
        report_path = str(
            write_report(
                folder,
                ReportInputs(
                    workdir=str(workdir),
                    checkpoint=str(checkpoint) if "svfnet" in methods else "",
                    training=_training_summary(checkpoint) if "svfnet" in methods else "",
                    subject_set=subject_set,
                    subjects=tuple(subject_ids),
                    pair_count=len(pairs),
                    methods=tuple(methods),
                    rows=rows,
                    summary=summary,
                    statistics=statistics,
                    outliers=outliers,
                    gallery=gallery,
                    headline=tuple(headline) + (tuple(segmented.headline) if segmented else ()),
                    method_params=params,
                    method_sources={
                        m: demons_source for m in ("lcc_demons", "svfnet_refined") if m in params
                    },
                    failed=failed,
                    segmentation=segmented,
                ),
            )
        )
    result = {
        "report": report_path,
        "headline": headline,
        "folder": str(folder),
        "subjects": list(subject_ids),
        "subject_set": subject_set,
        "pairs": len(pairs),
        "methods": list(methods),
        "computed": computed,
        "failed": failed,
        "outliers": len(outliers),
        "demons_params_source": demons_source,
        "files": {name: str(path) for name, path in files.items()},
    }
    if segmented is not None:
        result["segmentation"] = segmented.json_ready()
    write_json(folder / "evaluation.json", result)
    return result


def _demons_source(
    tuned: Mapping[str, Any] | None,
    explicit: Mapping[str, Any] | None,
    record: Path,
    tuned_demons: bool,
) -> str:
    """Where LCC Log-Demons' parameters came from, in one sentence for the report."""
    if tuned is not None:
        source = f"tuned on this cohort's training pairs ({record.name}, `svfnet demons --tune`)"
    elif not tuned_demons:
        source = "the defaults (tuning not used: tuned_demons=False / --demons-defaults)"
    elif record.is_file():
        source = (
            f"the defaults ({record.name} is stale or selected nothing: run `svfnet demons --tune` again)"
        )
    else:
        source = (
            "the defaults, tuned on the synthetic cohort (no `svfnet demons --tune` record for this folder)"
        )
    if explicit:
        source += f"; given explicitly: {', '.join(sorted(explicit))}"
    return source


def _training_summary(checkpoint: Path) -> str:
    """How the checkpoint's model was trained (its recipe, steps, augmentation), or "" where it does not say."""
    from svfnet.model import read_checkpoint
    from svfnet.train import TrainConfig

    saved = read_checkpoint(checkpoint).get("train_config")
    if not isinstance(saved, dict):
        return ""
    try:
        return TrainConfig.from_dict(saved).summary()
    except (TypeError, ValueError):  # written by another version: say nothing rather than guess
        return ""


def _check_model_grid(checkpoint: Path, model: Any, subjects: Mapping[str, Any]) -> None:
    """ValueError when the work folder's subjects are not on the grid and voxel size the model was
    trained on: the network would see the anatomy at another scale than it learnt, and the
    experiment would measure that, not the method."""
    for subject in subjects.values():
        grid, spacing = tuple(subject.image.shape), tuple(float(s) for s in subject.spacing_mm)
        trained_grid, trained_spacing = tuple(model.config.grid), tuple(model.config.spacing_mm)
        if grid != trained_grid or not np.allclose(spacing, trained_spacing, rtol=1e-3, atol=0):
            raise ValueError(
                f"{checkpoint} was trained on a {'x'.join(map(str, trained_grid))} grid at "
                f"{' x '.join(f'{s:g}' for s in trained_spacing)} mm, the work folder's subjects are "
                f"{'x'.join(map(str, grid))} at {' x '.join(f'{s:.4g}' for s in spacing)} mm ({subject.id}): evaluate "
                "a model trained on this folder, or prepare the folder on the model's grid (svfnet prepare --shape "
                "... --spacing ...)"
            )
        return


def _read_subjects(workdir: Path, subject_ids: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The prepared subjects that load, and the error of each that does not."""
    from svfnet.workdir import read_prepared

    subjects, unreadable = {}, {}
    for subject_id in subject_ids:
        try:
            subjects[subject_id] = read_prepared(workdir, subject_id)
        except Exception as error:  # a broken file fails its pairs, not the run
            unreadable[subject_id] = _error_text(error)
            logger.warning("cannot read subject %s: %s", subject_id, unreadable[subject_id])
    return subjects, unreadable


def _run_in_process(
    method: str,
    pairs: Sequence[tuple[str, str]],
    subjects: Mapping[str, Any],
    problem_of: Callable[[str, str], str | None],
    records: _Records,
    key: str,
    model: Any,
    progress: bool,
) -> int:
    """SVF-Net or the identity on each pair, in this process; each pair's record written at once."""
    from tqdm.auto import tqdm

    from svfnet.metrics import evaluate_pair

    threads = _torch_threads()
    if method == "svfnet":
        # one untimed pass first: the first call pays for thread pools and allocations
        valid = [pair for pair in pairs if problem_of(*pair) is None]
        if valid:
            try:
                _svfnet_displacement(model, subjects[valid[0][0]], subjects[valid[0][1]])
            except Exception:  # the pair's own call below reports the error
                pass
    for moving_id, fixed_id in tqdm(
        pairs, desc=METHOD_NAMES[method], disable=not progress or not pairs, unit="pair"
    ):
        problem = problem_of(moving_id, fixed_id)
        if problem is not None:
            records.write(method, moving_id, fixed_id, key, error=problem)
            continue
        moving, fixed = subjects[moving_id], subjects[fixed_id]
        try:
            if method == "identity":
                disp, seconds = np.zeros((3, *fixed.image.shape), dtype=np.float32), 0.0
            else:
                disp, seconds = _svfnet_displacement(model, moving, fixed)
            rows = evaluate_pair(
                moving.image, fixed.image, moving.labels, fixed.labels, spacing=fixed.spacing_mm, disp=disp
            )
        except Exception as error:  # a bad pair is reported in the tables, not fatal to the run
            logger.warning(
                "%s failed on %s -> %s: %s", METHOD_NAMES[method], moving_id, fixed_id, _error_text(error)
            )
            records.write(method, moving_id, fixed_id, key, error=_error_text(error))
            continue
        # the identity computes nothing: no thread count to show
        records.write(
            method,
            moving_id,
            fixed_id,
            key,
            rows=rows,
            seconds=seconds,
            threads=None if method == "identity" else threads,
        )
    return len(pairs)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _make_task(
    method: str, moving: Any, fixed: Any, params: Mapping[str, Any], model: Any, *, scores: bool = True
) -> PairTask:
    initial_svf, network_seconds = None, 0.0
    if method == "svfnet_refined":  # the network here (fast, maybe on the GPU); the demons in the task
        from svfnet.registration import register

        registration = register(moving.image, fixed.image, model, spacing_mm=tuple(moving.spacing_mm))
        initial_svf, network_seconds = registration.svf, float(registration.seconds)
    return PairTask(
        method,
        moving.id,
        fixed.id,
        moving.image,
        fixed.image,
        moving.labels,
        fixed.labels,
        tuple(fixed.spacing_mm),
        dict(params),
        scores,
        initial_svf,
        network_seconds,
    )


def _run_as_tasks(
    task_pairs: Sequence[tuple[str, tuple[str, str]]],
    subjects: Mapping[str, Any],
    problem_of: Callable[[str, str], str | None],
    records: _Records,
    keys: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    model: Any,
    *,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> dict[str, int]:
    """The optimisation methods' pairs as parallel tasks; each record written as its task completes."""
    from svfnet.parallel import run_tasks

    computed: dict[str, int] = {}
    tasks, owners = [], []
    for method, (moving_id, fixed_id) in task_pairs:
        computed[method] = computed.get(method, 0) + 1
        problem = problem_of(moving_id, fixed_id)
        if problem is not None:
            records.write(method, moving_id, fixed_id, keys[method], error=problem)
            continue
        try:
            tasks.append(_make_task(method, subjects[moving_id], subjects[fixed_id], params[method], model))
        except Exception as error:  # the network failed on this pair: reported in the tables
            records.write(method, moving_id, fixed_id, keys[method], error=_error_text(error))
            continue
        owners.append((method, moving_id, fixed_id))
    description = " + ".join(dict.fromkeys(METHOD_NAMES[m] for m, _, _ in owners))
    for outcome in run_tasks(
        evaluate_task, tasks, workers=workers, scheduler=scheduler, progress=progress, description=description
    ):
        method, moving_id, fixed_id = owners[outcome.index]
        if outcome.error is not None:
            logger.warning(
                "%s failed on %s -> %s: %s",
                METHOD_NAMES[method],
                moving_id,
                fixed_id,
                _error_text(outcome.error),
            )
            records.write(method, moving_id, fixed_id, keys[method], error=_error_text(outcome.error))
        else:
            value = outcome.value
            records.write(
                method,
                moving_id,
                fixed_id,
                keys[method],
                rows=value["rows"],
                seconds=value["seconds"],
                threads=value["threads"],
            )
    return computed


# ------------------------------------------------------------------------------------------ gallery
def gallery_cases(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> list[tuple[tuple[str, str], list[str]]]:
    """The example pairs of the report and why each is shown, e.g. ``"best for SVF-Net"``.

    The best and worst pair (mean Dice over the regions) of each registration method (not the
    identity), and SVF-Net's median pair; a pair chosen several times is shown once.
    """
    cases: dict[tuple[str, str], list[str]] = {}
    for method in methods:
        if method == "identity":
            continue
        scores = pair_scores(rows, method)
        if not scores:
            continue
        ordered = sorted(scores, key=lambda pair: (scores[pair], pair))
        cases.setdefault(ordered[-1], []).append(
            f"best for {METHOD_NAMES[method]} (mean Dice {scores[ordered[-1]]:.3f})"
        )
        cases.setdefault(ordered[0], []).append(
            f"worst for {METHOD_NAMES[method]} (mean Dice {scores[ordered[0]]:.3f})"
        )
        if method == "svfnet" and len(ordered) > 2:
            middle = ordered[len(ordered) // 2]
            cases.setdefault(middle, []).append(
                f"typical for SVF-Net (median mean Dice {scores[middle]:.3f})"
            )
    return list(cases.items())


def _gallery_key(keys: Mapping[str, str], methods: Sequence[str], inputs: str) -> str:
    """What a cached gallery pair depends on: the methods' settings and the pair's subjects
    (``inputs``, as the records fingerprint them)."""
    return _settings_key("gallery", {**{m: keys[m] for m in methods}, "inputs": inputs})


def _gallery(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    subjects: Mapping[str, Any],
    problem_of: Callable[[str, str], str | None],
    folder: Path,
    keys: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    model: Any,
    *,
    inputs_of: Callable[[str, str], str],
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """The gallery pairs' images: moving, fixed and each method's warped image and labels.

    The fields are not kept per pair (1,369 pairs × methods would be gigabytes): the few pairs shown
    are registered again (the methods are deterministic) and cached in ``gallery/<pair>.npz``.
    """
    from svfnet.metrics import warp_pair
    from svfnet.parallel import run_tasks

    cases = [(pair, why) for pair, why in gallery_cases(rows, methods) if problem_of(*pair) is None]
    cache = folder / "gallery"
    gallery: list[dict[str, Any]] = []
    missing_tasks, missing_owner = [], []
    warped_of: dict[tuple[tuple[str, str], str], tuple[np.ndarray, np.ndarray]] = {}
    for pair, _ in cases:
        moving, fixed = subjects[pair[0]], subjects[pair[1]]
        cache_key = _gallery_key(keys, methods, inputs_of(*pair))
        cached = _read_gallery_cache(cache / f"{_pair_name(*pair)}.npz", cache_key, methods)
        if cached is not None:
            warped_of.update({(pair, m): value for m, value in cached.items()})
            continue
        for method in methods:
            try:
                if method == "identity":
                    disp = np.zeros((3, *fixed.image.shape), dtype=np.float32)
                elif method == "svfnet":
                    disp, _ = _svfnet_displacement(model, moving, fixed)
                else:
                    missing_tasks.append(
                        _make_task(method, moving, fixed, params[method], model, scores=False)
                    )
                    missing_owner.append((pair, method))
                    continue
                warped_of[(pair, method)] = warp_pair(moving.image, moving.labels, disp)
            except Exception as error:  # the example is then drawn without this method
                logger.warning(
                    "gallery: %s failed on %s -> %s: %s", METHOD_NAMES[method], *pair, _error_text(error)
                )
    for outcome in run_tasks(
        evaluate_task,
        missing_tasks,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        description="gallery",
    ):
        pair, method = missing_owner[outcome.index]
        if outcome.error is None:
            moving = subjects[pair[0]]
            warped_of[(pair, method)] = warp_pair(moving.image, moving.labels, outcome.value["disp"])
        else:
            logger.warning(
                "gallery: %s failed on %s -> %s: %s", METHOD_NAMES[method], *pair, _error_text(outcome.error)
            )
    for pair, why in cases:
        moving, fixed = subjects[pair[0]], subjects[pair[1]]
        warped = {m: warped_of[(pair, m)] for m in methods if (pair, m) in warped_of}
        if len(warped) == len(methods):
            _write_gallery_cache(
                cache / f"{_pair_name(*pair)}.npz",
                _gallery_key(keys, methods, inputs_of(*pair)),
                warped,
            )
        gallery.append(
            {
                "moving": pair[0],
                "fixed": pair[1],
                "why": why,
                "spacing_mm": tuple(fixed.spacing_mm),
                "moving_image": moving.image,
                "moving_labels": moving.labels,
                "fixed_image": fixed.image,
                "fixed_labels": fixed.labels,
                "warped": warped,
            }
        )
    return gallery


def _read_gallery_cache(
    path: Path, key: str, methods: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["key"]) != key:
                return None
            return {m: (data[f"{m}_image"], data[f"{m}_labels"]) for m in methods}
    except (OSError, KeyError, ValueError):
        return None


def _write_gallery_cache(path: Path, key: str, warped: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    arrays = {"key": np.array(key)}
    for method, (image, labels) in warped.items():
        arrays[f"{method}_image"] = np.asarray(image, dtype=np.float32)
        arrays[f"{method}_labels"] = np.asarray(labels, dtype=np.uint8)
    with atomic_path(path) as temporary:
        np.savez_compressed(temporary, **arrays)
