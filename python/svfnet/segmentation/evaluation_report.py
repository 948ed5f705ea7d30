"""The segmentation section of the evaluation report (``svfnet evaluate --segmentation``): the Dice and
Hausdorff tables, the reliability plot of the uncertainty, and a gallery of segmentations with their
uncertainty overlays, drawn from a :class:`svfnet.segmentation.evaluation.SegmentationEvaluation`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.workdir import REGIONS
from svfnet.evaluation.report import figure_html, html_table, html_text
from svfnet.evaluation.report_figures import draw_slice, new_figure, save_figure
from svfnet.segmentation.evaluation import (
    ACDC_REFERENCE,
    CALIBRATION_MEASURES,
    FUSED_METHODS,
    METHOD_NAMES,
    METRICS,
    PLOT_MIN_VOXELS,
    SegmentationEvaluation,
)

# ------------------------------------------------------------------------------------------ figures
# Label colours of the gallery (RGBA, filled at this opacity) and the true outlines' colour.
LABEL_COLOURS = {1: "#e41a1c", 2: "#4daf4a", 3: "#377eb8", 4: "#ffd92f"}


LABEL_ALPHA = 0.45


TRUTH_COLOUR = "#ffffff"


def reliability_figure(calibration: Sequence[Mapping[str, Any]], methods: Sequence[str], path: Path) -> bool:
    """The reliability plot: error rate per bin against the bin's mean value, for each fused method;
    left the uncertainty map (normalised entropy), right the probability of error (with the diagonal
    of a calibrated vote). False when there is nothing to draw."""
    present = [m for m in methods if any(r["method"] == m for r in calibration)]
    if not present:
        return False
    figure = new_figure(9.0, 3.8)
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
    save_figure(figure, path)
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
    extent = draw_slice(axis, image, spacing, value_range)
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
    figure = new_figure(2.0 * len(columns) + 0.6, 2.0 * (1.0 + extent_la / max(extent_sa, 1e-6)) + 0.7)
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
    save_figure(figure, path)


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
    :func:`svfnet.evaluation.report.write_report`)."""
    figures = Path(figures)
    by_key = {(r["method"], r["name"], r["metric"]): r for r in evaluation.summary}
    methods = evaluation.methods
    parts = _introduction(evaluation, methods)
    parts += _score_tables(by_key, methods)
    parts += _calibration(evaluation, figures, methods)
    parts += _gallery(evaluation, figures, methods)
    parts.append(
        '<p>Files: <a href="segmentation/subjects.csv">segmentation/subjects.csv</a> (every subject, method '
        "and "
        'region), <a href="segmentation/summary.csv">segmentation/summary.csv</a>, '
        '<a href="segmentation/calibration.csv">segmentation/calibration.csv</a>, '
        '<a href="segmentation/segmentation.json">segmentation/segmentation.json</a>.</p>'
    )
    return "\n".join(parts)


def _introduction(evaluation: SegmentationEvaluation, methods: Sequence[str]) -> list[str]:
    """The section's heading and what was done, with notes on subjects segmented from their prepared
    image or not segmented."""
    parts = [
        "<h2>Segmentation of the test subjects (multi-atlas)</h2>",
        f"<p>Each of the {len(evaluation.subjects)} {html_text(evaluation.subject_set)} subjects was segmented "
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
            + html_text("; ".join(f"{s}: {e}" for s, e in evaluation.failed().items()))
            + "</p>"
        )
    return parts


def _score_tables(
    by_key: Mapping[tuple[str, str, str], Mapping[str, Any]], methods: Sequence[str]
) -> list[str]:
    """A table of each metric (mean ± standard deviation per method and region), the published ACDC
    reference and the time per subject."""
    parts = []
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
        parts.append(f"<h3>{html_text(label)}: mean ± standard deviation over the subjects</h3>")
        parts.append(html_table(header, body))
    parts.append(
        "<p>For comparison on real data: the SVF-Net authors' multi-atlas entry to the ACDC challenge "
        "reported a "
        "Dice at end-diastole of "
        + ", ".join(f"{v:.3f} ({html_text(k)})" for k, v in ACDC_REFERENCE.items())
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
        parts.append(html_table(["method", "seconds"], timing))
    return parts


def _calibration(evaluation: SegmentationEvaluation, figures: Path, methods: Sequence[str]) -> list[str]:
    """The reliability figure, the default method's error rate per bin of uncertainty and each fused
    method's expected calibration error."""
    parts = []
    # calibration
    parts.append("<h3>Is the uncertainty right? (calibration)</h3>")
    path = figures / "segmentation_reliability.png"
    if reliability_figure(evaluation.calibration, methods, path):
        parts.append(
            figure_html(
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
        parts.append(f"<p>{html_text(METHOD_NAMES[default])}: error rate per bin of the uncertainty map.</p>")
        parts.append(html_table(["uncertainty", "voxels", "wrong", "error rate"], body))
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
        parts.append(html_table(["method", "expected calibration error"], errors))
    return parts


def _gallery(evaluation: SegmentationEvaluation, figures: Path, methods: Sequence[str]) -> list[str]:
    """The examples: each gallery subject's figure with its caption."""
    parts = []
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
            figure_html(
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
    return parts
