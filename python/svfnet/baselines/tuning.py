"""LCC Log-Demons' parameters tuned on a cohort's own training pairs: a recorded grid search.

The paper tuned its optimisation baseline on the training data. :func:`tune_lcc_demons` does the
same for a work folder, reproducibly:

1. the **training** subjects of the folder's split (``split.json``, created as the other stages
   create it when missing; validation and test subjects are never read) give up to ``pairs``
   ordered pairs (:func:`draw_pairs`: deterministic, spread so that every subject is used as moving
   and as fixed, pairs of two patients first);
2. every configuration of a parameter grid (default :data:`DEFAULT_GRID`, around the defaults of
   :class:`svfnet.baselines.lcc_demons.LCCDemonsParams`) registers every pair, as tasks of
   :func:`svfnet.common.parallel.run_tasks` (local processes, one compute thread each);
3. a configuration scores the mean Dice over the regions and the pairs
   (:func:`svfnet.evaluation.metrics.evaluate_pair`); one whose exponential folds on any pair (a voxel with
   ``det J <= 0``, :func:`svfnet.ops.fields.jacobian_det` of :func:`svfnet.ops.fields.exp`), or that fails
   on a pair, cannot be selected; the selected configuration is the best of the others;
4. the record goes to ``WORKDIR/evaluation/demons_tuning.json`` (atomically), with a fingerprint of
   what the search read (the training subjects' ids and their prepared contents), so that
   :func:`read_tuned_params` can tell a current record from a stale one.

:func:`search_lcc_demons` is steps 2–3 on subjects held in memory and pairs given explicitly (the
benchmark ``benchmarks/tune_lcc_demons.py`` uses it on its synthetic cohort); :func:`summary_lines`
makes the Markdown table that ``svfnet demons --tune`` prints.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_GRID",
    "RECORD_FILE",
    "RECORD_VERSION",
    "TuningResult",
    "draw_pairs",
    "read_tuned_params",
    "record_path",
    "search_lcc_demons",
    "select_configuration",
    "summary_lines",
    "tune_lcc_demons",
]

logger = logging.getLogger(__name__)

RECORD_FILE = "demons_tuning.json"  # in WORKDIR/evaluation/
RECORD_VERSION = 1
PAIR_SEED = 0  # the shuffle of the training subjects before pairing (fixed: the draw is reproducible)

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


def _params_dict(params: Any) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in dataclasses.asdict(params).items()}


def _checked_grid(
    func: str, grid: Mapping[str, Sequence[Any]] | None
) -> tuple[dict[str, list[Any]], list[Any]]:
    """The grid as JSON-ready lists and its configurations as checked :class:`LCCDemonsParams`."""
    import itertools

    from svfnet.baselines.lcc_demons import LCCDemonsParams

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


def _check_count(func: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{func}(): '{name}' must be an integer >= 1, got {value!r}")


def draw_pairs(subject_ids: Sequence[str], count: int, *, seed: int = PAIR_SEED) -> list[tuple[str, str]]:
    """Up to ``count`` ordered pairs of distinct subjects, deterministic and spread over the subjects.

    The ids (sorted) are shuffled with ``seed``; round ``d = 1, 2, ...`` pairs each subject, in that
    order, with the one ``d`` places after it (cyclically), so that a round of ``N`` pairs uses every
    subject once as moving and once as fixed, and the rounds together give every ordered pair once.
    Pairs of two patients come before pairs of two frames of one patient
    (:func:`svfnet.data.split.patient_of`): the evaluation's pairs are almost all between patients. At
    most ``N (N - 1)`` pairs exist.
    """
    from svfnet.data.split import patient_of

    ids = sorted(dict.fromkeys(subject_ids))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(order)
    candidates = [(order[i], order[(i + d) % n]) for d in range(1, n) for i in range(n)]
    between = [p for p in candidates if patient_of(p[0]) != patient_of(p[1])]
    within = [p for p in candidates if patient_of(p[0]) == patient_of(p[1])]
    return (between + within)[: max(int(count), 0)]


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
    from svfnet.baselines import lcc_demons
    from svfnet.common.workdir import REGIONS
    from svfnet.evaluation.metrics import evaluate_pair
    from svfnet.ops import fields

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
    from svfnet.common.workdir import REGIONS

    return {name: _nanmean(dice[:, column]) for column, name in enumerate(REGIONS.values())}


def _identity(subjects: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    from svfnet.common.workdir import REGIONS
    from svfnet.evaluation.metrics import evaluate_pair

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
                and _sortable(entry.get("mean_dice")) > -math.inf
            )
        if eligible and _sortable(entry.get("mean_dice")) > best_dice:
            best, best_dice = index, _sortable(entry.get("mean_dice"))
    return best


def _check_subjects(func: str, subjects: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> None:
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
    _check_count(func, "workers", workers, allow_none=True)
    grid_values, configurations = _checked_grid(func, grid)
    pairs = [(str(m), str(f)) for m, f in pairs]
    _check_subjects(func, subjects, pairs)
    return _search(func, subjects, pairs, grid_values, configurations, workers=workers, progress=progress)


def _search(
    func: str,
    subjects: Mapping[str, Any],
    pairs: list[tuple[str, str]],
    grid_values: dict[str, list[Any]],
    configurations: list[Any],
    *,
    workers: int | None,
    progress: bool,
) -> TuningResult:
    import os

    from svfnet.baselines.lcc_demons import LCCDemonsParams
    from svfnet.common.parallel import run_tasks
    from svfnet.common.workdir import REGIONS

    jobs = [
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
    outcomes: dict[int, Any] = {}
    started = time.perf_counter()
    for outcome in run_tasks(
        _register_and_score, jobs, workers=workers, progress=progress, description="tuning LCC Log-Demons"
    ):
        outcomes[outcome.index] = outcome
    seconds = time.perf_counter() - started

    defaults = _params_dict(LCCDemonsParams().checked())
    entries = []
    for index, params in enumerate(configurations):
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
        full = _params_dict(params)
        entries.append(
            {
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
        )
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


# ------------------------------------------------------------------------------------------ a work folder
def record_path(workdir: str | Path) -> Path:
    """``WORKDIR/evaluation/demons_tuning.json``."""
    from svfnet.common.workdir import WorkDir

    return WorkDir(workdir).evaluation / RECORD_FILE


def _fingerprint(train: Sequence[str], digests: Mapping[str, str]) -> dict[str, Any]:
    train = sorted(train)
    subjects = {subject_id: digests[subject_id] for subject_id in train}
    payload = json.dumps({"train": train, "subjects": subjects}, sort_keys=True)
    return {"train": train, "subjects": subjects, "digest": hashlib.sha256(payload.encode()).hexdigest()[:16]}


def tune_lcc_demons(
    workdir: str | Path,
    *,
    pairs: int = 12,
    grid: Mapping[str, Sequence[Any]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> TuningResult:
    """Tunes LCC Log-Demons on the work folder's training pairs and writes the record.

    The default grid (:data:`DEFAULT_GRID`, 18 configurations) on the default 12 pairs is 216
    registrations: at 2–3 s each on one core (64×64×16), about 5–10 minutes with two workers on a
    2-core machine (longer on a busy one). Time grows with ``pairs`` × the grid's size.

    Args:
        workdir: the work folder (prepared subjects; ``split.json``, created if missing as the
            other stages create it). Only its training subjects are read.
        pairs: register at most this many ordered pairs of training subjects (:func:`draw_pairs`).
        grid: parameter name (a field of :class:`svfnet.baselines.lcc_demons.LCCDemonsParams`) →
            list of values; every combination is tried, other fields keep their defaults (a
            one-value list fixes a field, e.g. ``"iterations": [10]``). Default :data:`DEFAULT_GRID`.
        workers: local processes (default: one per core); 1 runs in this process.
        progress: show a progress bar.

    Returns:
        A :class:`TuningResult` whose ``path`` is ``WORKDIR/evaluation/demons_tuning.json`` and
        ``record`` what it holds: ``version``, ``method``, ``created``, ``workdir``, ``fingerprint``
        (``train``: the training ids, ``subjects``: id → prepared digest, ``digest``),
        ``training_subjects``, ``pairs_requested``, ``pairs`` (``[moving, fixed]`` ids), ``grid``,
        ``defaults`` (every field of LCCDemonsParams' defaults), ``identity``, ``configurations``
        (see :class:`TuningResult`), ``selected`` (the grid's values of the selected configuration,
        or None), ``selected_params`` (every field of it: what :func:`read_tuned_params` returns),
        ``selected_index``, ``seconds`` and ``workers``.

    Raises:
        ValueError: ``pairs`` or ``workers`` not an integer >= 1; a bad ``grid`` (unknown
            parameter, empty list, invalid value); a folder without prepared subjects; fewer than
            two training subjects; training subjects on different grids. All before any
            registration.
    """
    func = "tune_lcc_demons"
    _check_count(func, "pairs", pairs)
    _check_count(func, "workers", workers, allow_none=True)
    grid_values, configurations = _checked_grid(func, grid)
    from svfnet.common.workdir import WorkDir, prepared_digests, read_prepared
    from svfnet.data.split import split_path, subject_split

    workdir = Path(workdir)
    if not WorkDir(workdir).subjects_json.is_file():
        raise ValueError(
            f"{func}(): 'workdir' {workdir} has no prepared subjects ({WorkDir(workdir).subjects_json} not "
            "found): run `svfnet prepare` (or `svfnet synth` + `svfnet prepare`) first"
        )
    split = subject_split(workdir)
    train = sorted(split.train)
    if len(train) < 2:
        raise ValueError(
            f"{func}(): 'workdir' {workdir} has {len(train)} training subject(s) in {split_path(workdir)}: "
            "at least 2 are needed for a pair (the search never uses validation or test subjects)"
        )
    chosen = draw_pairs(train, int(pairs))
    if len(chosen) < pairs:
        logger.info(
            "%s: %d training subjects give only %d ordered pairs; using all", func, len(train), len(chosen)
        )
    used = sorted({subject_id for pair in chosen for subject_id in pair})
    subjects = {subject_id: read_prepared(workdir, subject_id) for subject_id in used}
    _check_subjects(func, subjects, chosen)
    fingerprint = _fingerprint(train, prepared_digests(workdir, train))

    result = _search(func, subjects, chosen, grid_values, configurations, workers=workers, progress=progress)

    from svfnet.baselines.lcc_demons import LCCDemonsParams
    from svfnet.common.atomic import write_json

    selected = result.selected
    record = {
        "version": RECORD_VERSION,
        "method": "LCC Log-Demons (svfnet.baselines.lcc_demons), grid search on training pairs",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": str(workdir),
        "fingerprint": fingerprint,
        "training_subjects": train,
        "pairs_requested": int(pairs),
        "pairs": [list(pair) for pair in result.pairs],
        "grid": result.grid,
        "defaults": _params_dict(LCCDemonsParams().checked()),
        "score": "mean Dice over the regions and the pairs; configurations folding (det J <= 0) or failing "
        "on any pair are not eligible",
        "identity": result.identity,
        "configurations": result.configurations,
        "selected_index": selected,
        "selected": None if selected is None else result.configurations[selected]["params"],
        "selected_params": result.selected_params,
        "seconds": result.seconds,
        "workers": result.workers,
    }
    record = _json_safe(record)
    path = record_path(workdir)
    write_json(path, record)
    logger.info("%s: wrote %s", func, path)
    return dataclasses.replace(result, path=path, record=record)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_tuned_params(workdir: str | Path) -> dict[str, Any] | None:
    """The parameters :func:`tune_lcc_demons` selected for this work folder, if they still apply.

    Returns:
        Every field of :class:`svfnet.baselines.lcc_demons.LCCDemonsParams` of the selected
        configuration (JSON-ready: ``iterations`` may be a list), usable as ``LCCDemonsParams``
        keyword overrides; or None when there is no record, when the search selected nothing, or
        when the record is stale: the folder's split now has other training subjects, or one of
        them was prepared again (its digest changed), or the record cannot be read. A record that
        exists but is not used is said in a logged warning.
    """
    from svfnet.baselines.lcc_demons import LCCDemonsParams
    from svfnet.common.workdir import prepared_digests
    from svfnet.data.split import split_path

    path = record_path(workdir)
    if not path.is_file():
        return None

    def stale(reason: str) -> None:
        logger.warning("%s is not used: %s; run `svfnet demons --tune %s` again", path, reason, workdir)

    try:
        record = json.loads(path.read_text())
        fingerprint = record["fingerprint"]
        version = record.get("version")
    except (OSError, ValueError, KeyError, TypeError) as error:
        stale(f"it cannot be read ({error})")
        return None
    if version != RECORD_VERSION:
        stale(f"it is of version {version!r}, not {RECORD_VERSION}")
        return None
    try:
        train = sorted(json.loads(split_path(workdir).read_text())["train"])
    except (OSError, ValueError, KeyError, TypeError):
        stale(f"the split it was tuned on ({split_path(workdir)}) is gone or unreadable")
        return None
    if train != fingerprint.get("train"):
        stale("the split's training subjects changed since the search")
        return None
    try:
        current = _fingerprint(train, prepared_digests(workdir, train))
    except (OSError, ValueError, KeyError) as error:
        stale(f"the training subjects cannot be read ({error})")
        return None
    if current["digest"] != fingerprint.get("digest"):
        changed = [s for s in train if current["subjects"].get(s) != fingerprint.get("subjects", {}).get(s)]
        stale(f"training subject(s) prepared again since the search: {', '.join(changed[:5])}")
        return None
    selected = record.get("selected_params")
    if not selected:
        stale("the search selected nothing (every configuration folded or failed)")
        return None
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in selected.items()}
    try:
        dataclasses.replace(LCCDemonsParams(), **overrides).checked()
    except (ValueError, TypeError) as error:
        stale(f"its parameters are not valid LCC Log-Demons parameters ({error})")
        return None
    return dict(selected)


# ------------------------------------------------------------------------------------------ the table
def summary_lines(result: TuningResult, *, limit: int | None = None) -> list[str]:
    """A Markdown summary: the identity, the selected configuration, then one row per configuration,
    eligible ones first, by mean Dice (at most ``limit`` rows)."""
    from svfnet.common.workdir import REGIONS

    identity = result.identity
    lines = [
        f"identity: mean Dice {_cell(identity['mean_dice'])} "
        f"({', '.join(_cell(identity['dice_per_region'][name]) for name in REGIONS.values())}); "
        f"{len(result.pairs)} pairs, {len(result.configurations)} configurations, "
        f"{result.seconds:.0f} s with {result.workers} worker(s)",
    ]
    if result.selected is None:
        lines.append("selected: none (every configuration folded or failed on some pair)")
    else:
        best = result.configurations[result.selected]
        params = ", ".join(f"{name} = {value}" for name, value in best["params"].items())
        lines.append(f"selected: {params} (mean Dice {_cell(best['mean_dice'])})")
        default = next((c for c in result.configurations if c["is_default"]), None)
        if default is not None:
            lines.append(f"defaults: mean Dice {_cell(default['mean_dice'])}")
    short = {
        "LV blood pool": "LV",
        "LV myocardium": "LV myo",
        "RV blood pool": "RV",
        "RV myocardium": "RV myo",
    }
    header = [
        *result.grid,
        "mean Dice",
        *(short.get(name, name) for name in REGIONS.values()),
        "HD95 mm",
        "min det J",
        "folding pairs",
        "failed pairs",
        "s/pair",
    ]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(
        range(len(result.configurations)),
        key=lambda n: (
            not result.configurations[n]["eligible"],
            -_sortable(result.configurations[n]["mean_dice"]),
            n,
        ),
    )
    for n in order[:limit]:
        entry = result.configurations[n]
        mark = "**" if n == result.selected else ""
        cells = (
            [f"{mark}{_value(entry['params'][name])}{mark}" for name in result.grid]
            + [f"{mark}{_cell(entry['mean_dice'])}{mark}"]
            + [_cell(entry["dice_per_region"][name]) for name in REGIONS.values()]
            + [
                _cell(entry["mean_hausdorff95_mm"], 2),
                _cell(entry["min_det"], 2),
                str(len(entry["folding_pairs"])),
                str(len(entry["failed_pairs"])),
                _cell(entry["seconds"], 2),
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _sortable(value: Any) -> float:
    """``value`` as a float; None and NaN as minus infinity (last in a descending sort)."""
    if value is None:
        return -math.inf
    value = float(value)
    return value if not math.isnan(value) else -math.inf


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or not math.isfinite(float(value)):
        return "—"
    return f"{float(value):.{digits}f}"


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
