"""Accuracy against CPU time for SVF-Net widths (how the default was chosen; docs/pipeline.md).

Trains each width for a fixed number of steps on a prepared work folder with random-SVF targets
and reports validation loss and Dice next to parameters and forward time on 64×64×16.

    python benchmarks/compare_widths.py WORKDIR [--steps 200] [--widths 8,16,32,32 16,32,64,64 ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import torch

from svfnet.training.model import SVFNet, SVFNetConfig
from svfnet.training.train import run_training
from svfnet.training.train_config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--widths", nargs="+", default=["8,16,32,32", "16,32,64,64", "32,64,128,128"])
    args = parser.parse_args()
    for text in args.widths:
        widths = tuple(int(w) for w in text.split(","))
        run = "widths-" + "-".join(map(str, widths))
        shutil.rmtree(args.workdir / "models" / run, ignore_errors=True)
        config = TrainConfig(
            steps=args.steps,
            batch_size=2,
            targets="random",
            learning_rate=2e-3,
            validate_every=args.steps,
            checkpoint_every=args.steps,
            validation_pairs=8,
            model=SVFNetConfig(widths=widths),
        )
        started = time.perf_counter()
        run_training(args.workdir, config, run=run, progress=False)
        seconds = time.perf_counter() - started
        with (args.workdir / "models" / run / "log.csv").open() as handle:
            last = [row for row in csv.DictReader(handle) if row["val_loss"]][-1]
        model = SVFNet(SVFNetConfig(widths=widths)).eval()
        pair = torch.randn(1, 2, 64, 64, 16)
        with torch.no_grad():
            model(pair)
            started_forward = time.perf_counter()
            for _ in range(5):
                model(pair)
        print(
            json.dumps(
                {
                    "widths": widths,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "train_seconds": round(seconds, 1),
                    "forward_ms": round((time.perf_counter() - started_forward) / 5 * 1e3, 1),
                    "val_loss": float(last["val_loss"]),
                    "val_dice": float(last["val_dice"]),
                    "identity_dice": float(last["identity_dice"]),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
