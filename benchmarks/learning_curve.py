"""How SVF-Net's accuracy on the test pairs grows with training time (the curve in README.md).

Trains one run on a work folder that has its references (e.g. after ``svfnet demo``) and, at
the chosen steps, registers every ordered test pair with the checkpoint of that step: Dice and
Hausdorff distance per region, and the fraction of pairs where SVF-Net beats LCC Log-Demons on
both (mean over regions), read from the folder's evaluation (``evaluation/pairs.csv``).

    python benchmarks/learning_curve.py WORKDIR [--steps 3000] [--at 250,500,1000,2000,3000]

Writes ``WORKDIR/models/<run>/curve.csv`` and prints a Markdown table. A killed run continues
(``run_training(resume=True)``) and keeps the rows already measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from svfnet.common.workdir import REGIONS, read_prepared
from svfnet.evaluation.metrics import dice, hausdorff
from svfnet.registration.arrays import register
from svfnet.training.model import SVFNet, SVFNetConfig, read_checkpoint
from svfnet.training.train import run_folder, run_training
from svfnet.training.train_config import TrainConfig


def demons_scores(workdir: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """(mean Dice, mean Hausdorff) over the regions, per (moving, fixed), of LCC Log-Demons."""
    path = workdir / "evaluation" / "pairs.csv"
    if not path.is_file():
        return {}
    per_pair: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["method"] == "lcc_demons" and row["status"] == "ok":
                per_pair.setdefault((row["moving"], row["fixed"]), []).append(
                    (float(row["dice"]), float(row["hausdorff_mm"]))
                )
    return {pair: tuple(np.mean(values, axis=0)) for pair, values in per_pair.items()}


def measure(model: SVFNet, subjects: dict, demons: dict) -> dict[str, float]:
    dices = {region: [] for region in REGIONS}
    wins = []
    for moving_id, moving in subjects.items():
        for fixed_id, fixed in subjects.items():
            if moving_id == fixed_id:
                continue
            out = register(moving.image, fixed.image, model, moving_labels=moving.labels)
            pair_dice, pair_hd = [], []
            for region in REGIONS:
                a, b = out.warped_labels == region, fixed.labels == region
                if a.any() and b.any():
                    pair_dice.append(dice(a, b))
                    pair_hd.append(hausdorff(a, b, fixed.spacing_mm))
                    dices[region].append(pair_dice[-1])
            if (moving_id, fixed_id) in demons:
                demons_dice, demons_hd = demons[(moving_id, fixed_id)]
                wins.append(np.mean(pair_dice) > demons_dice and np.mean(pair_hd) < demons_hd)
    row = {f"dice_{REGIONS[region]}": float(np.mean(values)) for region, values in dices.items()}
    row["beats_demons"] = float(np.mean(wins)) if wins else float("nan")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--at", default="250,500,1000,1500,2000,3000", help="steps at which to measure")
    parser.add_argument("--run", default="curve")
    parser.add_argument("--loss-mask", default="heart")
    args = parser.parse_args()

    at = sorted(int(s) for s in args.at.split(","))
    config = TrainConfig(
        steps=args.steps,
        loss_mask=args.loss_mask,
        checkpoint_every=50,
        validate_every=250,
        model=SVFNetConfig(),
    )
    split = json.loads((args.workdir / "split.json").read_text())
    subjects = {s: read_prepared(args.workdir, s) for s in split["test"]}
    demons = demons_scores(args.workdir)
    folder = run_folder(args.workdir, args.run)
    curve_path = folder / "curve.csv"
    rows = list(csv.DictReader(curve_path.open())) if curve_path.is_file() else []
    done = {int(row["step"]) for row in rows}

    def on_step(step: int) -> None:
        if step not in at or step in done:
            return
        saved = read_checkpoint(folder / "checkpoint.pt")
        model = SVFNet(SVFNetConfig.from_dict(saved["config"]))
        model.load_state_dict(saved["model"])
        train_seconds = time.perf_counter() - started  # of this process; see the log for a resumed run
        row = {
            "step": step,
            "train_seconds": round(train_seconds, 1),
            **measure(model.eval(), subjects, demons),
        }
        rows.append(row)
        with curve_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(row))
            writer.writeheader()
            writer.writerows(rows)
        print(row, flush=True)

    started = time.perf_counter()
    run_training(args.workdir, config, run=args.run, resume=True, progress=False, on_step=on_step)
    names = [f"dice_{name}" for name in REGIONS.values()]
    print("| steps | " + " | ".join(REGIONS.values()) + " | pairs beating LCC Log-Demons |")
    print("|---|" + "---|" * (len(names) + 1))
    for row in rows:
        print(
            f"| {row['step']} | "
            + " | ".join(f"{float(row[n]):.3f}" for n in names)
            + f" | {float(row['beats_demons']):.0%} |"
        )


if __name__ == "__main__":
    main()
