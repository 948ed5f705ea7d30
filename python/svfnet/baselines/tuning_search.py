"""The grid search of LCC Log-Demons' parameters on subjects held in memory (steps 2–3 of
:mod:`svfnet.baselines.tuning`): the grid and its checks, one registration as a task, the score of
each configuration, the selection, and :class:`TuningResult`. :func:`search_lcc_demons` is the
entry point (the benchmark ``benchmarks/tune_lcc_demons.py`` uses it on its synthetic cohort);
:func:`svfnet.baselines.tuning.tune_lcc_demons` runs it on a work folder's training pairs."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.baselines import lcc_demons
from svfnet.baselines.lcc_demons import LCCDemonsParams
from svfnet.common.parallel import run_tasks
from svfnet.common.workdir import REGIONS
from svfnet.evaluation.metrics import evaluate_pair
from svfnet.ops import fields

__all__ = [
    "DEFAULT_GRID",
    "TuningResult",
    "check_count",
    "check_subjects",
    "checked_grid",
    "params_dict",
    "run_search",
    "search_lcc_demons",
    "select_configuration",
    "sortable",
]

logger = logging.getLogger(__name__)

# 3 × 3 × 2 = 18 configurations around the defaults (5, 1.5, 0.5; sigma_fluid_mm stays at its 2 mm:
# it mattered least in the search that chose the defaults, docs/evaluation.md). The defaults are
# one of them, so the selected configuration is never worse than them on the training pairs.
DEFAULT_GRID: dict[str, list[Any]] = {
    "sigma_lcc_mm": [3.5, 5.0, 7.0],
    "sigma_elastic_mm": [1.0, 1.5, 2.5],
    "sigma_i": [0.3, 0.5],
}


# ------------------------------------------------------------------------------------------ the result
@dataclass(frozen=True)
class TuningResult:
    """What a search found.

    Attributes:
        grid: parameter name → the values searched (JSON-ready lists).
        pairs: the ``(moving, fixed)`` subject ids registered.
        configurations: one JSON-ready dict per configuration, in the grid's order
            (``itertools.product`` of its values): ``params`` (the grid's values), ``mean_dice``,
            ``dice_per_region`` (region name → mean Dice), ``mean_hausdorff95_mm``, ``min_det``,
            ``folding_pairs`` (``[moving, fixed]`` lists), ``failed_pairs``
            (``{"moving", "fixed", "error"}``), ``seconds`` (mean per registration),
            ``eligible`` (neither folding nor failing, with a finite mean Dice), ``is_default``,
            ``per_pair`` (``{"moving", "fixed", "mean_dice", "min_det", "folding_voxels",
            "seconds"}``).
        identity: the identity's ``mean_dice``, ``dice_per_region`` and ``mean_hausdorff95_mm`` on
            the same pairs.
        selected: index into ``configurations`` of the selected one, or None when none is eligible.
        seconds: wall time of the registrations.
        workers: processes the registrations ran in (1: this process).
        path: where the record was written (None for :func:`search_lcc_demons`).
        record: the JSON-ready record (what ``path`` holds).
    """

    grid: dict[str, list[Any]]
    pairs: list[tuple[str, str]]
    configurations: list[dict[str, Any]]
    identity: dict[str, Any]
    selected: int | None
    seconds: float
    workers: int
    path: Path | None = None
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def selected_params(self) -> dict[str, Any] | None:
        """Every field of :class:`LCCDemonsParams` of the selected configuration (JSON-ready), or None."""
        if self.selected is None:
            return None
        return dict(self.configurations[self.selected]["full_params"])


# ------------------------------------------------------------------------------------------ inputs
def _json_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def params_dict(params: Any) -> dict[str, Any]:
    """Every field of an :class:`LCCDemonsParams`, JSON-ready (tuples as lists, NumPy scalars as Python ones)."""
    return {name: _json_value(value) for name, value in dataclasses.asdict(params).items()}


def checked_grid(
    func: str, grid: Mapping[str, Sequence[Any]] | None
) -> tuple[dict[str, list[Any]], list[Any]]:
    """The grid as JSON-ready lists and its configurations as checked :class:`LCCDemonsParams`."""
    import itertools

    if grid is None:
        grid = DEFAULT_GRID
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"{func}(): 'grid' must be a non-empty mapping of parameter name -> list of values")
    known = [f.name for f in dataclasses.fields(LCCDemonsParams)]
    unknown = [name for name in grid if name not in known]
    if unknown:
        raise ValueError(
            f"{func}(): unknown 'grid' parameter(s) {unknown}; known: {', '.join(known)} "
            "(fields of svfnet.baselines.lcc_demons.LCCDemonsParams)"
        )
    values: dict[str, list[Any]] = {}
    for name, candidates in grid.items():
        if not isinstance(candidates, list | tuple) or not candidates:
            raise ValueError(
                f"{func}(): 'grid' entry {name!r} must be a non-empty list of values, got {candidates!r}"
            )
        values[name] = [tuple(v) if isinstance(v, list) else v for v in candidates]
    configurations = []
    for combination in itertools.product(*values.values()):
        overrides = dict(zip(values, combination, strict=True))
        try:
            configurations.append(dataclasses.replace(LCCDemonsParams(), **overrides).checked())
        except (ValueError, TypeError) as error:
            raise ValueError(f"{func}(): bad 'grid' configuration {overrides}: {error}") from None
    return {name: _json_value(list(v)) for name, v in values.items()}, configurations


def check_count(func: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    """ValueError naming ``func`` unless ``value`` is an integer >= 1 (or None, with ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{func}(): '{name}' must be an integer >= 1, got {value!r}")


# ------------------------------------------------------------------------------------------ one task
@dataclass(frozen=True)
class _PairJob:
    """One registration of the search (tasks carry their inputs)."""

    configuration: int
    params: Any  # LCCDemonsParams
    moving_id: str
    fixed_id: str
    moving_image: np.ndarray
    fixed_image: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    spacing_mm: tuple[float, float, float]


def _scores(rows: Sequence[Mapping[str, Any]], regions: Sequence[int]) -> tuple[list[float], list[float]]:
    by_region = {row["region"]: row for row in rows}
    dice = [float(by_region[r]["dice"]) if r in by_region else math.nan for r in regions]
    hd95 = [float(by_region[r]["hausdorff95_mm"]) if r in by_region else math.nan for r in regions]
    return dice, hd95


def _register_and_score(job: _PairJob) -> dict[str, Any]:
    """A worker's job: register the pair with the job's parameters and score it."""
    started = time.perf_counter()
    svf = lcc_demons.register(job.moving_image, job.fixed_image, spacing=job.spacing_mm, params=job.params)
    seconds = time.perf_counter() - started
    disp = np.asarray(fields.exp(svf))
    det = np.asarray(fields.jacobian_det(disp))
    rows = evaluate_pair(
        job.moving_image,
        job.fixed_image,
        job.moving_labels,
        job.fixed_labels,
        spacing=job.spacing_mm,
        disp=disp,
    )
    dice, hd95 = _scores(rows, list(REGIONS))
    return {
        "dice": dice,
        "hausdorff95_mm": hd95,
        "folding_voxels": int(np.count_nonzero(det <= 0)),
        "min_det": float(det.min()),
        "seconds": seconds,
    }


def _nanmean(values: Any) -> float:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def _per_region(dice: np.ndarray) -> dict[str, float]:
    return {name: _nanmean(dice[:, column]) for column, name in enumerate(REGIONS.values())}


def _identity(subjects: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    dice, hd95 = [], []
    for moving_id, fixed_id in pairs:
        moving, fixed = subjects[moving_id], subjects[fixed_id]
        rows = evaluate_pair(
            moving.image,
            fixed.image,
            moving.labels,
            fixed.labels,
            spacing=fixed.spacing_mm,
            disp=np.zeros((3, *fixed.image.shape), np.float32),
        )
        d, h = _scores(rows, list(REGIONS))
        dice.append(d)
        hd95.append(h)
    dice_array = np.asarray(dice, dtype=np.float64).reshape(len(pairs), len(REGIONS))
    return {
        "mean_dice": _nanmean(dice_array),
        "dice_per_region": _per_region(dice_array),
        "mean_hausdorff95_mm": _nanmean(hd95),
    }


def select_configuration(configurations: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the eligible configuration with the highest mean Dice (the first on a tie), or None.

    Eligible: no folding pair, no failed pair, a finite mean Dice (``configurations[n]["eligible"]``
    when present, else computed from ``folding_pairs``, ``failed_pairs`` and ``mean_dice``).
    """
    best, best_dice = None, -math.inf
    for index, entry in enumerate(configurations):
        eligible = entry.get("eligible")
        if eligible is None:
            eligible = (
                not entry.get("folding_pairs")
                and not entry.get("failed_pairs")
                and sortable(entry.get("mean_dice")) > -math.inf
            )
        if eligible and sortable(entry.get("mean_dice")) > best_dice:
            best, best_dice = index, sortable(entry.get("mean_dice"))
    return best


def check_subjects(func: str, subjects: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> None:
    """ValueError naming ``func`` for no pairs, a pair naming an unknown subject or one subject twice, or
    subjects on different grids."""
    if not pairs:
        raise ValueError(f"{func}(): 'pairs' is empty: nothing to register")
    for moving_id, fixed_id in pairs:
        for subject_id in (moving_id, fixed_id):
            if subject_id not in subjects:
                raise ValueError(
                    f"{func}(): pair ({moving_id}, {fixed_id}) names {subject_id!r}, not in 'subjects'"
                )
        if moving_id == fixed_id:
            raise ValueError(f"{func}(): pair ({moving_id}, {fixed_id}) registers a subject to itself")
        moving, fixed = subjects[moving_id], subjects[fixed_id]
        if moving.image.shape != fixed.image.shape or not np.allclose(
            moving.spacing_mm, fixed.spacing_mm, rtol=0.0, atol=1e-3
        ):

            def grid_of(subject: Any) -> str:
                return f"{'x'.join(map(str, subject.image.shape))}, {tuple(subject.spacing_mm)} mm"

            raise ValueError(
                f"{func}(): {moving_id} ({grid_of(moving)}) and {fixed_id} ({grid_of(fixed)}) are not on one "
                "grid: prepare the subjects onto a common grid first (`svfnet prepare`)"
            )


# ------------------------------------------------------------------------------------------ the search
def search_lcc_demons(
    subjects: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> TuningResult:
    """Runs every configuration of ``grid`` on every pair and scores it (no file is read or written).

    Args:
        subjects: subject id → :class:`svfnet.common.workdir.PreparedSubject` (image, labels, spacing).
        pairs: ``(moving, fixed)`` ids of ``subjects``, all on one grid.
        grid: parameter name (a field of :class:`LCCDemonsParams`) → list of values; every
            combination is a configuration, the other fields keep their defaults. Default
            :data:`DEFAULT_GRID`.
        workers: local processes (default: one per core); 1 runs in this process.
        progress: show a progress bar (tqdm, on stderr).

    Returns:
        A :class:`TuningResult` (``path`` None, ``record`` empty).

    Raises:
        ValueError: a bad grid, no pairs, a pair naming an unknown subject or one subject twice,
            subjects on different grids; before any registration.
    """
    func = "search_lcc_demons"
    check_count(func, "workers", workers, allow_none=True)
    grid_values, configurations = checked_grid(func, grid)
    pairs = [(str(m), str(f)) for m, f in pairs]
    check_subjects(func, subjects, pairs)
    return run_search(func, subjects, pairs, grid_values, configurations, workers=workers, progress=progress)


def run_search(
    func: str,
    subjects: Mapping[str, Any],
    pairs: list[tuple[str, str]],
    grid_values: dict[str, list[Any]],
    configurations: list[Any],
    *,
    workers: int | None,
    progress: bool,
) -> TuningResult:
    """Registers every pair with every (checked) configuration, scores each configuration and selects
    one; ``func`` names the caller in the log."""
    import os

    jobs = _pair_jobs(subjects, pairs, configurations)
    used_workers = min(workers or os.cpu_count() or 1, len(jobs))
    logger.info(
        "%s: %d configurations x %d pairs = %d registrations in %d process(es)",
        func,
        len(configurations),
        len(pairs),
        len(jobs),
        used_workers,
    )
    identity = _identity(subjects, pairs)
    outcomes, seconds = _run_jobs(jobs, workers=workers, progress=progress)

    defaults = params_dict(LCCDemonsParams().checked())
    entries = [
        _configuration_entry(func, index, params, pairs, outcomes, grid_values, defaults)
        for index, params in enumerate(configurations)
    ]
    selected = select_configuration(entries)
    if selected is None:
        logger.warning(
            "%s: every configuration folded or failed on some pair: nothing selected (widen the grid towards "
            "more smoothing, larger sigma_elastic_mm and sigma_i)",
            func,
        )
    return TuningResult(
        grid=grid_values,
        pairs=pairs,
        configurations=entries,
        identity=identity,
        selected=selected,
        seconds=seconds,
        workers=used_workers,
    )


def _pair_jobs(
    subjects: Mapping[str, Any], pairs: Sequence[tuple[str, str]], configurations: Sequence[Any]
) -> list[_PairJob]:
    """One job per configuration and pair, configuration by configuration."""
    return [
        _PairJob(
            index,
            params,
            moving_id,
            fixed_id,
            subjects[moving_id].image,
            subjects[fixed_id].image,
            subjects[moving_id].labels,
            subjects[fixed_id].labels,
            tuple(float(s) for s in subjects[fixed_id].spacing_mm),
        )
        for index, params in enumerate(configurations)
        for moving_id, fixed_id in pairs
    ]


def _run_jobs(
    jobs: Sequence[_PairJob], *, workers: int | None, progress: bool
) -> tuple[dict[int, Any], float]:
    """Runs the jobs as tasks; their outcomes by job index and the wall time."""
    outcomes: dict[int, Any] = {}
    started = time.perf_counter()
    for outcome in run_tasks(
        _register_and_score, jobs, workers=workers, progress=progress, description="tuning LCC Log-Demons"
    ):
        outcomes[outcome.index] = outcome
    return outcomes, time.perf_counter() - started


def _configuration_entry(
    func: str,
    index: int,
    params: Any,
    pairs: Sequence[tuple[str, str]],
    outcomes: Mapping[int, Any],
    grid_values: Mapping[str, list[Any]],
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON-ready entry of configuration ``index`` (see :class:`TuningResult`) from its pairs' outcomes."""
    dice, hd95, per_pair, folding, failed = [], [], [], [], []
    min_det = math.inf
    times = []
    for number, (moving_id, fixed_id) in enumerate(pairs):
        outcome = outcomes[index * len(pairs) + number]
        if outcome.error is not None:
            error = outcome.error
            text = f"{type(error).__name__}: {error}".strip()
            logger.warning(
                "%s: configuration %d failed on %s -> %s: %s", func, index, moving_id, fixed_id, text
            )
            failed.append({"moving": moving_id, "fixed": fixed_id, "error": text})
            continue
        value = outcome.value
        dice.append(value["dice"])
        hd95.append(value["hausdorff95_mm"])
        times.append(value["seconds"])
        min_det = min(min_det, value["min_det"])
        if value["folding_voxels"] > 0:
            folding.append([moving_id, fixed_id])
        per_pair.append(
            {
                "moving": moving_id,
                "fixed": fixed_id,
                "mean_dice": _nanmean(value["dice"]),
                "min_det": value["min_det"],
                "folding_voxels": value["folding_voxels"],
                "seconds": value["seconds"],
            }
        )
    dice_array = np.asarray(dice, dtype=np.float64).reshape(len(dice), len(REGIONS))
    mean_dice = _nanmean(dice_array)
    full = params_dict(params)
    return {
        "params": {name: full[name] for name in grid_values},
        "full_params": full,
        "mean_dice": mean_dice,
        "dice_per_region": _per_region(dice_array),
        "mean_hausdorff95_mm": _nanmean(hd95),
        "min_det": min_det if math.isfinite(min_det) else math.nan,
        "folding_pairs": folding,
        "failed_pairs": failed,
        "seconds": _nanmean(times),
        "eligible": not folding and not failed and math.isfinite(mean_dice),
        "is_default": full == defaults,
        "per_pair": per_pair,
    }


def sortable(value: Any) -> float:
    """``value`` as a float; None and NaN as minus infinity (last in a descending sort)."""
    if value is None:
        return -math.inf
    value = float(value)
    return value if not math.isnan(value) else -math.inf
