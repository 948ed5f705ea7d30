"""One subject of the segmentation evaluation (:mod:`svfnet.segmentation.evaluation`): the subjects to
segment (:func:`split_subjects`), each read from its source files, else its prepared ones
(:func:`read_subject`), then segmented with every method and scored against its own labels
(:func:`score_subject`: its record and the views the gallery draws)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.staging import file_digest
from svfnet.common.workdir import WorkDir, array_digest
from svfnet.data.labels import IDENTITY_LABELS, parse_label_mapping
from svfnet.data.nifti import read_nifti
from svfnet.data.split import subject_split
from svfnet.registration.prepare import read_original
from svfnet.segmentation import multi_atlas as seg
from svfnet.segmentation.fusion import argmax_labels, normalised_entropy
from svfnet.segmentation.outputs import probabilities_to_original
from svfnet.segmentation.refinement import refine_registrations
from svfnet.segmentation.scores import (
    calibration_counts,
    region_scores,
)
from svfnet.segmentation.target import DEFAULT_REFERENCES, prepare_target, read_image

__all__ = ["Subject", "file_digest", "read_subject", "score_subject", "split_subjects"]

# the evaluation's logger, as before this module was split off
logger = logging.getLogger("svfnet.segmentation.evaluation")


@dataclass(frozen=True)
class Subject:
    """A subject to segment: its image (path or array/affine) and its true labels on that image's grid."""

    id: str
    image: Any
    truth: np.ndarray
    spacing_mm: tuple[float, float, float]
    source: str  # "original" or "prepared"
    digest: str


def read_subject(workdir: Path, subject_id: str, entry: Mapping[str, Any]) -> Subject:
    """The subject's source image and labels (mapped as the dataset was), else its prepared ones."""
    source = entry.get("source") or {}
    image_path, labels_path = source.get("image"), source.get("labels")
    if image_path and labels_path and Path(image_path).is_file() and Path(labels_path).is_file():
        mapping = parse_label_mapping(source["label_mapping"]) if source.get("label_mapping") else None
        if mapping is None:
            mapping = dict(IDENTITY_LABELS)
        original = read_original("image", image_path, labels_path, mapping)
        spacing = tuple(float(s) for s in np.linalg.norm(original.affine[:3, :3], axis=0))
        mapping_text = source.get("label_mapping")
        digest = f"{file_digest(Path(image_path))}-{file_digest(Path(labels_path))}-{mapping_text}"
        return Subject(
            subject_id, Path(image_path), original.labels.astype(np.uint8), spacing, "original", digest
        )
    folder = WorkDir(workdir)
    image, affine = read_nifti(folder.image(subject_id), kind="image")
    labels = read_nifti(folder.labels(subject_id), kind="labels")[0].astype(np.uint8)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))

    digest = f"prepared-{array_digest(image)}-{array_digest(labels)}"
    return Subject(subject_id, (image, affine), labels, spacing, "prepared", digest)


def split_subjects(workdir: Path) -> tuple[list[str], list[str], str]:
    """(subjects to segment, atlas subjects, "test" or "val")."""
    split = subject_split(workdir)
    if not split.train:
        raise ValueError(f"{workdir / 'split.json'} has no training subjects: no atlases to segment from")
    if split.test:
        return sorted(split.test), list(split.train), "test"
    if split.val:
        logger.warning(
            "%s has no test subjects: segmenting the %d validation subjects instead",
            workdir / "split.json",
            len(split.val),
        )
        return sorted(split.val), list(split.train), "val"
    raise ValueError(f"{workdir / 'split.json'} has neither test nor validation subjects: nothing to segment")


def _fused_outputs(fused: np.ndarray, prepared: Any, label_values: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Labels, uncertainty and probability of error on the image's grid, as segment() computes them."""
    probabilities = probabilities_to_original(fused, prepared.transform)
    return {
        "labels": argmax_labels(probabilities, label_values),
        "uncertainty": normalised_entropy(probabilities),
        "error_probability": np.clip(1.0 - probabilities.max(axis=0), 0.0, 1.0).astype(np.float32),
    }


def _views(
    image: np.ndarray, truth: np.ndarray, fused: Mapping[str, Mapping[str, np.ndarray]], spacing
) -> dict:
    """The short-axis slice (k) and long-axis cut (j) through the true LV's centre, of every map."""
    mask = np.isin(truth, (1, 2))
    centre = (
        [int(round(float(c.mean()))) for c in np.nonzero(mask)]
        if mask.any()
        else [n // 2 for n in truth.shape]
    )
    _, cj, ck = centre
    arrays: dict[str, np.ndarray] = {
        "spacing_mm": np.asarray(spacing, np.float64),
        "centre": np.asarray(centre),
        "image_sa": image[:, :, ck].astype(np.float32),
        "image_la": image[:, cj, :].astype(np.float32),
        "truth_sa": truth[:, :, ck].astype(np.uint8),
        "truth_la": truth[:, cj, :].astype(np.uint8),
    }
    for method, maps in fused.items():
        arrays[f"{method}_labels_sa"] = maps["labels"][:, :, ck].astype(np.uint8)
        arrays[f"{method}_labels_la"] = maps["labels"][:, cj, :].astype(np.uint8)
        arrays[f"{method}_uncertainty_sa"] = maps["uncertainty"][:, :, ck].astype(np.float32)
        arrays[f"{method}_uncertainty_la"] = maps["uncertainty"][:, cj, :].astype(np.float32)
    return arrays


def score_subject(
    subject: Subject,
    net: Any,
    atlases: Any,
    refinement: dict[str, Any] | None,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Segments one subject with every method; its record (scores, calibration, timings) and views."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    original, prepared, similarities, order, chosen = _prepared_and_ranked(subject, atlases, timings)
    registrations = {"": seg.register_atlases(net, prepared.image, chosen, symmetric=seg.DEFAULT_SYMMETRIC)}
    timings["register_warp"] = registrations[""].seconds
    if refinement is not None:
        registrations["_refined"], timings["refinement"] = refine_registrations(
            registrations[""], prepared.image, chosen, refinement, progress=progress
        )
    values = atlases.label_values
    scores: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    uncertainty_split: dict[str, Any] = {}
    fused_maps: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    base = timings["read"] + timings["align_prepare"] + timings["select"] + timings["register_warp"]
    for suffix, result in registrations.items():
        extra = timings.get("refinement", 0.0) if suffix else 0.0
        tick = time.perf_counter()
        lcc = seg.local_correlations(
            result.warped_images, prepared.image, atlases.grid.spacing_mm, seg.DEFAULT_LCC_SIGMA_MM
        )
        weights = seg.lcc_weights(lcc, seg.DEFAULT_SHARPNESS)
        lcc_s = time.perf_counter() - tick
        for fusion in ("majority", "weighted"):
            tick = time.perf_counter()
            fused = seg.fuse(result.probabilities, weights if fusion == "weighted" else None)
            maps = _fused_outputs(fused, prepared, values)
            method = fusion + suffix
            seconds[method] = (
                base + extra + (time.perf_counter() - tick) + (lcc_s if fusion == "weighted" else 0.0)
            )
            fused_maps[method] = maps
            scores[method], calibration[method], uncertainty_split[method] = _scored_maps(maps, subject)
        # each atlas alone: its warped labels' most probable label, on the image's grid
        tick = time.perf_counter()
        scores["single" + suffix] = _single_atlas_scores(result, prepared, values, subject, chosen)
        seconds["single" + suffix] = base + extra
        timings["single_atlas_scoring" + suffix] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    record = {
        "subject": subject.id,
        "source": subject.source,
        "atlases": [a.id for a in chosen.atlases],
        "similarities": [float(s) for s in similarities[order]],
        "reference_atlas": prepared.reference,
        "grid_inside_fraction": float(prepared.inside.mean()),
        "warnings": list(prepared.warnings),
        "scores": scores,
        "calibration": calibration,
        "uncertainty": uncertainty_split,
        "seconds": seconds,
        "timings_s": timings,
    }
    return record, _views(original.image, subject.truth, fused_maps, subject.spacing_mm)


def _prepared_and_ranked(subject: Subject, atlases: Any, timings: dict[str, float]) -> tuple[Any, ...]:
    """The subject's image read, put on the atlases' grid as segment() does with its defaults, and the
    atlases ranked by correlation with it: ``(original, prepared, similarities, order, chosen)``
    (``timings`` gains the seconds of each step)."""
    tick = time.perf_counter()
    original = read_image(subject.image)
    timings["read"] = time.perf_counter() - tick
    if original.image.shape != subject.truth.shape:
        raise ValueError(
            f"{subject.id}: its image {original.image.shape} and labels {subject.truth.shape} differ in shape"
        )
    # as segment() does with its defaults (tests/test_segmentation_evaluation.py compares the two)
    tick = time.perf_counter()
    prepared = prepare_target(original, atlases, references=DEFAULT_REFERENCES, rigid_initial="geometry")
    timings["align_prepare"] = time.perf_counter() - tick
    tick = time.perf_counter()
    similarities = seg.image_similarity(
        prepared.image, np.stack([a.image for a in atlases.atlases]), prepared.inside
    )
    if float(similarities.max()) < seg.DEFAULT_MIN_CORRELATION:
        raise ValueError(
            f"{subject.id}: no heart found: after the rigid alignment the image correlates with no atlas "
            "better "
            f"than {float(similarities.max()):.2f} (at least {seg.DEFAULT_MIN_CORRELATION:g} expected)"
        )
    order = np.argsort(-similarities, kind="stable")
    chosen = atlases.subset(order)
    timings["select"] = time.perf_counter() - tick
    return original, prepared, similarities, order, chosen


def _scored_maps(
    maps: Mapping[str, np.ndarray], subject: Subject
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One fused method's region scores, calibration counts and mean uncertainty where it is wrong and
    where it is right in the heart, against the subject's labels."""
    scores = region_scores(maps["labels"], subject.truth, subject.spacing_mm)
    wrong = maps["labels"] != subject.truth
    calibration = {
        "entropy": calibration_counts(maps["uncertainty"], wrong),
        "error_probability": calibration_counts(maps["error_probability"], wrong),
    }
    heart = (maps["labels"] > 0) | (subject.truth > 0)
    uncertainty = {
        "wrong": float(maps["uncertainty"][wrong].mean()) if wrong.any() else None,
        "right_heart": float(maps["uncertainty"][heart & ~wrong].mean()) if (heart & ~wrong).any() else None,
        "wrong_voxels": int(np.count_nonzero(wrong)),
        "heart_voxels": int(np.count_nonzero(heart)),
    }
    return scores, calibration, uncertainty


def _single_atlas_scores(
    result: Any, prepared: Any, values: tuple[int, ...], subject: Subject, chosen: Any
) -> dict[str, Any]:
    """Each atlas alone scored: its warped labels' most probable label, on the image's grid."""
    singles = [
        region_scores(
            argmax_labels(probabilities_to_original(p, prepared.transform), values),
            subject.truth,
            subject.spacing_mm,
        )
        for p in result.probabilities
    ]
    return {"per_atlas": {atlas.id: s for atlas, s in zip(chosen.atlases, singles, strict=True)}}
