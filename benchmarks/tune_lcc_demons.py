"""Grid search of LCC Log-Demons' parameters on synthetic training pairs (the record of its defaults).

Training pairs are inter-subject pairs of the synthetic cohort of seed 0 (subjects 0–11, prepared
on 64×64×16 as ``svfnet synth`` + ``svfnet prepare`` do), never the subjects the tests use. Every
configuration of the grid registers every pair; it is scored by the mean Dice over the four
regions and the pairs, among the configurations whose exponentials never fold (no voxel with
``det J ≤ 0`` in any pair). The table goes to stdout (Markdown) and the full record to ``--out``
(JSON), from which ``docs/evaluation.md`` quotes.

Run (each stage 10–15 minutes on 2 cores):

    python -m benchmarks.tune_lcc_demons --stage 1 --out docs/tune_lcc_demons_stage1.json
    python -m benchmarks.tune_lcc_demons --stage 2 --out docs/tune_lcc_demons_stage2.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# Stage 1 spans the plausible ranges; stage 2 refines around stage 1's best (which sat on the
# grid's edge in sigma_elastic_mm and sigma_i), with sigma_fluid_mm fixed (it mattered least).
GRIDS = {
    1: {
        "sigma_lcc_mm": [3.0, 5.0, 8.0],
        "sigma_fluid_mm": [1.0, 2.0, 3.0],
        "sigma_elastic_mm": [2.0, 3.5, 5.0],
        "sigma_i": [0.05, 0.1, 0.3],
    },
    2: {
        "sigma_lcc_mm": [4.0, 5.0, 6.5],
        "sigma_fluid_mm": [2.0],
        "sigma_elastic_mm": [1.0, 1.5, 2.0, 2.5],
        "sigma_i": [0.2, 0.3, 0.5, 0.8],
    },
}
FIXED = {"iterations": (30, 30, 40)}
TRAINING_SEED = 0
N_SUBJECTS = 12
REGIONS = (1, 2, 3, 4)

_subjects = None  # per worker process


def _init_worker(folder: str) -> None:
    import torch

    torch.set_num_threads(1)  # one registration per core
    global _subjects
    from svfnet.workdir import read_all_prepared

    _subjects = read_all_prepared(Path(folder) / "work")


def _run(job: tuple[dict, tuple[int, int]]) -> dict:
    from svfnet import fields, metrics
    from svfnet.baselines import lcc_demons

    params, (i, j) = job
    moving, fixed = _subjects[i], _subjects[j]
    started = time.perf_counter()
    svf = lcc_demons.register(moving.image, fixed.image, spacing=fixed.spacing_mm, **params)
    seconds = time.perf_counter() - started
    rows = metrics.evaluate_pair(
        moving.image, fixed.image, moving.labels, fixed.labels, spacing=fixed.spacing_mm, svf=svf
    )
    by_region = {row["region"]: row for row in rows}
    det = np.asarray(fields.jacobian_det(fields.exp(svf)))
    return {
        "params": params,
        "pair": [i, j],
        "seconds": seconds,
        "dice": [by_region[r]["dice"] for r in REGIONS],
        "hausdorff95_mm": [by_region[r]["hausdorff95_mm"] for r in REGIONS],
        "folding_voxels": int(np.count_nonzero(det <= 0)),
        "min_det": float(det.min()),
    }


def _identity(subjects, pairs) -> dict:
    from svfnet import metrics

    dices = []
    for i, j in pairs:
        rows = metrics.evaluate_pair(
            subjects[i].image,
            subjects[j].image,
            subjects[i].labels,
            subjects[j].labels,
            spacing=subjects[j].spacing_mm,
            disp=np.zeros((3, *subjects[j].image.shape), np.float32),
        )
        dices.append([rows[r - 1]["dice"] for r in REGIONS])
    return {"mean_dice": float(np.nanmean(dices)), "dice_per_region": np.nanmean(dices, axis=0).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON record to write")
    parser.add_argument("--pairs", type=int, default=8, help="number of training pairs (default 8)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stage", type=int, choices=sorted(GRIDS), default=max(GRIDS), help="which grid")
    args = parser.parse_args(argv)
    grid = GRIDS[args.stage]

    from tests.demons_fixtures import prepared_subjects

    with tempfile.TemporaryDirectory() as folder:
        subjects = prepared_subjects(folder, N_SUBJECTS, TRAINING_SEED)
        # pairs between distinct subjects, each subject used as moving and as fixed
        pairs = [(n % N_SUBJECTS, (n + 1 + n // N_SUBJECTS) % N_SUBJECTS) for n in range(args.pairs)]
        identity = _identity(subjects, pairs)
        configs = [
            dict(zip(grid, values, strict=True), **FIXED) for values in itertools.product(*grid.values())
        ]
        jobs = [(config, pair) for config in configs for pair in pairs]
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(folder,)) as pool:
            results = list(pool.map(_run, jobs, chunksize=4))
        elapsed = time.perf_counter() - started

    summary = []
    for config in configs:
        mine = [r for r in results if r["params"] == config]
        dice = np.array([r["dice"] for r in mine])
        summary.append(
            {
                "params": {k: v for k, v in config.items() if k in grid},
                "mean_dice": float(np.nanmean(dice)),
                "dice_per_region": np.nanmean(dice, axis=0).tolist(),
                "mean_hausdorff95_mm": float(np.nanmean([r["hausdorff95_mm"] for r in mine])),
                "folding_pairs": sum(r["folding_voxels"] > 0 for r in mine),
                "min_det": min(r["min_det"] for r in mine),
                "mean_seconds": float(np.mean([r["seconds"] for r in mine])),
            }
        )
    summary.sort(key=lambda s: (s["folding_pairs"] > 0, -s["mean_dice"]))

    header = list(grid) + [
        "mean Dice",
        "LV",
        "LV myo",
        "RV",
        "RV myo",
        "HD95 mm",
        "min det J",
        "folding pairs",
        "s/pair",
    ]
    print(
        f"identity: mean Dice {identity['mean_dice']:.3f} "
        f"({', '.join(f'{d:.3f}' for d in identity['dice_per_region'])}); {len(pairs)} pairs, "
        f"{len(configs)} configurations, {elapsed:.0f} s with {args.workers} workers\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for s in summary:
        cells = (
            [f"{s['params'][k]:g}" for k in grid]
            + [f"{s['mean_dice']:.3f}"]
            + [f"{d:.3f}" for d in s["dice_per_region"]]
            + [
                f"{s['mean_hausdorff95_mm']:.2f}",
                f"{s['min_det']:.2f}",
                str(s["folding_pairs"]),
                f"{s['mean_seconds']:.2f}",
            ]
        )
        print("| " + " | ".join(cells) + " |")
    if args.out is not None:
        from svfnet._io import write_json

        write_json(
            args.out,
            {
                "training": {
                    "generator": "svfnet.data.synthetic",
                    "seed": TRAINING_SEED,
                    "subjects": N_SUBJECTS,
                    "pairs": pairs,
                    "grid": [64, 64, 16],
                },
                "stage": args.stage,
                "grid": grid,
                "fixed": {k: list(v) if isinstance(v, tuple) else v for k, v in FIXED.items()},
                "identity": identity,
                "summary": summary,
                "seconds": elapsed,
                "selected": summary[0]["params"]
                if summary and not math.isnan(summary[0]["mean_dice"])
                else None,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
