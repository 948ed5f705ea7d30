"""The shapes stage's template: surfaces extracted with the stage's settings, the subject closest to
the others (a currents pre-pass), and the landmarks spread over its vertices (farthest points)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.workdir import read_prepared
from svfnet.ops.kernels import BilinearFormFunction
from svfnet.shapes.currents import as_currents
from svfnet.shapes.surfaces import Surface, surfaces_from_labels

__all__ = ["choose_template", "extract_surfaces", "farthest_points"]

# how many subjects the template pre-pass compares each candidate with, at most
_TEMPLATE_PEERS = 64


def farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` points spread over ``points`` ``(N, 3)`` by farthest-point sampling
    (deterministic: starts from the point nearest the centroid)."""
    points = np.asarray(points, dtype=np.float64)
    if count >= len(points):
        return np.arange(len(points))
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    nearest = np.linalg.norm(points - points[chosen[0]], axis=1)
    for n in range(1, count):
        chosen[n] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, np.linalg.norm(points - points[chosen[n]], axis=1))
    return np.sort(chosen)


def extract_surfaces(
    labels, spacing, regions, surface_settings: dict[str, Any], subject: str
) -> dict[int, Surface]:
    """One subject's surfaces with the stage's ``surface_settings`` (target_triangles, smoothing_vox)."""
    return surfaces_from_labels(
        labels,
        spacing,
        regions=regions,
        target_triangles=surface_settings["target_triangles"],
        smoothing_vox=surface_settings["smoothing_vox"],
        subject=subject,
    )


def choose_template(
    workdir: str | Path,
    subjects: list[str],
    regions: list[int],
    surface_settings: dict[str, Any],
    sigma_w_mm: float,
    *,
    progress: bool = True,
) -> str:
    """The subject whose surfaces are closest, on average, to the others' (currents distance).

    A cheap pre-pass: coarse surfaces (a quarter of the triangles, at least 1000), each subject
    compared with at most 64 others (a fixed random choice when there are more).
    """
    import torch
    from tqdm.auto import tqdm

    coarse = dict(surface_settings, target_triangles=max(1000, surface_settings["target_triangles"] // 4))
    currents, norms = {}, {}
    for subject in tqdm(subjects, desc="template pre-pass", disable=not progress, unit="subject"):
        prepared = read_prepared(workdir, subject)
        surfaces = extract_surfaces(prepared.labels, prepared.spacing_mm, regions, coarse, subject)
        currents[subject] = {
            r: as_currents("choose_template", subject, s, torch.float32) for r, s in surfaces.items()
        }
        norms[subject] = {
            r: float(BilinearFormFunction.apply(c, n, c, n, sigma_w_mm, True))
            for r, (c, n) in currents[subject].items()
        }
    rng = np.random.default_rng(0)
    mean_distance = {}
    for subject in subjects:
        others = [s for s in subjects if s != subject]
        if len(others) > _TEMPLATE_PEERS:
            others = list(rng.choice(others, _TEMPLATE_PEERS, replace=False))
        total = 0.0
        for other in others:
            d2 = 0.0
            for region in regions:
                (ca, na), (cb, nb) = currents[subject][region], currents[other][region]
                cross = float(BilinearFormFunction.apply(ca, na, cb, nb, sigma_w_mm, False))
                d2 += norms[subject][region] - 2 * cross + norms[other][region]
            total += math.sqrt(max(d2, 0.0))
        mean_distance[subject] = total / max(len(others), 1)
    return min(subjects, key=lambda s: (mean_distance[s], s))
