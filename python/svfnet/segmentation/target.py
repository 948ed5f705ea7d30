"""The image to segment, put on the atlases' grid without labels: read (:func:`read_image`), rigidly
aligned to the most central atlases and resampled as a subject is prepared, the best alignment kept
(:func:`prepare_target`, step 1 of :mod:`svfnet.segmentation.multi_atlas`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.data.labels import IDENTITY_LABELS
from svfnet.data.transform import PreparedTransform
from svfnet.registration.prepare import (
    LARGE_ROTATION_DEG,
    MIN_GRID_COVERAGE,
    OriginalImage,
    moved_frame,
    prepare_image,
    read_original,
)
from svfnet.registration.rigid import rigid_prealignment
from svfnet.segmentation.atlases import Atlas, AtlasSet, central_atlases, image_similarity

__all__ = ["DEFAULT_REFERENCES", "PreparedTarget", "prepare_target", "read_image"]

# The image is rigidly aligned to this many of the most central atlases, the best alignment kept.
DEFAULT_REFERENCES = 3


@dataclass(frozen=True)
class PreparedTarget:
    """The new image on the atlases' grid, and how it got there.

    Attributes:
        image: ``(I, J, K)`` float32 in ``[0, 1]``.
        inside: ``(I, J, K)`` bool: grid voxels inside the image's field of view.
        transform: prepared grid ↔ the image's original grid.
        reference: the id of the atlas it was rigidly aligned to.
        rigid: the rigid alignment's record (:meth:`svfnet.registration.rigid.RigidAlignment.record`).
        record: JSON-ready description (frame, grid, intensity, reference, rigid).
        warnings: things worth a look that did not stop it.
    """

    image: np.ndarray
    inside: np.ndarray
    transform: PreparedTransform
    reference: str
    rigid: dict[str, Any]
    record: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _inside_mask(transform: PreparedTransform) -> np.ndarray:
    """Prepared voxels within half a voxel of the original image's voxel centres (as preparation reads)."""
    matrix = transform.prepared_to_original_voxel
    index = np.indices(transform.prepared_shape, dtype=np.float64).reshape(3, -1)
    positions = matrix[:3, :3] @ index + matrix[:3, 3:]
    shape = np.array(transform.original_shape, np.float64)[:, None]
    return np.all((positions >= -0.5) & (positions <= shape - 0.5), axis=0).reshape(transform.prepared_shape)


@dataclass(frozen=True)
class _Alignment:
    atlas: Atlas
    rigid: Any
    image: np.ndarray
    record: dict[str, Any]
    transform: PreparedTransform
    inside: np.ndarray
    score: float


def _align_to(original, atlases: AtlasSet, index: int, rigid_initial: str) -> _Alignment:
    """The image aligned to atlas ``index`` and resampled; ``score``: its mean NCC with all atlases."""
    atlas = atlases.atlases[index]
    # seed 1: SimpleITK reads a seed of 0 as "from the wall clock", and the alignment of one image
    # then differed from run to run; with a fixed seed (and one thread, as fast on this grid) runs
    # agree to rounding
    rigid = rigid_prealignment(
        original.image,
        original.affine,
        atlas.image,
        atlas.prepared_affine,
        initial=rigid_initial,
        seed=1,
        threads=1,
    )
    frame = moved_frame(atlas.frame, rigid.fixed_to_moving_world, f"rigid alignment to atlas {atlas.id}")
    image, record = prepare_image(original, frame, atlases.grid, "image")
    transform = PreparedTransform.from_record(record)
    inside = _inside_mask(transform)
    images = np.stack([a.image for a in atlases.atlases])
    score = float(image_similarity(image, images, inside).mean()) if inside.any() else -1.0
    return _Alignment(atlas, rigid, image, record, transform, inside, score)


def _best_alignment(
    original,  # noqa: ANN001
    atlases: AtlasSet,
    candidates: list[int],
    rigid_initial: str,
) -> tuple[_Alignment, list[dict[str, Any]]]:
    """The alignment to one of the ``candidates`` atlases whose image correlates best with all the atlases,
    and a record of each one tried; ValueError (no heart found) where none succeeds."""
    grid = atlases.grid
    tried: list[dict[str, Any]] = []
    failures: list[str] = []
    best: _Alignment | None = None
    for index in candidates:
        atlas_id = atlases.atlases[index].id
        try:
            alignment = _align_to(original, atlases, index, rigid_initial)
        except ValueError as error:
            failures.append(f"{error} (aligning to atlas {atlas_id})")
            continue
        coverage = float(alignment.inside.mean())
        tried.append(
            {
                "atlas": atlas_id,
                "mean_correlation": alignment.score,
                "grid_inside_fraction": coverage,
                "metric_value": alignment.rigid.metric,
            }
        )
        if coverage < MIN_GRID_COVERAGE:
            failures.append(
                f"only {100 * coverage:.1f}% of the atlases' grid ({'×'.join(map(str, grid.shape))} at "
                f"{' × '.join(f'{s:g}' for s in grid.spacing_mm)} mm) lies inside its field of view after "
                f"the rigid alignment to atlas {atlas_id}"
            )
            continue
        if best is None or alignment.score > best.score:
            best = alignment
    if best is None:
        raise ValueError(f"{original.path}: no heart found: {failures[0]}")
    return best, tried


def prepare_target(
    original,
    atlases: AtlasSet,
    *,
    references: int = DEFAULT_REFERENCES,
    reference: int | None = None,
    rigid_initial: str = "geometry",
) -> PreparedTarget:
    """Puts an image without labels on the atlases' grid, in their canonical frame.

    The image is rigidly aligned to the prepared image of each of the ``references`` most central
    atlases (:func:`central_atlases`) by :func:`svfnet.registration.rigid.rigid_prealignment` (the
    prepared image in the atlas's world, so that the metric's cylinder around the slice axis
    surrounds the heart); each alignment carries that atlas's canonical frame to the image, which is
    resampled and normalised as in preparation. The alignment kept is the one whose resampled image
    correlates best on average with all the atlases: one alignment to one atlas lands far off now and
    then (on the synthetic cohort, 1 in 6 ended 70–85 mm from the heart), and the mean correlation
    tells (it was then negative).

    Args:
        original: :class:`svfnet.registration.prepare.OriginalImage` (``read_original``).
        atlases: the atlases.
        references: how many atlases to try aligning to.
        reference: align to this atlas only (an index), instead.
        rigid_initial: ``"geometry"`` or ``"world"`` (see ``rigid_prealignment``).

    Raises:
        ValueError: every rigid alignment fails, or leaves too little of the grid in the field of view.
    """
    if reference is not None:
        candidates = [int(reference)]
    else:
        if isinstance(references, bool) or not isinstance(references, int) or references < 1:
            raise ValueError(f"prepare_target(): 'references' must be a positive integer, got {references!r}")
        candidates = [int(i) for i in central_atlases(atlases)[:references]]
    best, tried = _best_alignment(original, atlases, candidates, rigid_initial)
    coverage = float(best.inside.mean())
    warnings = []
    rigid_record = best.rigid.record()
    if rigid_record["rotation_deg"] > LARGE_ROTATION_DEG:
        warnings.append(
            f"the rigid alignment turned the image by {rigid_record['rotation_deg']:.0f}° from atlas "
            f"{best.atlas.id}: check the result"
        )
    if coverage < 0.5:
        warnings.append(
            f"{100 * (1 - coverage):.0f}% of the atlases' grid lies outside the image's field of view"
        )
    record = {
        **best.record,
        "reference_atlas": best.atlas.id,
        "rigid": rigid_record,
        "grid_inside_fraction": coverage,
        "alignments_tried": tried,
    }
    return PreparedTarget(
        best.image, best.inside, best.transform, best.atlas.id, rigid_record, record, warnings
    )


def read_image(image) -> Any:
    """The image to segment as an :class:`svfnet.registration.prepare.OriginalImage`: a NIfTI path, or an
    ``(array, affine)`` pair checked (3D, finite, not constant; a finite invertible affine)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        return read_original("image", path, None, dict(IDENTITY_LABELS))
    if isinstance(image, tuple) and len(image) == 2:
        array = np.asarray(image[0], np.float32)
        affine = np.asarray(image[1], np.float64)
        if array.ndim != 3 or min(array.shape) < 2:
            raise ValueError(f"segment(): 'image' must be a 3D volume, got an array of shape {array.shape}")
        if (
            affine.shape != (4, 4)
            or not np.all(np.isfinite(affine))
            or abs(np.linalg.det(affine[:3, :3])) < 1e-9
        ):
            raise ValueError("segment(): the image's affine must be a finite, invertible (4, 4) matrix")
        if not np.all(np.isfinite(array)):
            raise ValueError("segment(): 'image' holds NaN or infinite values")
        if float(array.max()) <= float(array.min()):
            raise ValueError(f"segment(): 'image' is constant ({float(array.min())}): nothing to segment")
        return OriginalImage(array, affine, None, None, Path("image"), None)
    raise TypeError(
        f"segment(): 'image' must be a NIfTI path or an (array, affine) pair, got {type(image).__name__}"
    )
