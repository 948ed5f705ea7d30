"""Training recipes side by side: each trained on one work folder, then measured on its test pairs
against LCC Log-Demons (issue 14's criterion).

A variant is a named set of :class:`svfnet.training.train_config.TrainConfig` changes (``VARIANTS`` below). Each
trains its own run ``WORKDIR/models/recipe-<variant>`` (resumed where a run was killed) and, at the
steps given with ``--at``, registers every ordered test pair with that step's checkpoint and
scores it as ``svfnet evaluate`` does (:func:`svfnet.evaluation.metrics.evaluate_pair`, labels one-hot):
per region the mean Dice and 95% Hausdorff distance, and the fraction of pairs where the variant
beats LCC Log-Demons on Dice, on the Hausdorff distance, and on both. The LCC Log-Demons results
are read from the folder's evaluation (``WORKDIR/evaluation/pairs.csv``: run ``svfnet evaluate``
once, with any model).

    python benchmarks/recipes.py WORKDIR VARIANT [--steps 1500] [--at 500,1000,1500] [--threads 1] [--seed 1]
    python benchmarks/recipes.py WORKDIR --report

``--test-from OTHER`` scores on another folder's test pairs and LCC Log-Demons results (a folder
prepared on the same grid and spacing: a larger training cohort measured on the same test pairs).

Run two variants at once with ``--threads 1`` each to compare them on one busy 2-core machine;
``--report`` prints every measured row as a Markdown table (``recipes.csv`` in the folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from svfnet.common.workdir import REGIONS, read_prepared
from svfnet.evaluation.metrics import evaluate_pair
from svfnet.registration.arrays import register
from svfnet.training.model import SVFNet, SVFNetConfig, read_checkpoint
from svfnet.training.train import run_folder, run_training
from svfnet.training.train_config import TrainConfig

# name -> TrainConfig changes (on top of the defaults and --steps)
VARIANTS: dict[str, dict] = {
    "default": {},  # TrainConfig's defaults: today the overlap recipe, weight 3
    "default-ic1": {"inverse_consistency_weight": 1.0},  # with both directions and inverse consistency
    "paper": {"recipe": "paper"},
    "overlap": {"recipe": "overlap", "overlap_weight": 1.0},
    "overlap-w0.3": {"recipe": "overlap", "overlap_weight": 0.3},
    "overlap-w3": {"recipe": "overlap", "overlap_weight": 3.0},
    "paper-aug": {"recipe": "paper", "intensity_augmentation": True, "rotation_deg": 10.0},
    "overlap-aug": {
        "recipe": "overlap",
        "overlap_weight": 1.0,
        "intensity_augmentation": True,
        "rotation_deg": 10.0,
    },
    "overlap-intensity": {"recipe": "overlap", "overlap_weight": 1.0, "intensity_augmentation": True},
    "overlap-rotation": {"recipe": "overlap", "overlap_weight": 1.0, "rotation_deg": 10.0},
    "paper-bf16": {"recipe": "paper", "precision": "bfloat16"},
    "overlap-bf16": {"recipe": "overlap", "overlap_weight": 1.0, "precision": "bfloat16"},
}


def demons_rows(workdir: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(Dice, 95% Hausdorff) of LCC Log-Demons per (moving, fixed, region) from the folder's evaluation."""
    path = workdir / "evaluation" / "pairs.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `svfnet evaluate {workdir}` once first (any model)")
    rows = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["method"] == "lcc_demons" and row.get("status") == "ok" and int(row["region"]) in REGIONS:
                rows[(row["moving"], row["fixed"], int(row["region"]))] = (
                    float(row["dice"]),
                    float(row["hausdorff95_mm"]),
                )
    return rows


def measure(model: SVFNet, subjects: dict, demons: dict, symmetric: bool = True) -> dict[str, float]:
    """Mean Dice and 95% Hausdorff per region over the ordered test pairs, and the win fractions
    (``symmetric``: registration's default two-direction average, else one forward pass)."""
    scores = {
        region: {"dice": [], "hd95": [], "dice_win": [], "hd95_win": [], "both_win": []} for region in REGIONS
    }
    seconds = []
    for moving_id, moving in subjects.items():
        for fixed_id, fixed in subjects.items():
            if moving_id == fixed_id:
                continue
            started = time.perf_counter()
            out = register(moving.image, fixed.image, model, symmetric=symmetric)
            seconds.append(time.perf_counter() - started)
            rows = evaluate_pair(
                moving.image,
                fixed.image,
                moving.labels,
                fixed.labels,
                spacing=fixed.spacing_mm,
                svf=out.svf,
                label_interpolation="onehot",
            )
            for row in rows:
                region = int(row["region"])
                if region not in REGIONS or row["status"] not in ("ok", "lost"):
                    continue
                d, h = float(row["dice"]), float(row["hausdorff95_mm"])
                scores[region]["dice"].append(d)
                if math.isfinite(h):
                    scores[region]["hd95"].append(h)
                if (moving_id, fixed_id, region) in demons:
                    demons_dice, demons_hd = demons[(moving_id, fixed_id, region)]
                    hd_win = math.isfinite(h) and h < demons_hd
                    scores[region]["dice_win"].append(d > demons_dice)
                    scores[region]["hd95_win"].append(hd_win)
                    scores[region]["both_win"].append(d > demons_dice and hd_win)
    result = {"seconds_per_pair": float(np.median(seconds)), "symmetric": symmetric}
    for region, name in REGIONS.items():
        key = name.replace(" ", "_")
        for metric, values in scores[region].items():
            result[f"{metric}_{key}"] = float(np.mean(values)) if values else float("nan")
    return result


def demons_summary(subjects: dict, demons: dict) -> dict[str, float]:
    """LCC Log-Demons' own means over the same pairs (the bar)."""
    result = {}
    for region, name in REGIONS.items():
        rows = [
            demons[(m, f, region)] for m in subjects for f in subjects if m != f and (m, f, region) in demons
        ]
        key = name.replace(" ", "_")
        result[f"dice_{key}"] = float(np.mean([d for d, _ in rows])) if rows else float("nan")
        result[f"hd95_{key}"] = (
            float(np.mean([h for _, h in rows if math.isfinite(h)])) if rows else float("nan")
        )
    return result


def write_rows(path: Path, rows: list[dict]) -> None:
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("variant", "step"), k))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def report(workdir: Path) -> None:
    rows = []
    for path in sorted(workdir.glob("models/recipe-*/curve.csv")):
        with path.open(newline="") as handle:
            rows += list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"no measured variant under {workdir}/models/recipe-*")
    write_rows(workdir / "recipes.csv", rows)
    split = json.loads((workdir / "split.json").read_text())
    subjects = {s: read_prepared(workdir, s) for s in split["test"]}
    bar = demons_summary(subjects, demons_rows(workdir))
    names = [name.replace(" ", "_") for name in REGIONS.values()]
    short = {"LV_blood_pool": "LVBP", "LV_myocardium": "LVM", "RV_blood_pool": "RVBP", "RV_myocardium": "RVM"}
    print(
        "| variant | steps | train min | "
        + " | ".join(f"Dice {short[n]}" for n in names)
        + " | "
        + " | ".join(f"HD95 {short[n]}" for n in names)
        + " | "
        + " | ".join(f"wins {short[n]}" for n in names)
        + " |"
    )
    print("|---" * (3 + 3 * len(names)) + "|")
    for row in rows:
        # rows measured before registration averaged both directions have no "symmetric" column
        one_way = "" if row.get("symmetric") == "True" else " (one way)"
        print(
            f"| {row['variant']}{one_way} | {row['step']} | {float(row['train_seconds']) / 60:.1f} | "
            + " | ".join(f"{float(row[f'dice_{n}']):.3f}" for n in names)
            + " | "
            + " | ".join(f"{float(row[f'hd95_{n}']):.2f}" for n in names)
            + " | "
            + " | ".join(
                f"{float(row[f'dice_win_{n}']):.0%}/{float(row[f'hd95_win_{n}']):.0%}/"
                f"{float(row[f'both_win_{n}']):.0%}"
                for n in names
            )
            + " |"
        )
    print(
        "| LCC Log-Demons | | | "
        + " | ".join(f"{bar[f'dice_{n}']:.3f}" for n in names)
        + " | "
        + " | ".join(f"{bar[f'hd95_{n}']:.2f}" for n in names)
        + " | | | | |"
    )
    print("\nwins: % of test pairs better than LCC Log-Demons on Dice / on HD95 / on both")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path)
    parser.add_argument("variant", nargs="?", choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--at", default="", help="steps at which to measure (default: the last)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--test-from",
        type=Path,
        help="score on this folder's test pairs and LCC Log-Demons results (same grid and spacing) instead of WORKDIR's",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="TrainConfig.seed (runs other than 0 are named -s<seed>)"
    )
    parser.add_argument("--report", action="store_true", help="print the measured variants' table")
    parser.add_argument(
        "--one-way",
        action="store_true",
        help="register with one forward pass (default: both directions averaged)",
    )
    args = parser.parse_args()
    if args.report:
        report(args.workdir)
        return
    if args.variant is None:
        parser.error("give a VARIANT, or --report")
    if args.threads:
        torch.set_num_threads(args.threads)
    at = sorted({int(s) for s in args.at.split(",") if s} | {args.steps})
    config = TrainConfig(
        steps=args.steps,
        checkpoint_every=50,
        validate_every=250,
        model=SVFNetConfig(),
        seed=args.seed,
        **VARIANTS[args.variant],
    )
    scored = args.test_from or args.workdir
    split = json.loads((scored / "split.json").read_text())
    subjects = {s: read_prepared(scored, s) for s in split["test"]}
    demons = demons_rows(scored)
    name = args.variant if args.seed == 0 else f"{args.variant}-s{args.seed}"
    run = f"recipe-{name}"
    folder = run_folder(args.workdir, run)
    curve_path = folder / "curve.csv"
    rows = list(csv.DictReader(curve_path.open())) if curve_path.is_file() else []
    done = {int(row["step"]) for row in rows}

    def on_step(step: int) -> None:
        if step not in at or step in done:
            return
        saved = read_checkpoint(folder / "checkpoint.pt")
        model = SVFNet(SVFNetConfig.from_dict(saved["config"]))
        model.load_state_dict(saved["model"])
        train_seconds = time.perf_counter() - started  # of this process; see log.csv for a resumed run
        row = {
            "variant": name,
            "step": step,
            "train_seconds": round(train_seconds, 1),
            **measure(model.eval(), subjects, demons, symmetric=not args.one_way),
        }
        rows.append(row)
        write_rows(curve_path, rows)
        print(json.dumps(row), flush=True)

    started = time.perf_counter()
    run_training(args.workdir, config, run=run, resume=True, progress=False, on_step=on_step)


if __name__ == "__main__":
    main()
