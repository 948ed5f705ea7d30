"""LCC Log-Demons' parameters tuned on a cohort's own training pairs: a recorded grid search.

The paper tuned its optimisation baseline on the training data. :func:`tune_lcc_demons` does the
same for a work folder, reproducibly:

1. the **training** subjects of the folder's split (``split.json``, created as the other stages
   create it when missing; validation and test subjects are never read) give up to ``pairs``
   ordered pairs (:func:`draw_pairs`: deterministic, spread so that every subject is used as moving
   and as fixed, pairs of two patients first);
2. every configuration of a parameter grid (default :data:`~svfnet.baselines.tuning_search.DEFAULT_GRID`, around the defaults of
   :class:`svfnet.baselines.lcc_demons.LCCDemonsParams`) registers every pair, as tasks of
   :func:`svfnet.common.parallel.run_tasks` (local processes, one compute thread each);
3. a configuration scores the mean Dice over the regions and the pairs
   (:func:`svfnet.evaluation.metrics.evaluate_pair`); one whose exponential folds on any pair (a voxel with
   ``det J <= 0``, :func:`svfnet.ops.fields.jacobian_det` of :func:`svfnet.ops.fields.exp`), or that fails
   on a pair, cannot be selected; the selected configuration is the best of the others;
4. the record goes to ``WORKDIR/evaluation/demons_tuning.json`` (atomically), with a fingerprint of
   what the search read (the training subjects' ids and their prepared contents), so that
   :func:`read_tuned_params` can tell a current record from a stale one.

:func:`svfnet.baselines.tuning_search.search_lcc_demons` is steps 2–3 on subjects held in memory and pairs given explicitly (the
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.baselines.lcc_demons import LCCDemonsParams
from svfnet.baselines.tuning_search import (
    TuningResult,
    check_count,
    check_subjects,
    checked_grid,
    params_dict,
    run_search,
    sortable,
)
from svfnet.common.atomic import write_json
from svfnet.common.workdir import REGIONS, WorkDir, prepared_digests, read_prepared
from svfnet.data.split import patient_of, split_path, subject_split

__all__ = [
    "RECORD_FILE",
    "RECORD_VERSION",
    "draw_pairs",
    "read_tuned_params",
    "record_path",
    "summary_lines",
    "tune_lcc_demons",
]

logger = logging.getLogger(__name__)

RECORD_FILE = "demons_tuning.json"  # in WORKDIR/evaluation/
RECORD_VERSION = 1
PAIR_SEED = 0  # the shuffle of the training subjects before pairing (fixed: the draw is reproducible)


def draw_pairs(subject_ids: Sequence[str], count: int, *, seed: int = PAIR_SEED) -> list[tuple[str, str]]:
    """Up to ``count`` ordered pairs of distinct subjects, deterministic and spread over the subjects.

    The ids (sorted) are shuffled with ``seed``; round ``d = 1, 2, ...`` pairs each subject, in that
    order, with the one ``d`` places after it (cyclically), so that a round of ``N`` pairs uses every
    subject once as moving and once as fixed, and the rounds together give every ordered pair once.
    Pairs of two patients come before pairs of two frames of one patient
    (:func:`svfnet.data.split.patient_of`): the evaluation's pairs are almost all between patients. At
    most ``N (N - 1)`` pairs exist.
    """
    ids = sorted(dict.fromkeys(subject_ids))
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(order)
    candidates = [(order[i], order[(i + d) % n]) for d in range(1, n) for i in range(n)]
    between = [p for p in candidates if patient_of(p[0]) != patient_of(p[1])]
    within = [p for p in candidates if patient_of(p[0]) == patient_of(p[1])]
    return (between + within)[: max(int(count), 0)]


# ------------------------------------------------------------------------------------------ a work folder
def record_path(workdir: str | Path) -> Path:
    """``WORKDIR/evaluation/demons_tuning.json``."""
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

    The default grid (:data:`~svfnet.baselines.tuning_search.DEFAULT_GRID`, 18 configurations) on the default 12 pairs is 216
    registrations: at 2–3 s each on one core (64×64×16), about 5–10 minutes with two workers on a
    2-core machine (longer on a busy one). Time grows with ``pairs`` × the grid's size.

    Args:
        workdir: the work folder (prepared subjects; ``split.json``, created if missing as the
            other stages create it). Only its training subjects are read.
        pairs: register at most this many ordered pairs of training subjects (:func:`draw_pairs`).
        grid: parameter name (a field of :class:`svfnet.baselines.lcc_demons.LCCDemonsParams`) →
            list of values; every combination is tried, other fields keep their defaults (a
            one-value list fixes a field, e.g. ``"iterations": [10]``). Default :data:`~svfnet.baselines.tuning_search.DEFAULT_GRID`.
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
    check_count(func, "pairs", pairs)
    check_count(func, "workers", workers, allow_none=True)
    grid_values, configurations = checked_grid(func, grid)
    workdir = Path(workdir)
    train, chosen, subjects, fingerprint = _training_pairs(func, workdir, pairs)

    result = run_search(
        func, subjects, chosen, grid_values, configurations, workers=workers, progress=progress
    )

    record = _json_safe(_record(workdir, fingerprint, train, pairs, result))
    path = record_path(workdir)
    write_json(path, record)
    logger.info("%s: wrote %s", func, path)
    return dataclasses.replace(result, path=path, record=record)


def _training_pairs(
    func: str, workdir: Path, pairs: int
) -> tuple[list[str], list[tuple[str, str]], dict[str, Any], dict[str, Any]]:
    """The training subjects, the pairs drawn from them, the subjects those use (read and checked)
    and the fingerprint of what the search reads."""
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
    check_subjects(func, subjects, chosen)
    return train, chosen, subjects, _fingerprint(train, prepared_digests(workdir, train))


def _record(
    workdir: Path, fingerprint: dict[str, Any], train: list[str], pairs: int, result: TuningResult
) -> dict[str, Any]:
    """The record of a search on the work folder (see :func:`tune_lcc_demons`), before NaNs become None."""
    selected = result.selected
    return {
        "version": RECORD_VERSION,
        "method": "LCC Log-Demons (svfnet.baselines.lcc_demons), grid search on training pairs",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": str(workdir),
        "fingerprint": fingerprint,
        "training_subjects": train,
        "pairs_requested": int(pairs),
        "pairs": [list(pair) for pair in result.pairs],
        "grid": result.grid,
        "defaults": params_dict(LCCDemonsParams().checked()),
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
            -sortable(result.configurations[n]["mean_dice"]),
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
