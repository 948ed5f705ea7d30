"""Tiny work folders for the pipeline tests: a few subjects on a 16×16×4 grid whose deformations
are known exactly, so that stages can be checked against the truth and run in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from svfnet.common.atomic import write_json
from svfnet.common.workdir import WorkDir, write_prepared_subject, write_subjects
from svfnet.ops import fields

GRID = (16, 16, 4)
SPACING_MM = (4.0, 4.0, 10.0)


def heart(grid=GRID) -> tuple[np.ndarray, np.ndarray]:
    """An LV blood pool (1) in a myocardial ring (2) with an RV-like blob (3): image and labels."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in grid], indexing="ij")
    ci, cj = grid[0] / 2 - 0.5, grid[1] / 2 + 1
    radius = np.hypot((i - ci) / 1.1, j - cj)
    labels = np.zeros(grid, np.uint8)
    labels[radius < 4.5] = 2
    labels[radius < 2.8] = 1
    labels[(np.hypot(i - ci, j - (cj - 5.5)) < 2.6) & (labels == 0)] = 3
    image = np.select([labels == 1, labels == 2, labels == 3], [1.0, 0.35, 0.9], 0.15).astype(np.float32)
    image += 0.05 * np.sin(i / 2.0) * np.cos(j / 3.0) + 0.01 * k
    return gaussian_filter(image, (0.7, 0.7, 0)).astype(np.float32), labels


def smooth_svf(rng: np.random.Generator, amplitude_vox: float, grid=GRID) -> np.ndarray:
    v = gaussian_filter(rng.standard_normal((3, *grid)), (0, 3, 3, 1), mode="wrap")
    v *= amplitude_vox / np.sqrt(np.mean(v[:2] ** 2))
    v[2] *= 0.1
    return v.astype(np.float32)


def deformed_cohort(workdir: Path, count: int = 4, seed: int = 0, amplitude_vox: float = 1.2):
    """Subject s0 and s1..s{count-1} = s0 warped by exp(v_n); returns {id: v} (v of s0 -> s_n).

    For the pair (moving s0, fixed s_n) the exact reference SVF is v_n: fixed(x) = s0(x + exp(v_n)(x)).
    """
    rng = np.random.default_rng(seed)
    image, labels = heart()
    svfs = {"s0": np.zeros((3, *GRID), np.float32)}
    write_prepared_subject(workdir, "s0", image, labels, SPACING_MM, {"kind": "test"})
    for n in range(1, count):
        v = smooth_svf(rng, amplitude_vox)
        disp = fields.exp(v)
        write_prepared_subject(
            workdir,
            f"s{n}",
            fields.warp(image, disp),
            fields.warp_labels(labels, disp, mode="onehot"),
            SPACING_MM,
            {"kind": "test"},
        )
        svfs[f"s{n}"] = v
    write_subjects(
        workdir, {"subjects": [{"id": s} for s in svfs], "shape": list(GRID), "spacing_mm": list(SPACING_MM)}
    )
    return svfs


def write_split(workdir: Path, train, val=(), test=()) -> None:
    write_json(
        Path(workdir) / "split.json", {"train": list(train), "val": list(val), "test": list(test), "seed": 0}
    )


def write_exact_references(workdir: Path, svfs: dict[str, np.ndarray]) -> None:
    """Reference store with the exact SVFs of the pairs (s0, s_n) and (s_n, s0) (≈ −v_n)."""
    folder = WorkDir(workdir).references
    (folder / "svf").mkdir(parents=True, exist_ok=True)
    (folder / "pairs").mkdir(parents=True, exist_ok=True)
    others = [s for s in svfs if s != "s0"]
    entries = {"s0": [(m, -svfs[m]) for m in others]}  # exp(-v) inverts exp(v)
    for s in others:
        entries[s] = [("s0", svfs[s])]
    record = {"folds": 0, "converged": True, "residual_max": 0.0, "residual_mean": 0.0, "iterations": 0}
    for fixed, pairs in entries.items():
        np.save(folder / "svf" / f"{fixed}.npy", np.stack([v for _, v in pairs]).astype(np.float16))
        (folder / "pairs" / f"{fixed}.json").write_text(
            json.dumps(
                {
                    "fixed": fixed,
                    "moving": [m for m, _ in pairs],
                    "pairs": [{"moving": m, **record} for m, _ in pairs],
                }
            )
        )
