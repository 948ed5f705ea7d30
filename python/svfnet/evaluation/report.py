"""The evaluation's report: one HTML page and its PNG figures (``WORKDIR/evaluation/``).

:func:`write_report` draws, with matplotlib's Agg backend (no display needed):

- ``figures/boxplot_<metric>.png``: one box plot per metric, one panel per region, the methods
  side by side (the kind of the paper's Figure 3);
- ``figures/example_<n>.png``: example pairs (the best and worst of each method, SVF-Net's typical
  one): moving, fixed and each method's registered image, with the registered (red) and target
  (green) myocardium outlines, in a short-axis slice and a long-axis cut (the paper's Figure 4);

and writes ``report.html``: the headline numbers, the statistics in plain sentences, the timing
table, the figures, a summary table, the outliers and the settings. The page is self-contained:
its figures are inlined (base64 PNG), no script, no external style or font, so it can be mailed or
archived alone; the same PNGs lie beside it in ``figures/`` for slides and READMEs.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svfnet.common.atomic import atomic_path
from svfnet.evaluation.report_figures import boxplot_figure, example_figure
from svfnet.evaluation.tables import (
    METHOD_NAMES,
    METRICS,
    WHOLE_GRID,
    absent_regions,
    as_float,
    seconds_text,
)

__all__ = [
    "ReportInputs",
    "statistics_sentences",
    "statistics_table",
    "write_report",
]

# Metrics the plain-words sentences speak about, per region and over the whole grid (the tables and
# statistics.csv have them all).
SENTENCE_REGION_METRICS = ("dice", "hausdorff95_mm")
SENTENCE_GRID_METRICS = ("log_jacobian_var", "folding_fraction")
# Outlier rows shown in the page (all are in outliers.csv).
OUTLIERS_SHOWN = 200

# "SVF-Net had a <phrase> than <baseline>": what being better means, per metric.
BETTER_PHRASES = {
    "dice": "higher Dice (better overlap)",
    "hausdorff95_mm": "smaller outline distance (Hausdorff 95%)",
    "hausdorff_mm": "smaller largest outline distance (Hausdorff)",
    "lcc": "higher local correlation (images more alike)",
    "log_jacobian_var": "smoother deformation (lower log-Jacobian variance)",
    "log_jacobian_normvar": "smoother deformation (lower normalised log-Jacobian variance)",
    "folding_fraction": "smaller share of folded tissue",
}


@dataclass(frozen=True)
class ReportInputs:
    """What the report shows (built by :func:`svfnet.evaluation.evaluate.run_evaluation`)."""

    workdir: str
    checkpoint: str
    subject_set: str
    subjects: tuple[str, ...]
    pair_count: int
    methods: tuple[str, ...]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    statistics: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    gallery: list[dict[str, Any]]
    headline: tuple[str, ...]
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_sources: dict[str, str] = field(default_factory=dict)  # where a method's settings came from
    failed: int = 0
    training: str = ""  # how the SVF-Net model was trained (TrainConfig.summary), where its checkpoint says
    # sections drawn by other stages (evaluate --segmentation: svfnet.segmentation.evaluation_report), each
    # called with the figures folder and returning its HTML: the report needs no import of theirs
    sections: tuple[Callable[[Path], str], ...] = ()


# ------------------------------------------------------------------------------------------ words
def _value_text(metric_key: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if metric_key in ("dice", "lcc"):
        return f"{value:.3f}"
    if metric_key.endswith("_mm"):
        return f"{value:.2f} mm"
    if metric_key == "folding_fraction":
        return f"{100 * value:.2f}%"
    return f"{value:.3g}"


def _percent(fraction: float) -> str:
    return "n/a" if not math.isfinite(fraction) else f"{100 * fraction:.0f}%"


def _p_text(p_value: float) -> str:
    if not math.isfinite(p_value):
        return "Welch's t-test cannot be computed here (too few pairs, or no variation)"
    if p_value < 0.001:
        return "Welch's t-test p < 0.001: very unlikely to be chance"
    if p_value < 0.05:
        return f"Welch's t-test p = {p_value:.3f}: unlikely to be chance"
    return f"Welch's t-test p = {p_value:.2f}: this difference could be chance"


def _sentence(row: Mapping[str, Any], where: str) -> str:
    metric, name = row["metric"], METHOD_NAMES.get(row["baseline"], row["baseline"])
    method = METHOD_NAMES.get(row.get("method", "svfnet"), row.get("method", "svfnet"))
    label = next(m.label for m in METRICS if m.key == metric)
    ours, theirs = (
        _value_text(metric, as_float(row["svfnet_mean"])),
        _value_text(metric, as_float(row["baseline_mean"])),
    )
    tied = as_float(row["tied"])
    if tied >= 1.0:
        return (
            f"{where}, {method} and {name} gave the same {label} in all {row['pairs']} pairs "
            f"(on average {ours})."
        )
    return (
        f"{where}, {method} had a {BETTER_PHRASES[metric]} than {name} in "
        f"{_percent(as_float(row['svfnet_better']))} of the {row['pairs']} pairs, {name} in "
        f"{_percent(as_float(row['svfnet_worse']))}"
        + (f", neither (equal) in {_percent(tied)}" if tied > 0 else "")
        + f"; on average {ours} against {theirs} ({_p_text(as_float(row['p_value']))})."
    )


def statistics_sentences(
    statistics: Sequence[Mapping[str, Any]],
) -> list[tuple[tuple[str, str], list[str]]]:
    """The main statistics in plain sentences, per compared pair of methods:
    ``[((method, baseline), sentences)]`` (method: SVF-Net, or SVF-Net + refinement).

    Per region, Dice and the outline distance (Hausdorff 95%), e.g. "For the LV myocardium, SVF-Net
    had a higher Dice (better overlap) than LCC Log-Demons in 82% of the 1369 pairs, LCC Log-Demons in
    18%; on average 0.812 against 0.781 (Welch's t-test p = 0.003: unlikely to be chance)."; then,
    against the other registration methods, the smoothness and folding over the whole grid. Every
    region and metric is in :func:`statistics_table` and ``statistics.csv``.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for row in statistics:
        if not row["pairs"]:
            continue
        region, metric = int(row["region"]), row["metric"]
        pair = (row.get("method", "svfnet"), row["baseline"])
        if region != WHOLE_GRID and metric in SENTENCE_REGION_METRICS:
            groups.setdefault(pair, []).append(_sentence(row, f"For the {row['name']}"))
        elif region == WHOLE_GRID and metric in SENTENCE_GRID_METRICS and row["baseline"] != "identity":
            groups.setdefault(pair, []).append(_sentence(row, "Over the whole image"))
    return list(groups.items())


def statistics_table(
    statistics: Sequence[Mapping[str, Any]], baseline: str, method: str = "svfnet"
) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per region and metric, "better / equal / worse (p)" of ``method`` (SVF-Net by
    default) vs ``baseline``."""
    chosen = [r for r in statistics if r["baseline"] == baseline and r.get("method", "svfnet") == method]
    metrics = [m for m in METRICS if any(r["metric"] == m.key for r in chosen)]
    by_key = {(r["name"], r["metric"]): r for r in chosen}
    regions = list(dict.fromkeys(r["name"] for r in chosen))
    rows = []
    for region in regions:
        cells = [region]
        for metric in metrics:
            row = by_key.get((region, metric.key))
            if row is None or not row["pairs"]:
                cells.append("")
                continue
            p_value = as_float(row["p_value"])
            p_text = (
                "p n/a"
                if not math.isfinite(p_value)
                else ("p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}")
            )
            cells.append(
                f"{_percent(as_float(row['svfnet_better']))} / {_percent(as_float(row['tied']))} / "
                f"{_percent(as_float(row['svfnet_worse']))} ({p_text})"
            )
        rows.append(cells)
    return ["region", *(m.label for m in metrics)], rows


# ------------------------------------------------------------------------------------------ HTML
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
.meta { color: #555; font-size: 0.9em; }
.note { background: #fff8e1; padding: 0.5em 0.8em; border-left: 4px solid #f0b400; }
pre.headline { background: #f6f8fa; padding: 0.8em; font-size: 0.95em; }
"""


def html_text(text: Any) -> str:
    return html.escape(str(text), quote=True)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1) -> str:
    cells = [
        "<table><tr>"
        + "".join(
            f'<th class="text">{html_text(h)}</th>' if i < text_columns else f"<th>{html_text(h)}</th>"
            for i, h in enumerate(header)
        )
        + "</tr>"
    ]
    for row in rows:
        cells.append(
            "<tr>"
            + "".join(
                f'<td class="text">{html_text(v)}</td>' if i < text_columns else f"<td>{html_text(v)}</td>"
                for i, v in enumerate(row)
            )
            + "</tr>"
        )
    return "\n".join(cells) + "</table>"


def figure_html(path: Path, relative: str, alt: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html_text(alt)}">'
        f'<figcaption>{html_text(caption)} <a href="{html_text(relative)}">{html_text(relative)}</a></figcaption></figure>'
    )


def _timing_table(inputs: ReportInputs) -> str:
    by_method = {row["method"]: row for row in inputs.summary if row["metric"] == "seconds"}
    reference = by_method.get("svfnet", {}).get("median")
    body = []
    for method in inputs.methods:
        row = by_method.get(method)
        if row is None:
            continue
        threads = sorted(
            {str(r["threads"]) for r in inputs.rows if r["method"] == method and r["threads"] != ""}
        )
        ratio = f"{row['median'] / reference:.1f}×" if reference and method != "identity" else ""
        body.append(
            [
                METHOD_NAMES[method],
                row["n"],
                seconds_text(row["median"]),
                seconds_text(row["mean"]),
                f"{seconds_text(row['q1'])} to {seconds_text(row['q3'])}",
                ", ".join(threads) or "-",
                ratio,
            ]
        )
    if not body:
        return "<p>No timings (no pair was registered).</p>"
    return html_table(
        ["method", "pairs", "median", "mean", "middle half", "threads", "time / SVF-Net's"], body
    )


def _summary_table(inputs: ReportInputs) -> str:
    by_key = {(r["method"], r["name"], r["metric"]): r for r in inputs.summary}
    regions = list(dict.fromkeys(r["name"] for r in inputs.summary if r["metric"] != "seconds"))
    body = []
    for region in regions:
        for metric in METRICS:
            cells = []
            for method in inputs.methods:
                row = by_key.get((method, region, metric.key))
                cells.append(
                    ""
                    if row is None
                    else (
                        f"{_value_text(metric.key, row['median'])} "
                        f"[{_value_text(metric.key, row['q1'])}, {_value_text(metric.key, row['q3'])}]"
                    )
                )
            if any(cells):
                body.append([region, metric.label, *cells])
    return html_table(["region", "metric", *(METHOD_NAMES[m] for m in inputs.methods)], body, text_columns=2)


def _outlier_section(inputs: ReportInputs) -> str:
    if not inputs.outliers:
        return (
            "<p>No outliers: no method failed, lost a region, fell below the identity's Dice or folded.</p>"
        )
    counts: dict[str, int] = {}
    for row in inputs.outliers:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    parts = [
        f"<p>{html_text(', '.join(f'{count} {kind}' for kind, count in counts.items()))}. Kinds: "
        "<b>failed</b>: the method raised an error on the pair (the pair's rows are marked failed); "
        "<b>lost</b>: a region present in both images vanished after registration; "
        "<b>below identity</b>: Dice lower than without registration by more than 0.05; "
        "<b>folding</b>: more than 1% of the grid folds; "
        "<b>input</b>: a label map lacks a region (not a method failure: that region is left out of the "
        "statistics for the pair).</p>"
    ]
    shown = inputs.outliers[:OUTLIERS_SHOWN]
    parts.append(
        html_table(
            ["moving", "fixed", "method", "region", "kind", "detail"],
            [
                [
                    r["moving"],
                    r["fixed"],
                    METHOD_NAMES.get(r["method"], r["method"]),
                    r["name"],
                    r["kind"],
                    r["detail"],
                ]
                for r in shown
            ],
            text_columns=6,
        )
    )
    if len(inputs.outliers) > len(shown):
        parts.append(f"<p>... and {len(inputs.outliers) - len(shown)} more in outliers.csv.</p>")
    return "\n".join(parts)


def _statistics_section(inputs: ReportInputs) -> str:
    if "svfnet" not in inputs.methods:
        return "<p>SVF-Net was not evaluated: no comparison.</p>"
    groups = statistics_sentences(inputs.statistics)
    if not groups:
        return "<p>Not enough results for a comparison.</p>"
    parts = [
        "<p>Each sentence compares SVF-Net with another method on the same pairs, for one region of the "
        "heart. <i>Better</i> means higher for overlap (Dice) and image similarity (local correlation), "
        "lower for outline distances (Hausdorff, mm), for the spread of the local volume change "
        "(log-Jacobian variance: lower is smoother, more plausible tissue motion) and for folding (which "
        "real tissue cannot do). "
        "The p-value of Welch's t-test says how likely a difference of the averages this large would be "
        "if both methods were equally good; below 0.05 it is called significant.</p>",
        '<p class="note">The pairs share subjects (every subject is moving and fixed in many pairs), so '
        "they are not independent: the p-values are optimistic and are a guide rather than proof. The "
        "percentages of pairs describe what happened without that assumption.</p>",
    ]
    for (method, baseline), sentences in groups:
        name, ours = METHOD_NAMES.get(baseline, baseline), METHOD_NAMES.get(method, method)
        parts.append(
            f"<h3>{html_text(ours)} against {html_text(name)}</h3><ul>"
            + "".join(f"<li>{html_text(s)}</li>" for s in sentences)
            + "</ul>"
        )
        header, rows = statistics_table(inputs.statistics, baseline, method)
        parts.append(
            f"<p>Every region and measure: share of the pairs where {html_text(ours)} was better / equal / worse "
            f"than {html_text(name)} (Welch's t-test p-value).</p>"
        )
        parts.append(html_table(header, rows, text_columns=len(header)))
    return "\n".join(parts)


def _settings_section(inputs: ReportInputs) -> str:
    rows = [
        [
            METHOD_NAMES.get(method, method),
            ", ".join(f"{k} = {v}" for k, v in sorted(params.items()))
            + (f" ({inputs.method_sources[method]})" if method in inputs.method_sources else ""),
        ]
        for method, params in inputs.method_params.items()
    ]
    if inputs.checkpoint:
        trained = f"; trained with {inputs.training}" if inputs.training else ""
        rows.insert(0, ["SVF-Net", f"checkpoint {inputs.checkpoint}{trained}"])
    return html_table(["method", "settings"], rows, text_columns=2) if rows else ""


def write_report(folder: str | Path, inputs: ReportInputs) -> Path:
    """Draws the figures into ``folder/figures`` and writes ``folder/report.html``; returns its path."""
    folder = Path(folder)
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    box_html = _boxplots_html(inputs, figures)
    example_html = _examples_html(inputs, figures)
    segmentation_html = "".join(section(figures) for section in inputs.sections)
    page = _page(inputs, box_html, example_html, segmentation_html)
    path = folder / "report.html"
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path


def _boxplots_html(inputs: ReportInputs, figures: Path) -> list[str]:
    """Draws a box plot per metric into ``figures``; their HTML figures."""
    box_html = []
    for metric in METRICS:
        path = figures / f"boxplot_{metric.key}.png"
        if boxplot_figure(inputs.rows, inputs.methods, metric, path):
            box_html.append(
                figure_html(
                    path,
                    f"figures/{path.name}",
                    f"box plots of {metric.label}",
                    f"{metric.label}: {metric.meaning}; "
                    f"{'higher' if metric.higher_is_better else 'lower'} is better. "
                    "Boxes span the middle half of the pairs, the line is the median, whiskers reach 1.5 box "
                    "lengths, dots are the pairs beyond.",
                )
            )
    return box_html


def _examples_html(inputs: ReportInputs, figures: Path) -> list[str]:
    """Draws the gallery's example pairs into ``figures``; their HTML figures."""
    example_html = []
    for number, case in enumerate(inputs.gallery, start=1):
        path = figures / f"example_{number}.png"
        example_figure(case, inputs.methods, path)
        example_html.append(
            figure_html(
                path,
                f"figures/{path.name}",
                f"example {number}: {case['moving']} to {case['fixed']}",
                f"Example {number}, {case['moving']} (moving) to {case['fixed']} (fixed): "
                f"{'; '.join(case['why'])}. Top: short-axis slice; bottom: long-axis cut. Green: the target "
                "(fixed) myocardium; red: the moving myocardium, and after registration.",
            )
        )
    return example_html


def _notes_html(inputs: ReportInputs) -> str:
    """The page's warnings: validation subjects instead of test ones, failed registrations, absent regions."""
    subject_note = ""
    if inputs.subject_set != "test":
        subject_note = (
            '<p class="note">The split has no test subjects: these results are on the '
            f"<b>{html_text(inputs.subject_set)}</b> subjects, which were used to monitor training; they "
            "may flatter SVF-Net.</p>"
        )
    absent = absent_regions(inputs.rows)
    absent_note = (
        f'<p class="note">No label map has the {html_text(", ".join(absent))}: '
        f"{'this region is' if len(absent) == 1 else 'these regions are'} not evaluated.</p>"
        if absent
        else ""
    )
    failed_note = (
        (
            f'<p class="note">{inputs.failed} registration(s) failed (see Outliers); their pairs are '
            "left out of that method's statistics.</p>"
        )
        if inputs.failed
        else ""
    )
    return subject_note + failed_note + absent_note


def _page(inputs: ReportInputs, box_html: list[str], example_html: list[str], segmentation_html: str) -> str:
    """The HTML page, around the figures' HTML."""
    methods_text = ", ".join(METHOD_NAMES[m] for m in inputs.methods)
    notes = _notes_html(inputs)
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>svfnet evaluation: SVF-Net against {html_text(methods_text)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Registration of cardiac images: SVF-Net against {
        html_text(", ".join(METHOD_NAMES[m] for m in inputs.methods if m != "svfnet"))
    }</h1>
<p class="meta">Work folder {html_text(inputs.workdir)}; {len(inputs.subjects)} {
        html_text(inputs.subject_set)
    } subjects,
{inputs.pair_count} ordered pairs (every subject registered to every other); methods: {
        html_text(methods_text)
    };
generated {html_text(generated)} by svfnet evaluate.</p>
{notes}
<h2>In short</h2>
<pre class="headline">{html_text(chr(10).join(inputs.headline))}</pre>
<p>Each registration maps a moving image onto a fixed one; the outlines of the heart's regions, drawn
by experts (or the data set), then tell how well the two hearts were brought together. The identity is
no registration at all: the starting point every method should improve on.</p>
<h2>What the comparison says</h2>
{_statistics_section(inputs)}
<h2>Time per registration</h2>
<p>Wall time of one registration. SVF-Net: network, exponential and warp; LCC Log-Demons: the optimisation
and the exponential; on the threads shown (the optimisation methods ran in parallel processes).</p>
{_timing_table(inputs)}
<h2>Accuracy and smoothness per region (as the paper's Figure 3)</h2>
{"".join(box_html) or "<p>No results to plot.</p>"}
<h2>Examples (as the paper's Figure 4)</h2>
<p>The best and the worst pair of each method (by the mean Dice over the regions) and a typical
pair for SVF-Net.</p>
{"".join(example_html) or "<p>No example pairs.</p>"}
{segmentation_html}
<h2>Summary table</h2>
<p>Median [first quartile, third quartile] over the pairs; means, standard deviations and extremes are in
summary.csv.</p>
{_summary_table(inputs)}
<h2>Outliers</h2>
{_outlier_section(inputs)}
<h2>Settings</h2>
{_settings_section(inputs)}
<h2>Files</h2>
<ul>
<li><a href="pairs.csv">pairs.csv</a>: every metric of every pair, method and region</li>
<li><a href="summary.csv">summary.csv</a>: mean, median, quartiles per method, region and metric</li>
<li><a href="statistics.csv">statistics.csv</a>: SVF-Net against each method, fractions of pairs and
Welch's t-test</li>
<li><a href="outliers.csv">outliers.csv</a>: failures and input problems</li>
<li><a href="figures/">figures/</a>: the figures of this page as PNG files</li>
</ul>
</body>
</html>
"""
    return page
