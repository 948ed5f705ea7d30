"""The evaluation's tables: the methods and metrics it reports, and the rows of pairs.csv, summary.csv,
statistics.csv and outliers.csv built from the records (Welch's t-test, better/equal/worse fractions,
outlier kinds), plus the headline lines. Pure functions of the rows: :mod:`svfnet.evaluation.evaluate`
writes them and :mod:`svfnet.evaluation.report` draws them.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path
from svfnet.common.workdir import REGIONS
from svfnet.evaluation.metrics import METRIC_KEYS
from svfnet.evaluation.records import Records

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


# Region 0 of evaluate_pair: the whole grid (LCC, log-Jacobian spread and folding only).
WHOLE_GRID = 0


# An outlier: a region's Dice below the identity's by more than this ...
DICE_MARGIN = 0.05


# ... or more than this fraction of the grid folded (det J <= 0).
FOLDING_LIMIT = 0.01


# Two values closer than this count as a tie in the better/worse fractions.
TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Metric:
    """One column of ``pairs.csv`` as the tables, figures and sentences show it.

    Attributes:
        key: the column (a key of :func:`svfnet.evaluation.metrics.evaluate_pair`'s rows).
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

assert {m.key for m in METRICS} == set(METRIC_KEYS), (
    "METRICS must cover svfnet.evaluation.metrics.METRIC_KEYS"
)


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


# ------------------------------------------------------------------------------------------ tables
def as_float(value: Any) -> float:
    """``value`` as a float; NaN for empty or non-numeric cells."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def pair_rows(
    records: Records, pairs: Sequence[tuple[str, str]], methods: Sequence[str], regions: Mapping[int, str]
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


def format_cell(value: Any, missing: str = "nan") -> Any:
    """A CSV cell: floats in full precision, a non-finite float or None as ``missing``."""
    if isinstance(value, float | np.floating):
        return missing if not math.isfinite(value) else repr(float(value))
    return missing if value is None and missing != "nan" else value


def write_csv(
    path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]], missing: str = "nan"
) -> None:
    """Writes ``rows`` atomically; ``missing`` stands for a non-finite value (the registration tables
    write "nan", the segmentation's an empty cell)."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: format_cell(row.get(key, ""), missing) for key in columns})


def describe(values: Sequence[float]) -> dict[str, float]:
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


def region_names(rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
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


def timings(rows: Iterable[Mapping[str, Any]], method: str) -> list[float]:
    """Seconds per registration of ``method`` (one per pair that did not fail)."""
    seen: dict[tuple[str, str], float] = {}
    for row in rows:
        if row["method"] == method and not row["error"] and math.isfinite(as_float(row["seconds"])):
            seen[(row["moving"], row["fixed"])] = as_float(row["seconds"])
    return list(seen.values())


def summary_rows(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """``summary.csv``: descriptive statistics per method, region and metric, then the timings."""
    out = []
    regions = region_names(rows)
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
                            **describe(values),
                        }
                    )
        seconds = timings(rows, method)
        if seconds:
            out.append(
                {
                    "method": method,
                    "region": "",
                    "name": "per registration",
                    "metric": "seconds",
                    **describe(seconds),
                }
            )
    return out


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
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
    regions = region_names(rows)
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
                t_value, p_value = welch_test(ours_common, theirs_common)
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
        out += _score_outliers(row, base, identity_dice, dice_margin, folding_limit)
    order = {kind: rank for rank, kind in enumerate(OUTLIER_KINDS)}
    return sorted(
        out, key=lambda r: (order[r["kind"]], r["moving"], r["fixed"], r["method"], str(r["region"]))
    )


def _score_outliers(
    row: Mapping[str, Any],
    base: Mapping[str, Any],
    identity_dice: Mapping[tuple[str, str, int], float],
    dice_margin: float,
    folding_limit: float,
) -> list[dict[str, Any]]:
    """The ``below identity`` and ``folding`` outliers of one scored row (``base``: its pair, method
    and region)."""
    found: list[dict[str, Any]] = []
    dice = as_float(row["dice"])
    reference = identity_dice.get((row["moving"], row["fixed"], int(row["region"])), math.nan)
    if (
        row["method"] != "identity"
        and math.isfinite(dice)
        and math.isfinite(reference)
        and dice < reference - dice_margin
    ):
        found.append(
            {
                **base,
                "kind": "below identity",
                "value": dice,
                "detail": f"Dice {dice:.3f} against {reference:.3f} without registration",
            }
        )
    folding = as_float(row["folding_fraction"])
    if int(row["region"]) == WHOLE_GRID and math.isfinite(folding) and folding > folding_limit:
        found.append(
            {
                **base,
                "kind": "folding",
                "value": folding,
                "detail": f"{100 * folding:.2f}% of the grid folds (limit {100 * folding_limit:g}%)",
            }
        )
    return found


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
