"""Reference SVFs for every ordered pair of subjects (``svfnet references WORKDIR``).

For the pair (moving i, fixed j), a displacement ``u_ij`` on j's grid, in voxels (``x ↦ x + u_ij(x)``
maps fixed to moving, the pull-back convention of README.md's Conventions), then
``v_ij = log(id + u_ij)``. ``u_ij`` comes from the shapes stage in one of two ways
(:attr:`ReferenceParameters.deformation`):

- ``"lddmm"`` (the default): the composition ``φ_i ∘ φ_j⁻¹`` of the shapes stage's LDDMM
  deformations of the template onto i and j, rebuilt from their momenta. It carries every fixed
  landmark onto its moving counterpart, as the spline does, and between and beyond the landmarks
  it is a composition of diffeomorphisms (identity far from the heart) instead of an interpolant.
  Per subject, ``φ_n⁻¹`` of the grid's voxels and ``φ_n`` tabulated over the template space
  (cubic B-spline, step σ_V / 8) are computed once; a pair is then two interpolations, one for
  ``u_ij`` and one for its inverse ``u_ji``, and the logarithm starts from ``(u_ij − u_ji) / 2``,
  exact to second order.
- ``"ebs"`` (the paper's): an elastic body spline fitted on the fixed subject's landmarks
  ``φ_j(p_k)`` to the displacements ``φ_i(p_k) − φ_j(p_k)`` (millimetres) and evaluated on j's grid.
  The EBS system depends only on the fixed subject's landmarks: factorised once per task.

Why the default (measured on a clinical synthetic cohort, ``svfnet synth --realistic``, 20 subjects,
380 pairs; docs/pipeline.md has the table): through ~1,000 landmarks of hearts that differ a lot
(ACDC's groups, thick slices, partial coverage), the spline folds inside the cavities, between the
landmarks, on 28% of the pairs and extrapolates to hundreds of voxels: 57% of the pairs were usable.
The composed flows never folded and 97.4% were usable, with the same Dice on the pairs both kept.

Pairs whose ``id + u`` folds (``det(I + ∇u) ≤ 0`` somewhere) are recorded as such: they have no
logarithm, and training skips them. One task handles one fixed subject (or a chunk of its moving
subjects, to bound memory). Tasks run in local processes or on a Dask cluster
(:func:`svfnet.common.parallel.run_tasks`); results are written per fixed subject, atomically, so an
interrupted run resumes at the first fixed subject not yet written.

Layout in ``WORKDIR/references/``::

    config.json          the parameters and the store's format (a re-run with other parameters refuses to mix them)
    svf/<fixed>.npy      (M, 3, I, J, K) float16 (or float32): the SVFs for that fixed subject
    pairs/<fixed>.json   moving ids in the order of the .npy, with per-pair residuals, folds, and why a
                         pair is left out of training ("excluded", see EXCLUSION_REASONS)

float16 halves the store; its rounding error (recorded per pair as ``float16_error``, in voxels) is
half a unit in the last place of an SVF's largest values: with the spline, at most 0.008 voxel on
the demo's pairs but one or two whose spline reaches 30-75 voxels at a corner (0.015-0.03), against
a logarithm tolerance of 0.1. Every SVF is checked after the cast: one that float16 cannot hold (above 65504 it
overflows to infinity) is refused as "out of range", never stored, so no file holds a non-finite value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import write_json
from svfnet.common.parallel import run_tasks
from svfnet.common.staging import load_npy
from svfnet.common.workdir import WorkDir, read_prepared, subject_ids
from svfnet.data.split import subject_split
from svfnet.ops import fields
from svfnet.ops.ebs import factorize_ebs
from svfnet.references.flows import checked_flows, composed_flows, tabulate_flows
from svfnet.references.store import (
    EXCLUSION_REASONS,
    FOLDED,
    NON_FINITE,
    NOT_CONVERGED,
    OUT_OF_RANGE,
    STORE_FORMAT,
    USABLE_RESIDUAL_MAX_VOX,
    USABLE_RESIDUAL_MEAN_VOX,
    exclusion,
)
from svfnet.shapes.landmarks import read_landmarks

__all__ = [
    "ReferenceParameters",
    "ReferencesSummary",
    "run_references",
]

log = logging.getLogger(__name__)

# How a pair's displacement u is made from the shapes stage's results (ReferenceParameters.deformation).
DEFORMATIONS = ("lddmm", "ebs")


@dataclass(frozen=True)
class ReferenceParameters:
    """How references are computed.

    Attributes:
        deformation: how a pair's displacement is made from the shapes stage's results (see the
            module docstring): "lddmm" composes the subjects' LDDMM flows, ``φ_i ∘ φ_j⁻¹``; "ebs"
            spreads the landmark displacements with an elastic body spline. The default, "lddmm", was
            chosen by measurement: on the clinical synthetic cohort (20 subjects, 380 pairs) 97.4% of
            the pairs are usable against 57% with the spline (28% of whose pairs fold), with the same
            Dice on the heart (docs/pipeline.md).
        nu: Poisson's ratio of the elastic body spline ("ebs").
        smoothing: EBS smoothing λ ("ebs"; 0 interpolates the landmarks exactly). Chosen by
            generalised cross-validation it is ~0 (the landmarks' displacements are samples of
            smooth maps, not noise), and a larger λ trades few folds for accuracy: left at 0.
        log_tol: tolerance of the logarithm on ``max|exp(v) − u|``, in voxels, over the voxels
            that ``id + u`` maps into the grid (see :func:`svfnet.ops.fields.log`).
        log_tol_mean: tolerance of the logarithm on the mean of ``|exp(v) − u|``, in voxels.
        log_max_iter: most iterations of the logarithm.
        dtype: "float16" or "float32" storage.
        moving_per_task: most moving subjects per task (bounds a task's memory).
    """

    deformation: str = "lddmm"
    nu: float = 0.25
    smoothing: float = 0.0
    log_tol: float = 0.1
    log_tol_mean: float = 0.01
    log_max_iter: int = 30
    dtype: str = "float16"
    moving_per_task: int = 64

    def __post_init__(self) -> None:
        if self.deformation not in DEFORMATIONS:
            raise ValueError(
                f"references: 'deformation' must be one of {DEFORMATIONS}, got {self.deformation!r}"
            )
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"references: 'dtype' must be float16 or float32, got {self.dtype!r}")
        if self.moving_per_task < 1:
            raise ValueError(f"references: 'moving_per_task' must be >= 1, got {self.moving_per_task!r}")
        if not self.log_tol > 0 or not self.log_tol_mean > 0 or self.log_max_iter < 1:
            raise ValueError("references: 'log_tol' and 'log_tol_mean' must be > 0 and 'log_max_iter' >= 1")


def references_task(task: dict[str, Any]) -> dict[str, Any]:
    """One fixed subject and some of its moving subjects: displacements (composed flows, or spline
    fits and grids), then logarithms."""
    parameters = ReferenceParameters(**task["parameters"])
    started = time.perf_counter()
    if parameters.deformation == "lddmm":
        grids, initials = composed_flows(task)
    else:
        fixed_mm = task["fixed_landmarks_mm"]
        factor = factorize_ebs(fixed_mm, nu=parameters.nu, smoothing=parameters.smoothing)
        displacements_mm = np.stack([moving_mm - fixed_mm for moving_mm in task["moving_landmarks_mm"]])
        grids = factor.solve(displacements_mm).on_grid(task["shape"], task["spacing_mm"])
        initials = [None] * len(grids)
    deformation_seconds = (time.perf_counter() - started) / len(grids)
    svfs = np.zeros(grids.shape, dtype=parameters.dtype)
    records = []
    for n, u in enumerate(grids):
        started = time.perf_counter()
        record = reference_svf(u, parameters, svfs[n], initials[n])
        records.append(
            {
                **record,
                "deformation_seconds": deformation_seconds,
                "log_seconds": time.perf_counter() - started,
            }
        )
    return {"svfs": svfs, "records": records}


def reference_svf(
    u: np.ndarray, parameters: ReferenceParameters, out: np.ndarray, initial: np.ndarray | None = None
) -> dict[str, Any]:
    """One pair: the logarithm of ``id + u`` (started from ``initial``, default ``u``) written into
    ``out`` (storage dtype), and its record.

    ``out`` receives the SVF only where it is finite and representable in the storage dtype within
    the logarithm's tolerance; it stays zero for a pair left out for any other reason.
    """
    record: dict[str, Any] = {
        "folds": None,
        "converged": False,
        "residual_max": None,
        "residual_mean": None,
        "residual_max_grid": None,
        "domain_fraction": None,
        "iterations": 0,
        "polish_iterations": 0,
        "float16_error": None,
        "svf_max": None,
    }
    if not np.isfinite(u).all():
        return {**record, "excluded": NON_FINITE}
    record["folds"] = int((fields.jacobian_det(u) <= 0).sum())
    if record["folds"]:
        return {**record, "excluded": FOLDED}
    v, info = _log_quiet(u, parameters, initial)
    record.update(
        converged=info.converged,
        residual_max=info.residual_max,
        residual_mean=info.residual_mean,
        residual_max_grid=info.residual_max_grid,
        domain_fraction=info.domain_fraction,
        iterations=info.iterations,
        polish_iterations=info.polish_iterations,
    )
    if not (np.isfinite(v).all() and math.isfinite(info.residual_max) and math.isfinite(info.residual_mean)):
        return {**record, "excluded": NON_FINITE}
    record["svf_max"] = float(np.sqrt((v.astype(np.float64) ** 2).sum(axis=0)).max())
    with np.errstate(over="ignore"):  # a value above float16's 65504 becomes inf: measured, refused
        stored = v.astype(out.dtype)
    error = float(np.abs(stored.astype(np.float32) - v).max())
    if not math.isfinite(error) or error > parameters.log_tol:
        # the store cannot hold this SVF (float16 overflows, or rounds it by more than the
        # logarithm's tolerance): refused rather than stored wrong
        return {**record, "excluded": OUT_OF_RANGE}
    record["float16_error"] = error
    out[...] = stored
    if info.residual_max > USABLE_RESIDUAL_MAX_VOX or info.residual_mean > USABLE_RESIDUAL_MEAN_VOX:
        return {**record, "excluded": NOT_CONVERGED}
    return {**record, "excluded": None}


def _log_quiet(u: np.ndarray, parameters: ReferenceParameters, initial: np.ndarray | None = None):
    """The logarithm with its convergence reported in the record rather than as a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fields.LogConvergenceWarning)
        return fields.log(
            u,
            tol=parameters.log_tol,
            tol_mean=parameters.log_tol_mean,
            max_iter=parameters.log_max_iter,
            return_info=True,
            initial=initial,
        )


@dataclass(frozen=True)
class ReferencesSummary:
    """What a run of the stage did and found."""

    fixed_done: int
    fixed_skipped: int
    pairs: int
    converged: int
    folded: int
    residual_max: float  # worst max residual over the pairs with a logarithm (voxels)
    residual_mean: float  # mean of the per-pair mean residuals (voxels)
    seconds_per_pair: float  # wall time of this run / pairs computed in it
    usable: int = 0  # pairs ReferenceStore.pairs() gives to training
    excluded: dict[str, int] = field(default_factory=dict)  # pairs left out, per reason (EXCLUSION_REASONS)

    @property
    def usable_fraction(self) -> float:
        return self.usable / self.pairs if self.pairs else float("nan")


def run_references(
    workdir: str | Path,
    *,
    subjects: list[str] | None = None,
    parameters: ReferenceParameters | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> ReferencesSummary:
    """Computes the reference SVFs of all ordered pairs of ``subjects`` (see the module docstring).

    Args:
        workdir: a work folder with prepared subjects and the shapes stage's landmarks.
        subjects: the subjects whose ordered pairs to compute (default: the training and
            validation subjects of the work folder's split).
        parameters: deformation, spline and logarithm parameters (defaults: :class:`ReferenceParameters`).
        workers: local processes (default: one per core); 1 computes in this process.
        scheduler: a Dask scheduler address (``tcp://host:8786``) to run the tasks on.
        progress: show a progress bar.
    """
    workdir = Path(workdir)
    parameters = parameters or ReferenceParameters()
    folder = WorkDir(workdir).references
    subjects = _checked_subjects(workdir, subjects)
    _check_store_config(folder, parameters)
    landmarks, flows, lddmm = _read_shapes(workdir, subjects, parameters)
    first = read_prepared(workdir, subjects[0])
    shape, spacing = first.image.shape, first.spacing_mm
    write_json(folder / "config.json", {**asdict(parameters), "format": STORE_FORMAT})
    inputs_of = _inputs_digests(subjects, landmarks, flows, shape, spacing, lddmm)

    todo = [fixed for fixed in subjects if not _is_done(folder, fixed, subjects, inputs_of(fixed))]
    for stale in (folder / "svf").glob(".*.partial.npy"):  # left by a killed run (one run per folder)
        stale.unlink()
    started = time.perf_counter()  # the per-subject flows count in the time per pair
    subject_flows: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    table = None
    if todo and parameters.deformation == "lddmm":
        subject_flows, table = tabulate_flows(
            subjects, flows, lddmm, shape, spacing, workers, scheduler, progress
        )
    tasks, owners = _pair_tasks(
        folder, todo, subjects, parameters, shape, spacing, landmarks, subject_flows, table
    )
    computed = _run_pair_tasks(
        folder, tasks, owners, subjects, parameters, shape, inputs_of, workers, scheduler, progress
    )
    elapsed = time.perf_counter() - started
    return _summary(folder, subjects, len(todo), len(subjects) - len(todo), elapsed, computed)


def _checked_subjects(workdir: Path, subjects: list[str] | None) -> list[str]:
    """The subjects (default: the split's training and validation subjects), each once, at least
    two, all prepared."""
    if subjects is None:
        split = subject_split(workdir)
        subjects = sorted(split.train + split.val)
    subjects = list(dict.fromkeys(subjects))
    if len(subjects) < 2:
        raise ValueError(f"run_references(): need at least 2 subjects for pairs, got {subjects}")
    # every input checked before any work, and before the parameters are recorded
    known = set(subject_ids(workdir)) if WorkDir(workdir).subjects_json.is_file() else None
    unknown = [subject for subject in subjects if known is not None and subject not in known]
    if unknown:
        raise ValueError(f"run_references(): not prepared in {workdir}: {unknown}")
    return subjects


def _check_store_config(folder: Path, parameters: ReferenceParameters) -> None:
    """Raises when the store on disk is of another format or was computed with other parameters."""
    config_path = folder / "config.json"
    if config_path.is_file():
        previous = json.loads(config_path.read_text())
        if previous.get("format", 1) != STORE_FORMAT:
            raise ValueError(
                f"{folder} was written by an older svfnet (store format {previous.get('format', 1)}, whose float16 "
                f"SVFs could overflow to infinity; this one writes format {STORE_FORMAT}): it still reads, but new "
                f"pairs are not mixed into it; remove {folder} to recompute"
            )
        wanted = {key: value for key, value in asdict(parameters).items() if key != "moving_per_task"}
        if {key: previous.get(key) for key in wanted} != wanted:
            raise ValueError(
                f"{config_path} was written with other parameters {previous}: remove {folder} to recompute"
            )


def _read_shapes(workdir: Path, subjects: list[str], parameters: ReferenceParameters):
    """The shapes stage's results for ``subjects``, checked: landmarks per subject (all the same
    count), and with ``deformation="lddmm"`` the flows and their parameters (else ``{}``, ``{}``)."""
    stored = {
        subject: read_landmarks(workdir, subject) for subject in subjects
    }  # names a missing shapes stage
    landmarks = {subject: _checked_landmarks(subject, stored[subject]) for subject in subjects}
    counts = {subject: len(points) for subject, points in landmarks.items()}
    if len(set(counts.values())) != 1:
        by_count: dict[int, list[str]] = {}
        for subject, count in counts.items():
            by_count.setdefault(count, []).append(subject)
        raise ValueError(f"subjects have different landmark counts {by_count}: re-run `svfnet shapes`")
    flows, lddmm = checked_flows(workdir, stored) if parameters.deformation == "lddmm" else ({}, {})
    return landmarks, flows, lddmm


def _inputs_digests(subjects, landmarks, flows, shape, spacing, lddmm):
    """``inputs_of(fixed)``: a digest of what a fixed subject's record is computed from.

    A fixed subject is done when its record lists the same moving subjects, computed from the
    same landmarks (and LDDMM flows) on the same grid (a re-run of the shapes stage or another
    subject list recomputes it) and its SVFs are all there.
    """

    def digest(subject: str) -> str:
        arrays = [landmarks[subject], *(flows.get(subject) or ())]
        return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()

    digests = {subject: digest(subject) for subject in subjects}

    def inputs_of(fixed: str) -> str:
        movings = [moving for moving in subjects if moving != fixed]
        text = json.dumps([digests[fixed], [digests[m] for m in movings], list(shape), list(spacing), lddmm])
        return hashlib.sha256(text.encode()).hexdigest()

    return inputs_of


def _pair_tasks(folder, todo, subjects, parameters, shape, spacing, landmarks, subject_flows, table):
    """The tasks (a fixed subject and up to ``moving_per_task`` moving ones each) and their owners
    ``(fixed, start, chunk)``; each fixed subject's stale record is removed."""
    tasks, owners = [], []
    for fixed in todo:
        (folder / "pairs" / f"{fixed}.json").unlink(missing_ok=True)  # stale: not done until rewritten
        movings = [moving for moving in subjects if moving != fixed]
        for start in range(0, len(movings), parameters.moving_per_task):
            chunk = movings[start : start + parameters.moving_per_task]
            task = {"parameters": asdict(parameters), "shape": shape, "spacing_mm": spacing}
            if parameters.deformation == "lddmm":
                task.update(table=table, fixed=subject_flows[fixed], moving=[subject_flows[m] for m in chunk])
            else:
                task.update(
                    fixed_landmarks_mm=landmarks[fixed], moving_landmarks_mm=[landmarks[m] for m in chunk]
                )
            tasks.append(task)
            owners.append((fixed, start, chunk))
    return tasks, owners


def _run_pair_tasks(
    folder, tasks, owners, subjects, parameters, shape, inputs_of, workers, scheduler, progress
) -> int:
    """Runs the tasks, filling each fixed subject's store as its chunks come back; returns how
    many pairs were computed. Half-filled stores are dropped when interrupted."""
    pending: dict[str, dict[str, Any]] = {}
    computed = 0
    try:
        for outcome in run_tasks(
            references_task,
            tasks,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            description="references",
        ):
            fixed, start, chunk = owners[outcome.index]
            if outcome.error is not None:
                raise RuntimeError(
                    f"references for fixed subject {fixed} failed: {outcome.error}"
                ) from outcome.error
            movings = [moving for moving in subjects if moving != fixed]
            entry = pending.get(fixed)
            if entry is None:
                entry = pending[fixed] = _open_store(folder, fixed, owners, len(movings), parameters, shape)
            svfs = outcome.value["svfs"]
            if not np.isfinite(
                svfs
            ).all():  # reference_svf() stores nothing non-finite; never let it reach a file
                raise RuntimeError(f"references for fixed subject {fixed}: a task returned non-finite SVFs")
            entry["store"][start : start + len(chunk)] = svfs
            entry["records"][start : start + len(chunk)] = outcome.value["records"]
            entry["remaining"] -= 1
            computed += len(chunk)
            if entry["remaining"] == 0:
                _close_store(folder, fixed, movings, entry, inputs_of(fixed))
                del pending[fixed]
    finally:
        for entry in pending.values():  # interrupted: drop the half-filled stores
            entry.pop("store", None)
            entry["partial"].unlink(missing_ok=True)
    return computed


def _open_store(folder, fixed, owners, count, parameters, shape) -> dict[str, Any]:
    """A fixed subject's store, filled chunk by chunk: memory-mapped under a temporary name, it
    takes its real name only when complete (:func:`_close_store`)."""
    final = folder / "svf" / f"{fixed}.npy"
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{fixed}.partial.npy")
    store = np.lib.format.open_memmap(partial, mode="w+", dtype=parameters.dtype, shape=(count, 3, *shape))
    return {
        "final": final,
        "partial": partial,
        "store": store,
        "records": [None] * count,
        "remaining": sum(1 for owner in owners if owner[0] == fixed),
    }


def _close_store(folder, fixed, movings, entry, inputs: str) -> None:
    """A complete store on disk under its real name, then its record (which marks it done)."""
    entry["store"].flush()
    del entry["store"]
    with open(entry["partial"], "rb") as written:  # header and data on disk before the rename
        os.fsync(written.fileno())
    os.replace(entry["partial"], entry["final"])
    # the record is written last: it marks the fixed subject as done
    write_json(
        folder / "pairs" / f"{fixed}.json",
        {
            "fixed": fixed,
            "moving": movings,
            "inputs": inputs,
            "pairs": [{"moving": m, **record} for m, record in zip(movings, entry["records"], strict=True)],
        },
    )


def _checked_landmarks(subject: str, stored: dict[str, Any]) -> np.ndarray:
    """A subject's landmarks (from its shapes record), with the checks the spline needs, naming it."""
    points = np.asarray(stored["landmarks_mm"], dtype=np.float64)
    problem = None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 4:
        problem = f"must be (K >= 4, 3) points, got shape {points.shape}"
    elif not np.isfinite(points).all():
        problem = "have non-finite values"
    elif len(np.unique(points, axis=0)) != len(points):
        problem = (
            f"repeat {len(points) - len(np.unique(points, axis=0))} points (the spline's system is singular)"
        )
    elif np.linalg.matrix_rank(points - points.mean(axis=0)) < 3:
        problem = "lie in a plane or on a line (the spline's affine part is undetermined)"
    if problem:
        raise ValueError(f"landmarks of subject {subject!r} {problem}: re-run `svfnet shapes`")
    return points


def _is_done(folder: Path, fixed: str, subjects: list[str], inputs: str) -> bool:
    record_path, svf_path = folder / "pairs" / f"{fixed}.json", folder / "svf" / f"{fixed}.npy"
    if not record_path.is_file() or not svf_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    movings = [moving for moving in subjects if moving != fixed]
    if record.get("moving") != movings or record.get("inputs") != inputs:
        return False
    try:
        return load_npy(svf_path).shape[0] == len(movings)
    except ValueError as error:  # truncated or corrupt (a crash, a full disk): computed again
        log.warning("%s; fixed subject %s is computed again", error, fixed)
        return False


def _summary(
    folder: Path, subjects, done: int, skipped: int, elapsed: float, computed: int
) -> ReferencesSummary:
    records = []
    for fixed in subjects:
        path = folder / "pairs" / f"{fixed}.json"
        if path.is_file():
            records += json.loads(path.read_text())["pairs"]
    reasons = [exclusion(r) for r in records]
    with_log = [r for r in records if r["residual_max"] is not None and math.isfinite(r["residual_max"])]
    summary = ReferencesSummary(
        fixed_done=done,
        fixed_skipped=skipped,
        pairs=len(records),
        converged=sum(1 for r in records if r["converged"]),
        folded=reasons.count(FOLDED),
        residual_max=max((r["residual_max"] for r in with_log), default=float("nan")),
        residual_mean=float(np.mean([r["residual_mean"] for r in with_log])) if with_log else float("nan"),
        seconds_per_pair=elapsed / computed if computed else 0.0,
        usable=reasons.count(None),
        excluded={reason: reasons.count(reason) for reason in EXCLUSION_REASONS},
    )
    left_out = ", ".join(f"{reason} {count}" for reason, count in summary.excluded.items() if count)
    log.info(
        "references: %d of %d pairs usable for training (%.1f%%)%s",
        summary.usable,
        summary.pairs,
        100 * summary.usable_fraction if summary.pairs else 0.0,
        f"; left out: {left_out}" if left_out else "",
    )
    return summary
