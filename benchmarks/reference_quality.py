"""How good a work folder's reference SVFs are: usable pairs, size, time, and accuracy on the heart.

For every pair of ``WORKDIR/references`` (after ``svfnet references``): why it is left out, if it
is; the largest |v|; the time; and, where an SVF is stored, the Dice per region of the fixed labels
against the moving labels warped by ``exp(v)`` (one-hot interpolation, as registration warps
labels), beside the Dice without registration. Writes one row per pair to
``WORKDIR/references/quality.csv`` and prints a summary; ``--compare`` prints the mean Dice of
several such CSVs over the pairs usable in all of them (methods compared on the same pairs).

    python benchmarks/reference_quality.py WORKDIR
    python benchmarks/reference_quality.py --compare A/references/quality.csv B/references/quality.csv
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation

from svfnet.common.workdir import REGIONS, read_prepared
from svfnet.evaluation.metrics import dice
from svfnet.ops import fields
from svfnet.references.store import EXCLUSION_REASONS, ReferenceStore

STORED = (None, "not converged")  # reasons whose SVF is in the store


def measure(workdir: Path) -> list[dict]:
    store = ReferenceStore(workdir)
    subjects: dict = {}

    def prepared(subject: str):
        if subject not in subjects:
            subjects[subject] = read_prepared(workdir, subject)
        return subjects[subject]

    rows = []
    for record in store.records():
        moving, fixed = prepared(record["moving"]), prepared(record["fixed"])
        row = {
            key: record.get(key)
            for key in (
                "moving",
                "fixed",
                "excluded",
                "folds",
                "converged",
                "residual_max",
                "residual_mean",
                "iterations",
                "log_seconds",
            )
        }
        row["deformation_seconds"] = record.get("deformation_seconds", record.get("ebs_seconds"))
        row["excluded"] = row["excluded"] or ""
        svf = store.svf(record["moving"], record["fixed"]) if record["excluded"] in STORED else None
        if svf is not None:
            norm = np.linalg.norm(svf, axis=0)
            row["svf_max"] = float(norm.max())
            # |v| near the heart: within 3 voxels in plane and 1 slice of the fixed labels
            heart = binary_dilation(fixed.labels > 0, np.ones((7, 7, 3), bool))
            row["svf_max_heart"] = float(norm[heart].max())
            warped = np.asarray(
                fields.warp_labels(moving.labels.astype(np.int32), fields.exp(svf), mode="onehot")
            )
        for region, name in REGIONS.items():
            target, before = fixed.labels == region, moving.labels == region
            present = target.any() and before.any()
            row[f"identity_{name}"] = dice(before, target) if present else math.nan
            row[f"dice_{name}"] = dice(warped == region, target) if present and svf is not None else math.nan
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> str:
    count = len(rows)
    reasons = [row["excluded"] or None for row in rows]
    usable = [row for row in rows if not row["excluded"]]
    sizes = np.array([float(row["svf_max"]) for row in usable]) if usable else np.array([math.nan])
    heart = np.array([float(row["svf_max_heart"]) for row in usable]) if usable else np.array([math.nan])
    seconds = np.mean([float(row["deformation_seconds"]) + float(row["log_seconds"]) for row in rows])
    converged = sum(1 for row in rows if str(row["converged"]) == "True")
    lines = [
        f"pairs {count}: usable {len(usable)} ({100 * len(usable) / count:.1f}%), folded "
        f"{100 * reasons.count('folded') / count:.1f}%, converged {100 * converged / count:.1f}%; left out: "
        + ", ".join(f"{reason} {reasons.count(reason)}" for reason in EXCLUSION_REASONS),
        f"max |v| per usable pair (voxels): median {np.median(sizes):.1f}, p90 {np.percentile(sizes, 90):.1f}, "
        f"p99 {np.percentile(sizes, 99):.1f}, max {sizes.max():.1f}; near the heart: median {np.median(heart):.1f}, "
        f"p99 {np.percentile(heart, 99):.1f}",
        f"time per pair (one process): {seconds:.3f} s",
        "Dice over usable pairs (identity): "
        + ", ".join(
            f"{name} {np.nanmean([float(r[f'dice_{name}']) for r in usable]):.3f} "
            f"({np.nanmean([float(r[f'identity_{name}']) for r in usable]):.3f})"
            for name in REGIONS.values()
        ),
    ]
    return "\n".join(lines)


def compare(paths: list[Path]) -> str:
    tables = []
    for path in paths:
        with path.open(newline="") as handle:
            tables.append({(row["moving"], row["fixed"]): row for row in csv.DictReader(handle)})
    common = set.intersection(
        *({pair for pair, row in table.items() if not row["excluded"]} for table in tables)
    )
    lines = [f"{len(common)} pairs usable in all of {len(paths)}"]
    for path, table in zip(paths, tables, strict=True):
        means = [
            np.nanmean([float(table[pair][f"dice_{name}"]) for pair in common]) for name in REGIONS.values()
        ]
        lines.append(
            f"{path}: "
            + ", ".join(f"{name} {m:.3f}" for name, m in zip(REGIONS.values(), means, strict=True))
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", nargs="?", type=Path)
    parser.add_argument("--compare", nargs="+", type=Path, metavar="CSV")
    args = parser.parse_args()
    if args.compare:
        print(compare(args.compare))
        return
    rows = measure(args.workdir)
    path = args.workdir / "references" / "quality.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    print(summary(rows))


if __name__ == "__main__":
    main()
