"""Multi-atlas segmentation scored on a work folder's test subjects (``svfnet evaluate --segmentation``).

Every test subject of the work folder's split (its validation subjects when it has none) is
segmented from the **training** subjects (the atlases), as :func:`svfnet.segmentation.segment` does
with its defaults: from its original image (``subjects.json``'s source), rigidly aligned to the
atlases' frame without its labels, every atlas registered to it with SVF-Net, their labels warped and
fused. It is scored against its own labels on its original grid:

- **Dice and 95% Hausdorff distance per region** for: each single atlas (the mean over the atlases),
  the majority vote and the weighted vote (:func:`svfnet.segmentation.fuse`); with ``refine``, the
  same three after each atlas's registration is refined by LCC Log-Demons started from its SVF
  (:func:`svfnet.segmentation_refinement.refine_registrations`, ``svfnet segment --refine``);
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
(:mod:`svfnet.evaluation_report`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet._io import atomic_path, write_json
from svfnet.workdir import REGIONS, WorkDir

__all__ = [
    "CALIBRATION_EDGES",
    "CALIBRATION_MEASURES",
    "FUSED_METHODS",
    "METHODS",
    "METHOD_NAMES",
    "SegmentationEvaluation",
    "calibration_counts",
    "calibration_rows",
    "evaluate_segmentation",
    "region_scores",
    "reliability_figure",
    "report_section",
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
# Ten equal bins on [0, 1]; the last one is closed (holds 1.0).
CALIBRATION_EDGES = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))
HAUSDORFF_PERCENTILE = 95.0
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


# ------------------------------------------------------------------------------------------ scoring
def region_scores(
    labels: np.ndarray,
    truth: np.ndarray,
    spacing_mm: Sequence[float],
    regions: Sequence[int] = tuple(REGIONS),
) -> dict[int, dict[str, Any]]:
    """Dice and 95% Hausdorff distance (mm) of each region of ``labels`` against ``truth``.

    Returns:
        region value → ``{"status", "dice", "hausdorff95_mm", "voxels_truth", "voxels_segmented"}``;
        status ``"ok"``; ``"lost"`` when the truth has the region and the segmentation not (Dice 0,
        no distance); ``"absent"`` when the truth lacks it (not scored: Dice and distance None).
    """
    from svfnet.metrics import dice, hausdorff

    labels, truth = np.asarray(labels), np.asarray(truth)
    if labels.shape != truth.shape:
        raise ValueError(
            f"region_scores(): 'labels' {labels.shape} and 'truth' {truth.shape} differ in shape"
        )
    out: dict[int, dict[str, Any]] = {}
    for region in regions:
        ours, theirs = labels == region, truth == region
        count_ours, count_truth = int(np.count_nonzero(ours)), int(np.count_nonzero(theirs))
        score: dict[str, Any] = {"voxels_truth": count_truth, "voxels_segmented": count_ours}
        if count_truth == 0:
            score.update(status="absent", dice=None, hausdorff95_mm=None)
        elif count_ours == 0:
            score.update(status="lost", dice=0.0, hausdorff95_mm=None)
        else:
            # within the masks' bounding box and one voxel more (clipped to the grid) the surfaces and
            # the distances between them are those of the whole grid, at a fraction of the cost
            box = _bounding_box(ours | theirs, margin=1)
            score.update(
                status="ok",
                dice=float(dice(ours, theirs)),
                hausdorff95_mm=float(
                    hausdorff(ours[box], theirs[box], spacing_mm, percentile=HAUSDORFF_PERCENTILE)
                ),
            )
        out[int(region)] = score
    return out


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The slices of ``mask``'s bounding box widened by ``margin`` voxels, within the grid."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(
            slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + margin + 1, mask.shape[axis]))
        )
    return tuple(box)


def calibration_counts(
    values: np.ndarray, wrong: np.ndarray, edges: Sequence[float] = CALIBRATION_EDGES
) -> dict[str, list[float]]:
    """Per bin of ``values`` (bins ``[edges[n], edges[n + 1])``, the last one closed): how many
    voxels, how many of them wrong, and the sum of their values.

    Args:
        values: per voxel uncertainty (or probability of error) in ``[edges[0], edges[-1]]``.
        wrong: per voxel bool, same shape: the fused label is not the true one.
        edges: increasing bin edges.

    Returns:
        ``{"voxels": [...], "errors": [...], "sum_value": [...]}``, one entry per bin (counts as
        ints): sums over subjects pool them.
    """
    values = np.asarray(values, np.float64).ravel()
    wrong = np.asarray(wrong, bool).ravel()
    edges = np.asarray(edges, np.float64)
    if values.shape != wrong.shape:
        raise ValueError(
            f"calibration_counts(): 'values' and 'wrong' differ in size ({values.size}, {wrong.size})"
        )
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"calibration_counts(): 'edges' must increase, got {edges.tolist()}")
    if not np.all(np.isfinite(values)):
        raise ValueError("calibration_counts(): 'values' holds NaN or infinite values")
    if values.size and (values.min() < edges[0] - 1e-6 or values.max() > edges[-1] + 1e-6):
        raise ValueError(
            f"calibration_counts(): 'values' in [{values.min()}, {values.max()}] outside the bins "
            f"[{edges[0]}, {edges[-1]}]"
        )
    count = edges.size - 1
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, count - 1)
    return {
        "voxels": np.bincount(index, minlength=count).astype(int).tolist(),
        "errors": np.bincount(index, weights=wrong, minlength=count).round().astype(int).tolist(),
        "sum_value": np.bincount(index, weights=values, minlength=count).tolist(),
    }


def calibration_rows(
    method: str,
    measure: str,
    counts: Mapping[str, Sequence[float]],
    edges: Sequence[float] = CALIBRATION_EDGES,
) -> list[dict[str, Any]]:
    """Rows of ``calibration.csv`` from (pooled) :func:`calibration_counts`: per bin, the voxels,
    errors, error rate and mean value (None for an empty bin)."""
    rows = []
    for n, (voxels, errors, total) in enumerate(
        zip(counts["voxels"], counts["errors"], counts["sum_value"], strict=True)
    ):
        rows.append(
            {
                "method": method,
                "measure": measure,
                "bin": n,
                "low": float(edges[n]),
                "high": float(edges[n + 1]),
                "voxels": int(voxels),
                "errors": int(errors),
                "error_rate": float(errors) / voxels if voxels else None,
                "mean_value": float(total) / voxels if voxels else None,
            }
        )
    return rows


def expected_calibration_error(counts: Mapping[str, Sequence[float]]) -> float | None:
    """``Σ_b (n_b / N) |error rate_b − mean value_b|``: how far the reliability curve is from the
    diagonal, weighted by the voxels in each bin (for the probability of error; None without voxels)."""
    voxels = np.asarray(counts["voxels"], np.float64)
    total = voxels.sum()
    if total <= 0:
        return None
    keep = voxels > 0
    rate = np.asarray(counts["errors"], np.float64)[keep] / voxels[keep]
    mean = np.asarray(counts["sum_value"], np.float64)[keep] / voxels[keep]
    return float(np.sum(voxels[keep] / total * np.abs(rate - mean)))


def _pooled(records: Sequence[Mapping[str, Any]], method: str, measure: str) -> dict[str, list[float]] | None:
    parts = [r["calibration"][method][measure] for r in records if method in r.get("calibration", {})]
    if not parts:
        return None
    return {
        key: np.sum([p[key] for p in parts], axis=0).tolist() for key in ("voxels", "errors", "sum_value")
    }


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class _Subject:
    """A subject to segment: its image (path or array/affine) and its true labels on that image's grid."""

    id: str
    image: Any
    truth: np.ndarray
    spacing_mm: tuple[float, float, float]
    source: str  # "original" or "prepared"
    digest: str


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _read_subject(workdir: Path, subject_id: str, entry: Mapping[str, Any]) -> _Subject:
    """The subject's source image and labels (mapped as the dataset was), else its prepared ones."""
    from svfnet.data.labels import parse_label_mapping
    from svfnet.data.nifti import read_nifti
    from svfnet.register_nifti import read_original

    source = entry.get("source") or {}
    image_path, labels_path = source.get("image"), source.get("labels")
    if image_path and labels_path and Path(image_path).is_file() and Path(labels_path).is_file():
        mapping = parse_label_mapping(source["label_mapping"]) if source.get("label_mapping") else None
        if mapping is None:
            from svfnet.data.labels import IDENTITY_LABELS

            mapping = dict(IDENTITY_LABELS)
        original = read_original("image", image_path, labels_path, mapping)
        spacing = tuple(float(s) for s in np.linalg.norm(original.affine[:3, :3], axis=0))
        mapping_text = source.get("label_mapping")
        digest = f"{_file_digest(Path(image_path))}-{_file_digest(Path(labels_path))}-{mapping_text}"
        return _Subject(
            subject_id, Path(image_path), original.labels.astype(np.uint8), spacing, "original", digest
        )
    folder = WorkDir(workdir)
    image, affine = read_nifti(folder.image(subject_id), kind="image")
    labels = read_nifti(folder.labels(subject_id), kind="labels")[0].astype(np.uint8)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    from svfnet.workdir import array_digest

    digest = f"prepared-{array_digest(image)}-{array_digest(labels)}"
    return _Subject(subject_id, (image, affine), labels, spacing, "prepared", digest)


def _split_subjects(workdir: Path) -> tuple[list[str], list[str], str]:
    """(subjects to segment, atlas subjects, "test" or "val")."""
    from svfnet.split import subject_split

    split = subject_split(workdir)
    if not split.train:
        raise ValueError(f"{workdir / 'split.json'} has no training subjects: no atlases to segment from")
    if split.test:
        return sorted(split.test), list(split.train), "test"
    if split.val:
        logger.warning(
            "%s has no test subjects: segmenting the %d validation subjects instead",
            workdir / "split.json",
            len(split.val),
        )
        return sorted(split.val), list(split.train), "val"
    raise ValueError(f"{workdir / 'split.json'} has neither test nor validation subjects: nothing to segment")


def _settings_key(settings: Mapping[str, Any]) -> str:
    payload = json.dumps({"version": RECORD_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ one subject
def _fused_outputs(fused: np.ndarray, prepared: Any, label_values: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Labels, uncertainty and probability of error on the image's grid, as segment() computes them."""
    from svfnet.segmentation import _argmax_labels, _to_original, normalised_entropy

    probabilities = _to_original(fused, prepared.transform)
    return {
        "labels": _argmax_labels(probabilities, label_values),
        "uncertainty": normalised_entropy(probabilities),
        "error_probability": np.clip(1.0 - probabilities.max(axis=0), 0.0, 1.0).astype(np.float32),
    }


def _views(
    image: np.ndarray, truth: np.ndarray, fused: Mapping[str, Mapping[str, np.ndarray]], spacing
) -> dict:
    """The short-axis slice (k) and long-axis cut (j) through the true LV's centre, of every map."""
    mask = np.isin(truth, (1, 2))
    centre = (
        [int(round(float(c.mean()))) for c in np.nonzero(mask)]
        if mask.any()
        else [n // 2 for n in truth.shape]
    )
    _, cj, ck = centre
    arrays: dict[str, np.ndarray] = {
        "spacing_mm": np.asarray(spacing, np.float64),
        "centre": np.asarray(centre),
        "image_sa": image[:, :, ck].astype(np.float32),
        "image_la": image[:, cj, :].astype(np.float32),
        "truth_sa": truth[:, :, ck].astype(np.uint8),
        "truth_la": truth[:, cj, :].astype(np.uint8),
    }
    for method, maps in fused.items():
        arrays[f"{method}_labels_sa"] = maps["labels"][:, :, ck].astype(np.uint8)
        arrays[f"{method}_labels_la"] = maps["labels"][:, cj, :].astype(np.uint8)
        arrays[f"{method}_uncertainty_sa"] = maps["uncertainty"][:, :, ck].astype(np.float32)
        arrays[f"{method}_uncertainty_la"] = maps["uncertainty"][:, cj, :].astype(np.float32)
    return arrays


def _score_subject(
    subject: _Subject,
    net: Any,
    atlases: Any,
    refinement: dict[str, Any] | None,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Segments one subject with every method; its record (scores, calibration, timings) and views."""
    from svfnet import segmentation as seg

    timings: dict[str, float] = {}
    started = tick = time.perf_counter()
    original = seg._read_image(subject.image)
    timings["read"] = time.perf_counter() - tick
    if original.image.shape != subject.truth.shape:
        raise ValueError(
            f"{subject.id}: its image {original.image.shape} and labels {subject.truth.shape} differ in shape"
        )
    # as segment() does with its defaults (tests/test_segmentation_evaluation.py compares the two)
    tick = time.perf_counter()
    prepared = seg.prepare_target(
        original, atlases, references=seg.DEFAULT_REFERENCES, rigid_initial="geometry"
    )
    timings["align_prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    similarities = seg.image_similarity(
        prepared.image, np.stack([a.image for a in atlases.atlases]), prepared.inside
    )
    if float(similarities.max()) < seg.DEFAULT_MIN_CORRELATION:
        raise ValueError(
            f"{subject.id}: no heart found: after the rigid alignment the image correlates with no atlas "
            "better "
            f"than {float(similarities.max()):.2f} (at least {seg.DEFAULT_MIN_CORRELATION:g} expected)"
        )
    order = np.argsort(-similarities, kind="stable")
    chosen = atlases.subset(order)
    timings["select"] = time.perf_counter() - tick
    registrations = {"": seg.register_atlases(net, prepared.image, chosen, symmetric=seg.DEFAULT_SYMMETRIC)}
    timings["register_warp"] = registrations[""].seconds
    if refinement is not None:
        from svfnet.segmentation_refinement import refine_registrations

        registrations["_refined"], timings["refinement"] = refine_registrations(
            registrations[""], prepared.image, chosen, refinement, progress=progress
        )
    values = atlases.label_values
    scores: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    uncertainty_split: dict[str, Any] = {}
    fused_maps: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    base = timings["read"] + timings["align_prepare"] + timings["select"] + timings["register_warp"]
    for suffix, result in registrations.items():
        extra = timings.get("refinement", 0.0) if suffix else 0.0
        tick = time.perf_counter()
        lcc = seg.local_correlations(
            result.warped_images, prepared.image, atlases.grid.spacing_mm, seg.DEFAULT_LCC_SIGMA_MM
        )
        weights = seg.lcc_weights(lcc, seg.DEFAULT_SHARPNESS)
        lcc_s = time.perf_counter() - tick
        for fusion in ("majority", "weighted"):
            tick = time.perf_counter()
            fused = seg.fuse(result.probabilities, weights if fusion == "weighted" else None)
            maps = _fused_outputs(fused, prepared, values)
            method = fusion + suffix
            seconds[method] = (
                base + extra + (time.perf_counter() - tick) + (lcc_s if fusion == "weighted" else 0.0)
            )
            fused_maps[method] = maps
            scores[method] = region_scores(maps["labels"], subject.truth, subject.spacing_mm)
            wrong = maps["labels"] != subject.truth
            calibration[method] = {
                "entropy": calibration_counts(maps["uncertainty"], wrong),
                "error_probability": calibration_counts(maps["error_probability"], wrong),
            }
            heart = (maps["labels"] > 0) | (subject.truth > 0)
            uncertainty_split[method] = {
                "wrong": float(maps["uncertainty"][wrong].mean()) if wrong.any() else None,
                "right_heart": float(maps["uncertainty"][heart & ~wrong].mean())
                if (heart & ~wrong).any()
                else None,
                "wrong_voxels": int(np.count_nonzero(wrong)),
                "heart_voxels": int(np.count_nonzero(heart)),
            }
        # each atlas alone: its warped labels' most probable label, on the image's grid
        tick = time.perf_counter()
        singles = [
            region_scores(
                seg._argmax_labels(seg._to_original(p, prepared.transform), values),
                subject.truth,
                subject.spacing_mm,
            )
            for p in result.probabilities
        ]
        scores["single" + suffix] = {
            "per_atlas": {atlas.id: s for atlas, s in zip(chosen.atlases, singles, strict=True)},
        }
        seconds["single" + suffix] = base + extra
        timings["single_atlas_scoring" + suffix] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    record = {
        "subject": subject.id,
        "source": subject.source,
        "atlases": [a.id for a in chosen.atlases],
        "similarities": [float(s) for s in similarities[order]],
        "reference_atlas": prepared.reference,
        "grid_inside_fraction": float(prepared.inside.mean()),
        "warnings": list(prepared.warnings),
        "scores": scores,
        "calibration": calibration,
        "uncertainty": uncertainty_split,
        "seconds": seconds,
        "timings_s": timings,
    }
    return record, _views(original.image, subject.truth, fused_maps, subject.spacing_mm)


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


def _describe(values: Sequence[float]) -> dict[str, Any]:
    data = np.asarray(values, np.float64)
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
                            **_describe(values),
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
                    **_describe([float(np.mean(v)) for v in per_subject.values()]),
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
                    **_describe([s for _, s in seconds]),
                }
            )
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return repr(float(value)) if math.isfinite(value) else ""
    return "" if value is None else value


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})


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
        counts = _pooled(done, method, "error_probability")
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
        refine: also score the methods after refinement (True: :data:`svfnet.registration.REFINEMENT`;
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
    from svfnet.registration import refinement_params
    from svfnet.segmentation import (
        DEFAULT_LCC_SIGMA_MM,
        DEFAULT_REFERENCES,
        DEFAULT_SHARPNESS,
        _check_grid,
        read_atlases,
    )

    workdir = Path(workdir)
    checkpoint = Path(checkpoint)
    refinement = refinement_params(refine, "evaluate_segmentation()")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    subject_ids, atlas_ids, subject_set = _split_subjects(workdir)
    atlases = read_atlases(workdir, atlas_ids)
    if model is None:
        from svfnet.model import load

        model = load(checkpoint, svfnet.default_device())
    _check_grid(model, atlases, str(checkpoint))
    entries = {e["id"]: e for e in json.loads(WorkDir(workdir).subjects_json.read_text())["subjects"]}
    methods = tuple(m for m in METHODS if refinement is not None or not m.endswith("_refined"))
    settings = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": _file_digest(checkpoint),
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
    folder = WorkDir(workdir).evaluation / "segmentation"
    records: dict[str, dict[str, Any]] = {}
    computed = 0
    for subject_id in tqdm(subject_ids, desc="segmenting subjects", unit="subject", disable=not progress):
        record_path = folder / "records" / f"{subject_id}.json"
        try:
            subject = _read_subject(workdir, subject_id, entries.get(subject_id, {}))
        except Exception as error:  # a broken subject fails its rows, not the run
            records[subject_id] = {"subject": subject_id, "error": f"{type(error).__name__}: {error}"}
            logger.warning("segmentation: cannot read %s: %s", subject_id, error)
            continue
        key = _settings_key({**settings, "subject": subject.digest})
        old = _read_record(record_path)
        if (
            old is not None
            and old.get("key") == key
            and not old.get("error")
            and (folder / "views" / f"{subject_id}.npz").is_file()
        ):
            records[subject_id] = old
            continue
        computed += 1
        try:
            record, views = _score_subject(subject, model, atlases, refinement, progress)
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
        records[subject_id] = json.loads(json.dumps(_json_safe(record)))  # as read back on a re-run

    rows = _subject_rows(records, methods)
    summary = _summary_rows(rows, methods)
    done = [r for r in records.values() if not r.get("error")]
    calibration = []
    for method in (m for m in methods if m in FUSED_METHODS):
        for measure in CALIBRATION_MEASURES:
            counts = _pooled(done, method, measure)
            if counts is not None:
                calibration.extend(calibration_rows(method, measure, counts))
    sources = {kind: sum(1 for r in done if r.get("source") == kind) for kind in ("original", "prepared")}
    files = {
        "subjects": folder / "subjects.csv",
        "summary": folder / "summary.csv",
        "calibration": folder / "calibration.csv",
        "json": folder / "segmentation.json",
    }
    _write_csv(files["subjects"], SUBJECT_COLUMNS, rows)
    _write_csv(files["summary"], SUMMARY_COLUMNS, summary)
    _write_csv(files["calibration"], CALIBRATION_COLUMNS, calibration)
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


def _array_digest(array: np.ndarray) -> str:
    from svfnet.workdir import array_digest

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


# ------------------------------------------------------------------------------------------ figures
# Label colours of the gallery (RGBA, filled at this opacity) and the true outlines' colour.
LABEL_COLOURS = {1: "#e41a1c", 2: "#4daf4a", 3: "#377eb8", 4: "#ffd92f"}
LABEL_ALPHA = 0.45
TRUTH_COLOUR = "#ffffff"


def reliability_figure(calibration: Sequence[Mapping[str, Any]], methods: Sequence[str], path: Path) -> bool:
    """The reliability plot: error rate per bin against the bin's mean value, for each fused method;
    left the uncertainty map (normalised entropy), right the probability of error (with the diagonal
    of a calibrated vote). False when there is nothing to draw."""
    from svfnet.evaluation_report import _new_figure, _save

    present = [m for m in methods if any(r["method"] == m for r in calibration)]
    if not present:
        return False
    figure = _new_figure(9.0, 3.8)
    axes = figure.subplots(1, len(CALIBRATION_MEASURES), squeeze=False)[0]
    styles = {
        "majority": ("#1f77b4", "-"),
        "weighted": ("#d62728", "-"),
        "majority_refined": ("#1f77b4", "--"),
        "weighted_refined": ("#d62728", "--"),
    }
    for axis, (measure, label) in zip(axes, CALIBRATION_MEASURES.items(), strict=True):
        for method in present:
            points = [
                (r["mean_value"], r["error_rate"], r["voxels"])
                for r in calibration
                if r["method"] == method and r["measure"] == measure and r["voxels"] >= PLOT_MIN_VOXELS
            ]
            if not points:
                continue
            x, y, n = (np.asarray(v, np.float64) for v in zip(*points, strict=True))
            colour, line = styles.get(method, ("#555555", "-"))
            axis.plot(x, y, line, color=colour, marker="o", markersize=3 + 0, label=METHOD_NAMES[method])
        axis.plot(
            [0, 1],
            [0, 1],
            ":",
            color="#888888",
            label="calibrated" if measure == "error_probability" else None,
        )
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel(label, fontsize=8)
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=8)
    axes[0].set_ylabel("error rate (fused label is not the true label)", fontsize=8)
    axes[-1].legend(fontsize=7, loc="upper left")
    _save(figure, path)
    return True


def _overlay(
    axis: Any,
    image: np.ndarray,
    labels: np.ndarray | None,
    truth: np.ndarray,
    uncertainty: np.ndarray | None,
    spacing,
    value_range,
) -> Any:
    from matplotlib.colors import ListedColormap

    sx, sy = spacing
    nx, ny = image.shape
    extent = (-0.5 * sx, (nx - 0.5) * sx, -0.5 * sy, (ny - 0.5) * sy)
    axis.imshow(
        image.T,
        origin="lower",
        cmap="gray",
        vmin=value_range[0],
        vmax=value_range[1],
        interpolation="nearest",
        extent=extent,
    )
    shown = None
    if labels is not None:
        colours = ["#00000000"] + [LABEL_COLOURS.get(v, "#ff00ff") for v in range(1, 5)]
        masked = np.ma.masked_equal(labels.T.astype(np.int16), 0)
        axis.imshow(
            masked,
            origin="lower",
            cmap=ListedColormap(colours),
            vmin=0,
            vmax=4,
            alpha=LABEL_ALPHA,
            interpolation="nearest",
            extent=extent,
        )
    if uncertainty is not None:
        shown = axis.imshow(
            np.ma.masked_less(uncertainty.T, 0.02),
            origin="lower",
            cmap="inferno",
            vmin=0,
            vmax=1,
            alpha=0.8,
            interpolation="nearest",
            extent=extent,
        )
    xs, ys = np.arange(nx) * sx, np.arange(ny) * sy
    for region in REGIONS:
        mask = truth == region
        if mask.any() and not mask.all():
            axis.contour(
                xs, ys, mask.T.astype(np.float32), levels=[0.5], colors=[TRUTH_COLOUR], linewidths=0.8
            )
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])
    return shown


def example_figure(
    views: Mapping[str, np.ndarray],
    subject: str,
    why: str,
    methods: Sequence[str],
    scores: Mapping[str, float],
    path: Path,
) -> None:
    """One subject: its image with the true outlines, then each method's labels and uncertainty
    (short-axis slice on top, long-axis cut below), in millimetres."""
    from svfnet.evaluation_report import _new_figure, _save

    spacing = np.asarray(views["spacing_mm"], np.float64)
    low, high = np.percentile(views["image_sa"], [0.5, 99.5])
    value_range = (float(low), float(high) if high > low else float(low) + 1.0)
    columns: list[tuple[str, str | None, str | None]] = [("image, true outlines", None, None)]
    for method in methods:
        if f"{method}_labels_sa" in views:
            dice = scores.get(method)
            columns.append(
                (
                    f"{METHOD_NAMES[method]}\nmean Dice {dice:.3f}"
                    if dice is not None
                    else METHOD_NAMES[method],
                    method,
                    None,
                )
            )
            columns.append((f"{METHOD_NAMES[method]}\nuncertainty", None, method))
    extent_sa = spacing[1] * views["image_sa"].shape[1]
    extent_la = spacing[2] * views["image_la"].shape[1]
    figure = _new_figure(2.0 * len(columns) + 0.6, 2.0 * (1.0 + extent_la / max(extent_sa, 1e-6)) + 0.7)
    axes = figure.subplots(
        2, len(columns), squeeze=False, gridspec_kw={"height_ratios": [extent_sa, max(extent_la, 1e-6)]}
    )
    heat = None
    for column, (title, labels_of, uncertainty_of) in enumerate(columns):
        for row, (view, plane) in enumerate(
            (("sa", (spacing[0], spacing[1])), ("la", (spacing[0], spacing[2])))
        ):
            shown = _overlay(
                axes[row, column],
                views[f"image_{view}"],
                views[f"{labels_of}_labels_{view}"] if labels_of else None,
                views[f"truth_{view}"],
                views[f"{uncertainty_of}_uncertainty_{view}"] if uncertainty_of else None,
                plane,
                value_range,
            )
            heat = shown if shown is not None else heat
        axes[0, column].set_title(title, fontsize=8)
    centre = [int(c) for c in views["centre"]]
    axes[0, 0].set_ylabel(f"short axis (slice k={centre[2]})", fontsize=8)
    axes[1, 0].set_ylabel(f"long axis (cut j={centre[1]})", fontsize=8)
    if heat is not None:
        figure.colorbar(heat, ax=axes[:, -1].tolist(), shrink=0.7, label="uncertainty")
    figure.suptitle(
        f"{subject}: {why}. Colours: LV blood pool red, LV myocardium green, RV blood pool blue, RV "
        "myocardium yellow; white: true outlines",
        fontsize=8,
    )
    _save(figure, path)


def gallery_subjects(evaluation: SegmentationEvaluation, method: str = "weighted") -> list[tuple[str, str]]:
    """The subjects the gallery shows and why: the best, the median and the worst by ``method``'s
    mean Dice over the regions (each once)."""
    per_subject: dict[str, list[float]] = {}
    for r in evaluation.rows:
        if r["method"] == method and r["status"] != "failed" and r.get("dice") is not None:
            per_subject.setdefault(r["subject"], []).append(float(r["dice"]))
    scores = {s: float(np.mean(v)) for s, v in per_subject.items()}
    if not scores:
        return []
    ordered = sorted(scores, key=lambda s: (scores[s], s))
    cases: dict[str, list[str]] = {}
    cases.setdefault(ordered[-1], []).append(f"best (mean Dice {scores[ordered[-1]]:.3f})")
    if len(ordered) > 2:
        middle = ordered[len(ordered) // 2]
        cases.setdefault(middle, []).append(f"typical (median mean Dice {scores[middle]:.3f})")
    cases.setdefault(ordered[0], []).append(f"worst (mean Dice {scores[ordered[0]]:.3f})")
    return [(s, "; ".join(why)) for s, why in cases.items()]


# ------------------------------------------------------------------------------------------ HTML
def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def report_section(evaluation: SegmentationEvaluation, figures: str | os.PathLike) -> str:
    """Draws the section's figures into ``figures`` and returns the section's HTML (for
    :func:`svfnet.evaluation_report.write_report`)."""
    from svfnet.evaluation_report import _e, _figure_html, _table

    figures = Path(figures)
    by_key = {(r["method"], r["name"], r["metric"]): r for r in evaluation.summary}
    methods = evaluation.methods
    parts = [
        "<h2>Segmentation of the test subjects (multi-atlas)</h2>",
        f"<p>Each of the {len(evaluation.subjects)} {_e(evaluation.subject_set)} subjects was segmented "
        "from the "
        f"{len(evaluation.atlases)} training subjects (the atlases) as <code>svfnet segment</code> does: "
        "its image "
        "aligned rigidly to the atlases' frame without its labels, every atlas registered to it with "
        "SVF-Net, "
        "the atlases' labels warped and fused by an equal vote (majority) or a vote weighted by the local "
        "correlation of each warped atlas with the image (weighted, the default). <i>Single atlas</i> is the "
        "mean over the atlases of each one's warped labels alone"
        + (
            "; <i>+ refinement</i>: each atlas's registration refined by LCC Log-Demons started from "
            "SVF-Net's "
            "SVF (<code>svfnet segment --refine</code>)"
            if any(m.endswith("_refined") for m in methods)
            else ""
        )
        + ". Scores against the subject's own labels, on its original grid.</p>",
    ]
    if evaluation.sources.get("prepared"):
        parts.append(
            f'<p class="note">{evaluation.sources["prepared"]} subject(s) had no source image on disk and '
            "were "
            "segmented from their prepared image, whose alignment used their labels: their scores flatter "
            "the "
            "method.</p>"
        )
    if evaluation.failed():
        parts.append(
            '<p class="note">Not segmented: '
            + _e("; ".join(f"{s}: {e}" for s, e in evaluation.failed().items()))
            + "</p>"
        )
    for metric, label in METRICS:
        header = ["method", *REGIONS.values()] + (["mean over regions"] if metric == "dice" else [])
        body = []
        for method in methods:
            cells = [METHOD_NAMES[method]]
            names = list(REGIONS.values()) + (["mean over regions"] if metric == "dice" else [])
            for name in names:
                row = by_key.get((method, name, metric))
                digits = 3 if metric == "dice" else 2
                cells.append(
                    "" if row is None else f"{_number(row['mean'], digits)} ± {_number(row['std'], digits)}"
                )
            body.append(cells)
        parts.append(f"<h3>{_e(label)}: mean ± standard deviation over the subjects</h3>")
        parts.append(_table(header, body))
    parts.append(
        "<p>For comparison on real data: the SVF-Net authors' multi-atlas entry to the ACDC challenge "
        "reported a "
        "Dice at end-diastole of "
        + ", ".join(f"{v:.3f} ({_e(k)})" for k, v in ACDC_REFERENCE.items())
        + ".</p>"
    )
    timing = [
        [METHOD_NAMES[m], _number(by_key[(m, "per subject", "seconds")]["median"], 1) + " s"]
        for m in methods
        if (m, "per subject", "seconds") in by_key and not m.startswith("single")
    ]
    if timing:
        parts.append("<h3>Time per subject (median)</h3>")
        parts.append(
            "<p>Reading, rigid alignment, registration of every atlas (and its refinement), fusion and "
            "resampling "
            "to the image's grid; scoring not included.</p>"
        )
        parts.append(_table(["method", "seconds"], timing))
    # calibration
    parts.append("<h3>Is the uncertainty right? (calibration)</h3>")
    path = figures / "segmentation_reliability.png"
    if reliability_figure(evaluation.calibration, methods, path):
        parts.append(
            _figure_html(
                path,
                f"figures/{path.name}",
                "reliability plot of the segmentation's uncertainty",
                "Error rate of the fused labels (every voxel of the subjects' images, pooled) per bin of "
                "ten: left, of the uncertainty map (normalised entropy of the fused vote); right, of the "
                "vote's probability that its label is wrong (1 − its largest probability), where a "
                f"calibrated vote lies on the diagonal. Bins with fewer than {PLOT_MIN_VOXELS} voxels are "
                "left out (calibration.csv has them).",
            )
        )
    body = []
    default = "weighted" if "weighted" in methods else methods[0]
    for row in (r for r in evaluation.calibration if r["method"] == default and r["measure"] == "entropy"):
        body.append(
            [
                f"[{row['low']:.1f}, {row['high']:.1f}{']' if row['high'] >= 1 else ')'}",
                row["voxels"],
                row["errors"],
                _number(row["error_rate"]),
            ]
        )
    if body:
        parts.append(f"<p>{_e(METHOD_NAMES[default])}: error rate per bin of the uncertainty map.</p>")
        parts.append(_table(["uncertainty", "voxels", "wrong", "error rate"], body))
    errors = [
        [METHOD_NAMES[m], _number(evaluation.calibration_error(m))]
        for m in methods
        if m in FUSED_METHODS and evaluation.calibration_error(m) is not None
    ]
    if errors:
        parts.append(
            "<p>Expected calibration error of the probability of error (the voxel-weighted mean distance of "
            "the right-hand curve from the diagonal; 0 for a calibrated vote). It counts every voxel of the "
            "images, most of them background that every atlas agrees on (the first bin), which keeps it "
            "small: the curves and the table above show the uncertain voxels.</p>"
        )
        parts.append(_table(["method", "expected calibration error"], errors))
    # gallery
    parts.append("<h3>Examples</h3>")
    shown = [m for m in ("weighted", "weighted_refined") if m in methods]
    example_html = []
    for number, (subject, why) in enumerate(gallery_subjects(evaluation), start=1):
        view_path = evaluation.folder / "views" / f"{subject}.npz"
        if not view_path.is_file():
            continue
        with np.load(view_path) as data:
            views = {k: data[k] for k in data.files}
        scores = {}
        for method in shown:
            values = [
                r["dice"]
                for r in evaluation.rows
                if r["subject"] == subject and r["method"] == method and r.get("dice") is not None
            ]
            scores[method] = float(np.mean(values)) if values else None
        path = figures / f"segmentation_example_{number}.png"
        example_figure(views, subject, why, shown, scores, path)
        example_html.append(
            _figure_html(
                path,
                f"figures/{path.name}",
                f"segmentation example {number}: {subject}",
                f"Example {number}, {subject}: {why}. The fused labels (colours) and the uncertainty map "
                "(heat, "
                "shown above 0.02) over the image, with the true outlines in white; top: short-axis slice, "
                "bottom: "
                "long-axis cut through the LV.",
            )
        )
    parts.append("".join(example_html) or "<p>No subject was segmented.</p>")
    parts.append(
        '<p>Files: <a href="segmentation/subjects.csv">segmentation/subjects.csv</a> (every subject, method '
        "and "
        'region), <a href="segmentation/summary.csv">segmentation/summary.csv</a>, '
        '<a href="segmentation/calibration.csv">segmentation/calibration.csv</a>, '
        '<a href="segmentation/segmentation.json">segmentation/segmentation.json</a>.</p>'
    )
    return "\n".join(parts)
