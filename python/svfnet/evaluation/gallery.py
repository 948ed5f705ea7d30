"""The report's gallery: the pairs shown (best, median and worst by SVF-Net's Dice), each method's warped
moving image and labels on them, cached under ``evaluation/gallery/`` by the settings they came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path
from svfnet.common.parallel import run_tasks
from svfnet.evaluation.metrics import warp_pair
from svfnet.evaluation.records import error_text, pair_name, settings_key
from svfnet.evaluation.tables import METHOD_NAMES, pair_scores
from svfnet.evaluation.tasks import evaluate_task, make_task, svfnet_displacement

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ gallery
def gallery_cases(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> list[tuple[tuple[str, str], list[str]]]:
    """The example pairs of the report and why each is shown, e.g. ``"best for SVF-Net"``.

    The best and worst pair (mean Dice over the regions) of each registration method (not the
    identity), and SVF-Net's median pair; a pair chosen several times is shown once.
    """
    cases: dict[tuple[str, str], list[str]] = {}
    for method in methods:
        if method == "identity":
            continue
        scores = pair_scores(rows, method)
        if not scores:
            continue
        ordered = sorted(scores, key=lambda pair: (scores[pair], pair))
        cases.setdefault(ordered[-1], []).append(
            f"best for {METHOD_NAMES[method]} (mean Dice {scores[ordered[-1]]:.3f})"
        )
        cases.setdefault(ordered[0], []).append(
            f"worst for {METHOD_NAMES[method]} (mean Dice {scores[ordered[0]]:.3f})"
        )
        if method == "svfnet" and len(ordered) > 2:
            middle = ordered[len(ordered) // 2]
            cases.setdefault(middle, []).append(
                f"typical for SVF-Net (median mean Dice {scores[middle]:.3f})"
            )
    return list(cases.items())


def gallery_key(keys: Mapping[str, str], methods: Sequence[str], inputs: str) -> str:
    """What a cached gallery pair depends on: the methods' settings and the pair's subjects
    (``inputs``, as the records fingerprint them)."""
    return settings_key("gallery", {**{m: keys[m] for m in methods}, "inputs": inputs})


def gallery_entries(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    subjects: Mapping[str, Any],
    problem_of: Callable[[str, str], str | None],
    folder: Path,
    keys: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    model: Any,
    *,
    inputs_of: Callable[[str, str], str],
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """The gallery pairs' images: moving, fixed and each method's warped image and labels.

    The fields are not kept per pair (1,369 pairs × methods would be gigabytes): the few pairs shown
    are registered again (the methods are deterministic) and cached in ``gallery/<pair>.npz``.
    """
    cases = [(pair, why) for pair, why in gallery_cases(rows, methods) if problem_of(*pair) is None]
    cache = folder / "gallery"
    missing_tasks, missing_owner = [], []
    warped_of: dict[tuple[tuple[str, str], str], tuple[np.ndarray, np.ndarray]] = {}
    for pair, _ in cases:
        cache_key = gallery_key(keys, methods, inputs_of(*pair))
        cached = read_gallery_cache(cache / f"{pair_name(*pair)}.npz", cache_key, methods)
        if cached is not None:
            warped_of.update({(pair, m): value for m, value in cached.items()})
            continue
        for method in methods:
            task = _warp_here(pair, method, subjects, params, model, warped_of)
            if task is not None:
                missing_tasks.append(task)
                missing_owner.append((pair, method))
    _warp_as_tasks(missing_tasks, missing_owner, subjects, warped_of, workers, scheduler, progress)
    gallery: list[dict[str, Any]] = []
    for pair, why in cases:
        moving, fixed = subjects[pair[0]], subjects[pair[1]]
        warped = {m: warped_of[(pair, m)] for m in methods if (pair, m) in warped_of}
        if len(warped) == len(methods):
            write_gallery_cache(
                cache / f"{pair_name(*pair)}.npz",
                gallery_key(keys, methods, inputs_of(*pair)),
                warped,
            )
        gallery.append(
            {
                "moving": pair[0],
                "fixed": pair[1],
                "why": why,
                "spacing_mm": tuple(fixed.spacing_mm),
                "moving_image": moving.image,
                "moving_labels": moving.labels,
                "fixed_image": fixed.image,
                "fixed_labels": fixed.labels,
                "warped": warped,
            }
        )
    return gallery


def _warp_here(
    pair: tuple[str, str],
    method: str,
    subjects: Mapping[str, Any],
    params: Mapping[str, Mapping[str, Any]],
    model: Any,
    warped_of: dict[tuple[tuple[str, str], str], tuple[np.ndarray, np.ndarray]],
) -> Any:
    """Warps the pair by the identity or SVF-Net in this process, into ``warped_of`` (a failure is
    logged); for the optimisation methods, returns the task that will register it instead."""
    moving, fixed = subjects[pair[0]], subjects[pair[1]]
    try:
        if method == "identity":
            disp = np.zeros((3, *fixed.image.shape), dtype=np.float32)
        elif method == "svfnet":
            disp, _ = svfnet_displacement(model, moving, fixed)
        else:
            return make_task(method, moving, fixed, params[method], model, scores=False)
        warped_of[(pair, method)] = warp_pair(moving.image, moving.labels, disp)
    except Exception as error:  # the example is then drawn without this method
        logger.warning("gallery: %s failed on %s -> %s: %s", METHOD_NAMES[method], *pair, error_text(error))
    return None


def _warp_as_tasks(
    tasks: Sequence[Any],
    owners: Sequence[tuple[tuple[str, str], str]],
    subjects: Mapping[str, Any],
    warped_of: dict[tuple[tuple[str, str], str], tuple[np.ndarray, np.ndarray]],
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> None:
    """Runs the optimisation methods' tasks (``owners``: the pair and method of each) and warps each
    pair by its result, into ``warped_of``; a failure is logged."""
    for outcome in run_tasks(
        evaluate_task,
        tasks,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        description="gallery",
    ):
        pair, method = owners[outcome.index]
        if outcome.error is None:
            moving = subjects[pair[0]]
            warped_of[(pair, method)] = warp_pair(moving.image, moving.labels, outcome.value["disp"])
        else:
            logger.warning(
                "gallery: %s failed on %s -> %s: %s", METHOD_NAMES[method], *pair, error_text(outcome.error)
            )


def read_gallery_cache(
    path: Path, key: str, methods: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["key"]) != key:
                return None
            return {m: (data[f"{m}_image"], data[f"{m}_labels"]) for m in methods}
    except (OSError, KeyError, ValueError):
        return None


def write_gallery_cache(path: Path, key: str, warped: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    arrays = {"key": np.array(key)}
    for method, (image, labels) in warped.items():
        arrays[f"{method}_image"] = np.asarray(image, dtype=np.float32)
        arrays[f"{method}_labels"] = np.asarray(labels, dtype=np.uint8)
    with atomic_path(path) as temporary:
        np.savez_compressed(temporary, **arrays)
