"""The figures of the evaluation's report (:mod:`svfnet.evaluation.report`), drawn with matplotlib's
Agg backend: the box plots of each metric and the example pairs with their myocardium outlines, and
the figure helpers the segmentation's section of the report draws with too."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path
from svfnet.evaluation.tables import METHOD_NAMES, Metric, finite_values, group_rows

__all__ = ["boxplot_figure", "example_figure", "new_figure", "save_figure"]

# One colour per method, in every figure.
METHOD_COLOURS = {
    "svfnet": "#1f77b4",
    "svfnet_refined": "#17becf",
    "lcc_demons": "#ff7f0e",
    "sitk_demons": "#2ca02c",
    "ants_syn": "#9467bd",
    "identity": "#8c8c8c",
}
# Outline colours of the examples: the target (fixed) and the registered (warped moving) myocardium.
TARGET_COLOUR, WARPED_COLOUR = "#39ff14", "#ff2a2a"
# Label values drawn as "myocardium" in the examples (LV and RV myocardium).
MYOCARDIUM_LABELS = (2, 4)
# Label values that locate the left ventricle (where the example slices are cut).
LV_LABELS = (1, 2)
DPI = 110


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure of ``width`` × ``height`` inches at the report's resolution."""
    from matplotlib.figure import Figure

    # a bare Figure renders with Agg and touches no global pyplot state
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(figure: Any, path: Path) -> None:
    """Writes ``figure`` as a PNG at ``path``, atomically."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)


def boxplot_figure(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str], metric: Metric, path: Path
) -> bool:
    """Box plots of one metric: a panel per region, the methods side by side; False when no data.

    Args:
        rows: rows of ``pairs.csv``.
        methods: method keys, in display order.
        metric: the metric.
        path: the PNG to write.
    """
    regions: dict[int, str] = {}
    for row in rows:
        regions.setdefault(int(row["region"]), str(row["name"]))
    groups = group_rows(rows)
    panels = []
    for region, name in regions.items():
        data = [
            np.asarray(list(finite_values(groups, method, region, metric.key).values()), dtype=np.float64)
            for method in methods
        ]
        if any(d.size for d in data):
            panels.append((name, data))
    if not panels:
        return False
    figure = new_figure(max(3.0, (1.0 + 0.55 * len(methods)) * len(panels)), 3.4)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (name, data) in zip(axes, panels, strict=True):
        positions = [p for p, d in enumerate(data, start=1) if d.size]
        boxes = axis.boxplot(
            [d for d in data if d.size],
            positions=positions,
            widths=0.6,
            patch_artist=True,
            medianprops={"color": "black"},
            flierprops={"markersize": 3},
        )
        present = [m for m, d in zip(methods, data, strict=True) if d.size]
        for patch, method in zip(boxes["boxes"], present, strict=True):
            patch.set_facecolor(METHOD_COLOURS.get(method, "#bbbbbb"))
            patch.set_alpha(0.85)
        axis.set_xticks(
            range(1, len(methods) + 1),
            [METHOD_NAMES[m] for m in methods],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        axis.set_xlim(0.4, len(methods) + 0.6)
        axis.set_title(name, fontsize=9)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(
        f"{metric.label} ({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=8
    )
    save_figure(figure, path)
    return True


def _lv_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Voxel nearest the centroid of the left ventricle (the grid's centre without one)."""
    mask = np.isin(labels, LV_LABELS)
    if not mask.any():
        return tuple(n // 2 for n in labels.shape)  # type: ignore[return-value]
    return tuple(int(round(float(c.mean()))) for c in np.nonzero(mask))  # type: ignore[return-value]


def _myocardium(labels: np.ndarray) -> np.ndarray:
    return np.isin(np.asarray(labels), MYOCARDIUM_LABELS)


def _myocardium_dice(warped_labels: np.ndarray, fixed_labels: np.ndarray) -> float:
    a, b = _myocardium(warped_labels), _myocardium(fixed_labels)
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else math.nan


def draw_slice(
    axis: Any, image: np.ndarray, spacing: tuple[float, float], value_range: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Shows a 2D slice ``image[x, y]`` in grey, in mm (x right, y up, voxel centres at ``n · spacing``);
    returns the extent, for what is drawn over it (every figure of the report, the segmentation's too)."""
    sx, sy = spacing
    nx, ny = image.shape
    extent = (-0.5 * sx, (nx - 0.5) * sx, -0.5 * sy, (ny - 0.5) * sy)
    axis.imshow(
        image.T, origin="lower", cmap="gray", vmin=value_range[0], vmax=value_range[1],
        interpolation="nearest", extent=extent,
    )  # fmt: skip
    return extent


def _draw_view(
    axis: Any,
    image: np.ndarray,
    outlines: Sequence[tuple[np.ndarray, str]],
    spacing: tuple[float, float],
    value_range: tuple[float, float],
) -> None:
    """A 2D slice ``image[x, y]`` in mm (x right, y up) with mask outlines ``(mask[x, y], colour)``."""
    sx, sy = spacing
    nx, ny = image.shape
    draw_slice(axis, image, spacing, value_range)
    xs, ys = np.arange(nx) * sx, np.arange(ny) * sy
    for mask, colour in outlines:
        if mask.any() and not mask.all():  # a contour needs both sides of the level
            axis.contour(xs, ys, mask.T.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])


def _example_columns(
    case: Mapping[str, Any],
    methods: Sequence[str],
    fixed_image: np.ndarray,
    fixed_labels: np.ndarray,
    target: np.ndarray,
) -> list[tuple[str, np.ndarray, np.ndarray, str, bool]]:
    """The columns of an example: ``(title, image, myocardium mask, its colour, with the target outline)``
    for the moving, the fixed and each method's registered image."""
    columns = [
        (
            f"moving {case['moving']}",
            np.asarray(case["moving_image"]),
            _myocardium(case["moving_labels"]),
            WARPED_COLOUR,
            False,
        ),
        (f"fixed {case['fixed']}", fixed_image, target, TARGET_COLOUR, False),
    ]
    for method in methods:
        if method not in case["warped"]:
            continue
        image, labels = case["warped"][method]
        dice = _myocardium_dice(labels, fixed_labels)
        title = (
            f"{METHOD_NAMES[method]}\nmyocardium Dice {dice:.2f}"
            if math.isfinite(dice)
            else METHOD_NAMES[method]
        )
        columns.append((title, np.asarray(image), _myocardium(labels), WARPED_COLOUR, True))
    return columns


def example_figure(case: Mapping[str, Any], methods: Sequence[str], path: Path) -> None:
    """One example pair: moving, fixed and each method's result, short-axis (top) and long-axis (bottom).

    The short-axis view is the slice ``k`` through the fixed left ventricle's centre; the long-axis
    view the ``(i, k)`` plane through it, drawn in millimetres (thick slices look thick).

    Args:
        case: a gallery entry of :func:`svfnet.evaluation.evaluate.run_evaluation` (moving/fixed ids, images,
            labels, ``spacing_mm``, ``warped``: method → (image, labels), ``why``).
        methods: method keys, in display order.
        path: the PNG to write.
    """
    from matplotlib.lines import Line2D

    spacing = tuple(float(s) for s in case["spacing_mm"])
    fixed_image, fixed_labels = np.asarray(case["fixed_image"]), np.asarray(case["fixed_labels"])
    centre_i, centre_j, centre_k = _lv_centre(fixed_labels)
    low, high = np.percentile(fixed_image, [0.5, 99.5])
    value_range = (float(low), float(high) if high > low else float(low) + 1.0)
    target = _myocardium(fixed_labels)
    columns = _example_columns(case, methods, fixed_image, fixed_labels, target)

    extent_sa = spacing[1] * fixed_image.shape[1]
    extent_la = spacing[2] * fixed_image.shape[2]
    width = 1.9 * len(columns)
    height = 1.9 * (1.0 + extent_la / max(extent_sa, 1e-6)) + 0.9
    figure = new_figure(width, height)
    axes = figure.subplots(
        2, len(columns), squeeze=False, gridspec_kw={"height_ratios": [extent_sa, max(extent_la, 1e-6)]}
    )
    for column, (title, image, mask, colour, with_target) in enumerate(columns):
        short = [(target[:, :, centre_k], TARGET_COLOUR)] if with_target else []
        long = [(target[:, centre_j, :], TARGET_COLOUR)] if with_target else []
        _draw_view(
            axes[0, column],
            image[:, :, centre_k],
            [*short, (mask[:, :, centre_k], colour)],
            (spacing[0], spacing[1]),
            value_range,
        )
        _draw_view(
            axes[1, column],
            image[:, centre_j, :],
            [*long, (mask[:, centre_j, :], colour)],
            (spacing[0], spacing[2]),
            value_range,
        )
        axes[0, column].set_title(title, fontsize=8)
    axes[0, 0].set_ylabel(f"short axis (slice k={centre_k})", fontsize=8)
    axes[1, 0].set_ylabel(f"long axis (cut j={centre_j})", fontsize=8)
    figure.suptitle(f"{case['moving']} to {case['fixed']}: " + "; ".join(case["why"]), fontsize=9)
    figure.legend(
        handles=[
            Line2D([0], [0], color=TARGET_COLOUR, lw=2, label="target myocardium (fixed)"),
            Line2D([0], [0], color=WARPED_COLOUR, lw=2, label="moving / registered myocardium"),
        ],
        loc="outside lower center",
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    save_figure(figure, path)
