"""Multi-atlas segmentation scored on a work folder's test subjects (``svfnet evaluate --segmentation``).

Every test subject of the work folder's split (its validation subjects when it has none) is
segmented from the **training** subjects (the atlases), as :func:`svfnet.segmentation.multi_atlas.segment` does
with its defaults: from its original image (``subjects.json``'s source), rigidly aligned to the
atlases' frame without its labels, every atlas registered to it with SVF-Net, their labels warped and
fused. It is scored against its own labels on its original grid:

- **Dice and 95% Hausdorff distance per region** for: each single atlas (the mean over the atlases),
  the majority vote and the weighted vote (:func:`svfnet.segmentation.fusion.fuse`); with ``refine``, the
  same three after each atlas's registration is refined by LCC Log-Demons started from its SVF
  (:func:`svfnet.segmentation.refinement.refine_registrations`, ``svfnet segment --refine``);
- **calibration of the uncertainty** of each fused method: over the image's voxels, the error rate
  (fused label ≠ true label) per bin of the uncertainty map (the normalised entropy,
  ``PREFIX_uncertainty.nii.gz``) and per bin of the fused distribution's probability of error
  ``1 − max_l p(l)`` (the quantity a calibrated vote would match: its reliability curve is the
  diagonal), with the expected calibration error (:func:`calibration_counts`,
  :func:`calibration_rows`).

A subject whose source files are gone (or a work folder written without them) is segmented from its
prepared image instead and scored on the prepared grid; the report says so, since that image was
aligned with the help of its labels.

Files, in ``WORKDIR/evaluation/segmentation/`` (each written atomically):

- ``records/<subject>.json``: one subject's scores, calibration counts and timings, written as soon
  as it is done; a re-run skips subjects whose record has the same settings (checkpoint, atlases,
  subject files, refinement) and redoes the rest: an interrupted run resumes.
- ``views/<subject>.npz``: the two views of the subject the gallery draws (short-axis slice and
  long-axis cut through its LV: image, true labels, each fused method's labels and uncertainty).
- ``subjects.csv`` (subject × method × region), ``summary.csv`` (method × region × metric: n, mean,
  std, median, quartiles, extremes), ``calibration.csv`` (method × measure × bin) and
  ``segmentation.json`` (what :func:`evaluate_segmentation` returns, JSON-ready); missing values are
  empty cells (CSV) and ``null`` (JSON), never NaN.

:func:`report_section` draws ``figures/segmentation_reliability.png`` and
``figures/segmentation_example_<n>.png`` and returns the HTML section of the evaluation report
(:mod:`svfnet.evaluation.report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.staging import file_digest
from svfnet.common.workdir import REGIONS, WorkDir, array_digest
from svfnet.evaluation.tables import SUMMARY_COLUMNS, describe, write_csv
from svfnet.registration.arrays import refinement_params
from svfnet.segmentation.atlases import read_atlases
from svfnet.segmentation.evaluation_subjects import read_subject, score_subject, split_subjects
from svfnet.segmentation.fusion import DEFAULT_SHARPNESS
from svfnet.segmentation.multi_atlas import DEFAULT_LCC_SIGMA_MM, check_atlas_grid
from svfnet.segmentation.scores import (
    calibration_rows,
    expected_calibration_error,
    pooled,
)
from svfnet.segmentation.target import DEFAULT_REFERENCES
from svfnet.training.model import load

__all__ = [
    "CALIBRATION_MEASURES",
    "FUSED_METHODS",
    "METHODS",
    "METHOD_NAMES",
    "SegmentationEvaluation",
    "evaluate_segmentation",
]

logger = logging.getLogger(__name__)

# Methods, in the order of tables and figures; "_refined": after LCC Log-Demons refinement.
METHODS = ("single", "majority", "weighted", "single_refined", "majority_refined", "weighted_refined")
METHOD_NAMES = {
    "single": "single atlas (mean over atlases)",
    "majority": "majority vote",
    "weighted": "weighted vote",
    "single_refined": "single atlas + refinement",
    "majority_refined": "majority vote + refinement",
    "weighted_refined": "weighted vote + refinement",
}
# The fused methods: one label map and uncertainty each (their calibration is measured).
FUSED_METHODS = ("majority", "weighted", "majority_refined", "weighted_refined")
# The uncertainty measures binned for the calibration: the uncertainty map, and the fused
# distribution's probability that its label is wrong.
CALIBRATION_MEASURES = {
    "entropy": "normalised entropy (the uncertainty map)",
    "error_probability": "probability of error, 1 − max p",
}
# The reliability plot leaves out bins with fewer voxels than this (their rate is noise; the CSV has them).
PLOT_MIN_VOXELS = 50
# Bumped when what a record holds changes: older records are then recomputed.
RECORD_VERSION = 1
# Reference point for real data (issue 17): the paper authors' multi-atlas SVF-Net entry to the ACDC
# challenge, Dice at end-diastole.
ACDC_REFERENCE = {"LV blood pool": 0.957, "LV myocardium": 0.867, "RV blood pool": 0.916}

SUBJECT_COLUMNS = (
    "subject",
    "method",
    "region",
    "name",
    "status",
    "dice",
    "hausdorff95_mm",
    "voxels_truth",
    "voxels_segmented",
    "atlases",
    "seconds",
    "source",
    "error",
)
CALIBRATION_COLUMNS = (
    "method",
    "measure",
    "bin",
    "low",
    "high",
    "voxels",
    "errors",
    "error_rate",
    "mean_value",
)
METRICS = (("dice", "Dice"), ("hausdorff95_mm", "Hausdorff 95% (mm)"))


def _settings_key(settings: Mapping[str, Any]) -> str:
    payload = json.dumps({"version": RECORD_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ tables
def _single_mean(
    per_atlas: Mapping[str, Mapping[str, Mapping[str, Any]]], region: int, metric: str
) -> float | None:
    values = []
    for scores in per_atlas.values():
        score = scores.get(str(region))
        if score is not None and score.get(metric) is not None:
            values.append(float(score[metric]))
    return math.fsum(values) / len(values) if values else None  # fsum: the same in any order


def _subject_rows(records: Mapping[str, Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for subject_id, record in records.items():
        if record.get("error"):
            for method in methods:
                for region, name in REGIONS.items():
                    rows.append(
                        {
                            "subject": subject_id,
                            "method": method,
                            "region": region,
                            "name": name,
                            "status": "failed",
                            "source": record.get("source", ""),
                            "error": record["error"],
                        }
                    )
            continue
        for method in methods:
            score_set = record["scores"].get(method)
            if score_set is None:
                continue
            for region, name in REGIONS.items():
                row: dict[str, Any] = {
                    "subject": subject_id,
                    "method": method,
                    "region": region,
                    "name": name,
                    "seconds": record["seconds"].get(method),
                    "source": record["source"],
                    "error": "",
                }
                if method.startswith("single"):
                    per_atlas = score_set["per_atlas"]
                    statuses = [s.get(str(region), {}).get("status") for s in per_atlas.values()]
                    first = next(iter(per_atlas.values()))
                    score = first[str(region)]
                    row.update(
                        status="absent" if "ok" not in statuses and "lost" not in statuses else "ok",
                        dice=_single_mean(per_atlas, region, "dice"),
                        hausdorff95_mm=_single_mean(per_atlas, region, "hausdorff95_mm"),
                        voxels_truth=score["voxels_truth"],
                        atlases=len(per_atlas),
                    )
                else:
                    score = score_set[str(region)]
                    row.update(
                        status=score["status"],
                        dice=score["dice"],
                        hausdorff95_mm=score["hausdorff95_mm"],
                        voxels_truth=score["voxels_truth"],
                        voxels_segmented=score["voxels_segmented"],
                        atlases=len(record["atlases"]),
                    )
                rows.append(row)
    return rows


def _summary_rows(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for method in methods:
        for region, name in REGIONS.items():
            chosen = [
                r for r in rows if r["method"] == method and r["region"] == region and r["status"] != "failed"
            ]
            for metric, _ in METRICS:
                values = [float(r[metric]) for r in chosen if r.get(metric) is not None]
                if values:
                    out.append(
                        {
                            "method": method,
                            "region": region,
                            "name": name,
                            "metric": metric,
                            **describe(values),
                        }
                    )
        # Dice averaged over the regions a subject has, then over subjects
        per_subject: dict[str, list[float]] = {}
        for r in rows:
            if r["method"] == method and r["status"] != "failed" and r.get("dice") is not None:
                per_subject.setdefault(r["subject"], []).append(float(r["dice"]))
        if per_subject:
            out.append(
                {
                    "method": method,
                    "region": "",
                    "name": "mean over regions",
                    "metric": "dice",
                    **describe([float(np.mean(v)) for v in per_subject.values()]),
                }
            )
        seconds = sorted(
            {
                (r["subject"], r["seconds"])
                for r in rows
                if r["method"] == method and r.get("seconds") is not None
            }
        )
        if seconds:
            out.append(
                {
                    "method": method,
                    "region": "",
                    "name": "per subject",
                    "metric": "seconds",
                    **describe([s for _, s in seconds]),
                }
            )
    return out


def _headline(
    summary: Sequence[Mapping[str, Any]], methods: Sequence[str], count: int, atlases: int, subject_set: str
) -> list[str]:
    by_key = {(r["method"], r["name"], r["metric"]): r for r in summary}
    lines = [
        f"{count} {subject_set} subject(s) segmented from {atlases} training atlases; mean Dice per region:"
    ]
    for name in (*REGIONS.values(), "mean over regions"):
        parts = [
            f"{METHOD_NAMES[m]} {by_key[(m, name, 'dice')]['mean']:.3f}"
            for m in methods
            if (m, name, "dice") in by_key
        ]
        if parts:
            lines.append(f"  {name}: " + ", ".join(parts))
    return lines


# ------------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class SegmentationEvaluation:
    """What :func:`evaluate_segmentation` computed and wrote.

    Attributes:
        folder: ``WORKDIR/evaluation/segmentation``.
        subject_set: ``"test"`` (or ``"val"`` when the split has no test subjects).
        subjects: the subjects segmented.
        atlases: the atlas subjects (the split's training subjects with labels).
        methods: the methods scored (keys of :data:`METHOD_NAMES`).
        records: subject → its record (``records/<subject>.json``; ``{"error": ...}`` when it failed).
        rows, summary, calibration: the rows of ``subjects.csv``, ``summary.csv``, ``calibration.csv``.
        sources: how many subjects came from their original image, and from the prepared one.
        settings: what the results depend on (refinement, fusion parameters, checkpoint).
        computed: subjects segmented in this run (the others were on disk).
        headline: printable lines (mean Dice per region and method).
        files: written files by key.
    """

    folder: Path
    subject_set: str
    subjects: tuple[str, ...]
    atlases: tuple[str, ...]
    methods: tuple[str, ...]
    records: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    sources: dict[str, int]
    settings: dict[str, Any]
    computed: int
    headline: list[str]
    files: dict[str, Path]

    def failed(self) -> dict[str, str]:
        """Subject → error, for the subjects that could not be segmented."""
        return {s: r["error"] for s, r in self.records.items() if r.get("error")}

    def calibration_error(self, method: str) -> float | None:
        """Expected calibration error of ``method``'s probability of error, pooled over subjects."""
        done = [r for r in self.records.values() if not r.get("error")]
        counts = pooled(done, method, "error_probability")
        return None if counts is None else expected_calibration_error(counts)

    def json_ready(self) -> dict[str, Any]:
        by_key = {(r["method"], r["name"], r["metric"]): r for r in self.summary}
        return {
            "folder": str(self.folder),
            "subject_set": self.subject_set,
            "subjects": list(self.subjects),
            "atlases": list(self.atlases),
            "methods": list(self.methods),
            "sources": self.sources,
            "settings": self.settings,
            "computed": self.computed,
            "failed": self.failed(),
            "headline": self.headline,
            "mean_dice": {
                m: {
                    name: by_key[(m, name, "dice")]["mean"]
                    for name in (*REGIONS.values(), "mean over regions")
                    if (m, name, "dice") in by_key
                }
                for m in self.methods
            },
            "mean_hausdorff95_mm": {
                m: {
                    name: by_key[(m, name, "hausdorff95_mm")]["mean"]
                    for name in REGIONS.values()
                    if (m, name, "hausdorff95_mm") in by_key
                }
                for m in self.methods
            },
            "median_seconds_per_subject": {
                m: by_key[(m, "per subject", "seconds")]["median"]
                for m in self.methods
                if (m, "per subject", "seconds") in by_key
            },
            "expected_calibration_error": {
                m: self.calibration_error(m) for m in self.methods if m in FUSED_METHODS
            },
            "files": {k: str(v) for k, v in self.files.items()},
        }


def evaluate_segmentation(
    workdir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    model: Any = None,
    refine: bool | Mapping[str, Any] = False,
    progress: bool = True,
) -> SegmentationEvaluation:
    """Segments every test subject from the training atlases and scores it (see the module's description).

    Args:
        workdir: a prepared work folder with a split (created if missing, as ``svfnet evaluate`` does).
        checkpoint: the SVF-Net checkpoint (its digest keys the records).
        model: the loaded model (default: loaded from ``checkpoint`` on :func:`svfnet.default_device`).
        refine: also score the methods after refinement (True: :data:`svfnet.registration.arrays.REFINEMENT`;
            a mapping of ``LCCDemonsParams`` fields updates it), as ``svfnet segment --refine``.
        progress: a tqdm bar over the subjects.

    Raises:
        FileNotFoundError: no checkpoint, or no prepared subjects.
        ValueError / TypeError: bad ``refine``; a split without training subjects or without test and
            validation subjects; training subjects without labels; a model on another grid. All before
            any segmentation.
    """
    from tqdm.auto import tqdm

    import svfnet

    workdir, checkpoint = Path(workdir), Path(checkpoint)
    refinement = refinement_params(refine, "evaluate_segmentation()")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    subject_ids, atlas_ids, subject_set = split_subjects(workdir)
    atlases = read_atlases(workdir, atlas_ids)
    if model is None:
        model = load(checkpoint, svfnet.default_device())
    check_atlas_grid(model, atlases, str(checkpoint))
    entries = {e["id"]: e for e in json.loads(WorkDir(workdir).subjects_json.read_text())["subjects"]}
    methods = tuple(m for m in METHODS if refinement is not None or not m.endswith("_refined"))
    settings = _settings(checkpoint, atlases, refinement)
    folder = WorkDir(workdir).evaluation / "segmentation"
    records: dict[str, dict[str, Any]] = {}
    computed = 0
    for subject_id in tqdm(subject_ids, desc="segmenting subjects", unit="subject", disable=not progress):
        records[subject_id], done_now = _subject_record(
            workdir,
            folder,
            subject_id,
            entries.get(subject_id, {}),
            settings,
            model,
            atlases,
            refinement,
            progress,
        )
        computed += done_now
    rows, summary, calibration, sources, files = _write_tables(folder, records, methods)
    result = SegmentationEvaluation(
        folder,
        subject_set,
        tuple(subject_ids),
        tuple(a.id for a in atlases.atlases),
        methods,
        records,
        rows,
        summary,
        calibration,
        sources,
        settings,
        computed,
        _headline(summary, methods, len(subject_ids), len(atlases), subject_set),
        files,
    )
    write_json(files["json"], _json_safe(result.json_ready()))
    return result


def _settings(checkpoint: Path, atlases: Any, refinement: dict[str, Any] | None) -> dict[str, Any]:
    """What a subject's record depends on besides the subject (its key): the checkpoint, the atlases, the
    refinement and the fusion's defaults."""
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint),
        "atlases": {a.id: f"{_array_digest(a.image)}-{_array_digest(a.labels)}" for a in atlases.atlases},
        "refinement": None
        if refinement is None
        else {k: list(v) if isinstance(v, tuple) else v for k, v in refinement.items()},
        "fusion": {
            "sharpness": DEFAULT_SHARPNESS,
            "lcc_sigma_mm": DEFAULT_LCC_SIGMA_MM,
            "references": DEFAULT_REFERENCES,
        },
    }


def _subject_record(
    workdir: Path,
    folder: Path,
    subject_id: str,
    entry: Mapping[str, Any],
    settings: Mapping[str, Any],
    model: Any,
    atlases: Any,
    refinement: dict[str, Any] | None,
    progress: bool,
) -> tuple[dict[str, Any], bool]:
    """One subject's record, and whether it was computed now: read back where its record has the same
    settings (and its views exist), else segmented and scored, its record and views written; a subject
    that cannot be read or segmented gets a record naming the error."""
    record_path = folder / "records" / f"{subject_id}.json"
    try:
        subject = read_subject(workdir, subject_id, entry)
    except Exception as error:  # a broken subject fails its rows, not the run
        logger.warning("segmentation: cannot read %s: %s", subject_id, error)
        return {"subject": subject_id, "error": f"{type(error).__name__}: {error}"}, False
    key = _settings_key({**settings, "subject": subject.digest})
    old = _read_record(record_path)
    if (
        old is not None
        and old.get("key") == key
        and not old.get("error")
        and (folder / "views" / f"{subject_id}.npz").is_file()
    ):
        return old, False
    try:
        record, views = score_subject(subject, model, atlases, refinement, progress)
    except Exception as error:
        logger.warning("segmentation of %s failed: %s", subject_id, error)
        record, views = (
            {
                "subject": subject_id,
                "source": subject.source,
                "error": f"{type(error).__name__}: {error}",
            },
            None,
        )
    record["key"] = key
    if views is not None:
        with atomic_path(folder / "views" / f"{subject_id}.npz") as temporary:
            np.savez_compressed(temporary, **views)
    write_json(record_path, _json_safe(record))
    return json.loads(json.dumps(_json_safe(record))), True  # as read back on a re-run


def _write_tables(
    folder: Path, records: Mapping[str, Mapping[str, Any]], methods: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, int], dict[str, Path]]:
    """``subjects.csv``, ``summary.csv`` and ``calibration.csv`` from the records: their rows, how many
    subjects were scored from each source, and the files (with ``segmentation.json``, written later)."""
    rows = _subject_rows(records, methods)
    summary = _summary_rows(rows, methods)
    done = [r for r in records.values() if not r.get("error")]
    calibration = []
    for method in (m for m in methods if m in FUSED_METHODS):
        for measure in CALIBRATION_MEASURES:
            counts = pooled(done, method, measure)
            if counts is not None:
                calibration.extend(calibration_rows(method, measure, counts))
    sources = {kind: sum(1 for r in done if r.get("source") == kind) for kind in ("original", "prepared")}
    files = {
        "subjects": folder / "subjects.csv",
        "summary": folder / "summary.csv",
        "calibration": folder / "calibration.csv",
        "json": folder / "segmentation.json",
    }
    write_csv(files["subjects"], SUBJECT_COLUMNS, rows, missing="")
    write_csv(files["summary"], SUMMARY_COLUMNS, summary, missing="")
    write_csv(files["calibration"], CALIBRATION_COLUMNS, calibration, missing="")
    return rows, summary, calibration, sources, files


def _array_digest(array: np.ndarray) -> str:
    return array_digest(array)


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring the unreadable record %s", path)
        return None


def _json_safe(value: Any) -> Any:
    """``value`` with int keys as strings, NumPy scalars as numbers and NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value
