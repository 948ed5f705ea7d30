"""Scores of a segmentation against its labels: Dice and the 95% Hausdorff distance per region, and the
calibration of an uncertainty map (error rate per bin, expected calibration error). NumPy and SciPy on
arrays; tested on hand-built cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from svfnet.common.workdir import REGIONS
from svfnet.evaluation.metrics import dice, hausdorff

# Ten equal bins on [0, 1]; the last one is closed (holds 1.0).
CALIBRATION_EDGES = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))
HAUSDORFF_PERCENTILE = 95.0


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


def pooled(records: Sequence[Mapping[str, Any]], method: str, measure: str) -> dict[str, list[float]] | None:
    parts = [r["calibration"][method][measure] for r in records if method in r.get("calibration", {})]
    if not parts:
        return None
    return {
        key: np.sum([p[key] for p in parts], axis=0).tolist() for key in ("voxels", "errors", "sum_value")
    }
