"""Putting a pair of NIfTI images in their original geometry onto the model's grid, as training data were
prepared (:mod:`svfnet.data.prepare`): each image's canonical frame from its labels, or from the fixed
image's geometry and the rigid pre-alignment (:mod:`svfnet.registration.rigid`); the original images
are kept for writing results back on the fixed image's grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates

from svfnet.data.labels import LabelMapping
from svfnet.data.nifti import nifti_stem, read_nifti
from svfnet.data.prepare import (
    APEX_DIRECTION_RAS,
    PERCENTILES,
    RV_DIRECTION_RAS,
    CanonicalFrame,
    CommonGrid,
    canonical_frame,
    cohort_grid,
    heart_extent,
    prepare_subject,
    resample_image,
)
from svfnet.data.readers import Subject, SubjectFiles, load_subject, refuse_complex
from svfnet.data.transform import PreparedTransform, resample_labels
from svfnet.registration.rigid import RigidAlignment, rigid_prealignment

PREPARATION_PATHS = ("labels", "intensity")


@dataclass(frozen=True)
class OriginalImage:
    """One input image in its own geometry, as :func:`read_original` reads it.

    Attributes:
        image: ``(I0, J0, K0)`` float32, raw intensities.
        affine: ``(4, 4)`` voxel → world RAS+ mm.
        labels: ``(I0, J0, K0)`` uint8 in svfnet's values, or None.
        subject: the loaded subject when labels were given (what :func:`prepare_subject` takes).
        path, labels_path: the files.
    """

    image: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None
    subject: Subject | None
    path: Path
    labels_path: Path | None


def read_original(
    role: str, image_path: str | os.PathLike, labels_path: str | os.PathLike | None, mapping: LabelMapping
) -> OriginalImage:
    """Reads and checks one input (``role``: "moving" or "fixed", for messages).

    Raises:
        FileNotFoundError, ValueError: a missing, unreadable or non-3D file, labels that disagree
            with the image in shape or affine or are empty, a constant image.
    """
    image_path = Path(image_path)
    labels_path = Path(labels_path) if labels_path is not None else None
    if labels_path is not None:
        files = SubjectFiles(f"{role}:{nifti_stem(image_path)}", image_path, labels_path, mapping, "files")
        subject = load_subject(files)  # checks shape and affine agreement, non-empty labels
        image, affine, labels = subject.image, subject.affine, subject.labels
    else:
        refuse_complex(image_path, f"{role} image")
        image, affine = read_nifti(image_path, kind="image")
        subject, labels = None, None
    if float(image.max()) <= float(image.min()):
        raise ValueError(
            f"{image_path}: the {role} image is constant ({float(image.min())}): it cannot be registered"
        )
    return OriginalImage(image, affine, labels, subject, image_path, labels_path)


# ----------------------------------------------------------------------------- preparation
@dataclass(frozen=True)
class PreparedPair:
    """Both images on the model grid, and how they got there.

    Attributes:
        moving, fixed: ``(I, J, K)`` float32 in ``[0, 1]`` (the network's inputs).
        moving_labels, fixed_labels: ``(I, J, K)`` uint8 on the grid, or None.
        moving_transform, fixed_transform: prepared ↔ original (see :mod:`svfnet.data.transform`).
        path: ``"labels"`` or ``"intensity"``.
        rigid: the rigid pre-alignment (intensity path), else None.
        record: JSON-ready description (frames, grid, what decided them).
        warnings: things worth a look that did not stop preparation.
    """

    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray | None
    fixed_labels: np.ndarray | None
    moving_transform: PreparedTransform
    fixed_transform: PreparedTransform
    path: str
    rigid: RigidAlignment | None
    record: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def fixed_prepared_affine(self) -> np.ndarray:
        """``(4, 4)``: fixed prepared voxel → world RAS+ mm (the affine of every prepared output)."""
        return self.fixed_transform.original_affine @ self.fixed_transform.prepared_to_original_voxel

    @property
    def moving_prepared_affine(self) -> np.ndarray:
        """``(4, 4)``: moving prepared voxel → world RAS+ mm (of the moving image's world)."""
        return self.moving_transform.original_affine @ self.moving_transform.prepared_to_original_voxel

    @property
    def rigid_fixed_to_moving_world(self) -> np.ndarray:
        """``(4, 4)`` rigid map, fixed world → moving world, that the two prepared grids differ by."""
        return self.moving_prepared_affine @ np.linalg.inv(self.fixed_prepared_affine)


def moved_frame(frame: CanonicalFrame, matrix: np.ndarray, centre_from: str) -> CanonicalFrame:
    """``frame`` carried by the rigid world map ``matrix`` ``(4, 4)``."""
    return CanonicalFrame(
        matrix[:3, :3] @ frame.centre_mm + matrix[:3, 3],
        matrix[:3, :3] @ frame.axes,
        frame.long_axis_from,
        frame.apex_from,
        frame.in_plane_from,
        centre_from,
    )


def geometry_frame(image_shape: tuple[int, ...], affine: np.ndarray) -> CanonicalFrame:
    """A frame from an image's geometry alone: field-of-view centre, slice normal, anatomy.

    The long axis is the slice normal (a short-axis stack is planned on the LV long axis), its sense
    base → apex from the anatomical apex direction (else the slice order), the in-plane axis the
    anatomical LV → RV direction (else the image's ``i`` axis): the fallbacks of
    :func:`svfnet.data.prepare.canonical_frame`, which rely on the affine being a true RAS+ frame.
    """
    centre = affine[:3, :3] @ ((np.array(image_shape, np.float64) - 1.0) / 2.0) + affine[:3, 3]
    axis = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    anatomical = float(axis @ APEX_DIRECTION_RAS)
    apex_from = "anatomy" if abs(anatomical) >= 0.3 else "image"
    if anatomical < 0 and apex_from == "anatomy":
        axis = -axis
    rv = RV_DIRECTION_RAS - (RV_DIRECTION_RAS @ axis) * axis
    in_plane_from = "anatomy"
    if np.linalg.norm(rv) < 0.3:
        rv, in_plane_from = affine[:3, 0] - (affine[:3, 0] @ axis) * axis, "image"
    in_plane = rv / np.linalg.norm(rv)
    axes = np.stack([in_plane, np.cross(axis, in_plane), axis], axis=1)
    return CanonicalFrame(centre, axes, "slices", apex_from, in_plane_from, "field_of_view")


def prepare_image(
    original: OriginalImage, frame: CanonicalFrame, grid: CommonGrid, role: str
) -> tuple[np.ndarray, dict]:
    """Resamples an image without labels as :func:`prepare_subject` resamples a subject's image.

    Returns the ``(I, J, K)`` float32 image in ``[0, 1]`` and its transform record.
    """
    resampled = resample_image(original.image, original.affine, frame, grid)
    matrix, low, high = resampled.matrix, resampled.low, resampled.high
    record = {
        "id": f"{role}:{nifti_stem(original.path)}",
        "prepared_to_original_voxel": matrix.tolist(),
        "original_affine": original.affine.tolist(),
        "original_shape": list(original.image.shape),
        "prepared_shape": list(grid.shape),
        "spacing_mm": list(grid.spacing_mm),
        "grid": grid.record(),
        "frame": frame.record(),
        "intensity": {"method": "percentile", "percentiles": list(PERCENTILES), "low": low, "high": high},
        "source": {"image": str(original.path.resolve()), "labels": None},
        "outside_field_of_view_fraction": float(1.0 - np.mean(resampled.inside)),
    }
    return resampled.image, record


def prepare_one(
    original: OriginalImage, frame: CanonicalFrame, grid: CommonGrid, role: str
) -> tuple[np.ndarray, np.ndarray | None, PreparedTransform, float, list[str]]:
    """Image, labels, transform, outside-field-of-view fraction and warnings of one prepared input."""
    if original.subject is not None:
        prepared = prepare_subject(original.subject, frame, grid)
        outside = float(prepared.entry["outside_field_of_view_fraction"])
        warnings = [f"{role}: {w}" for w in prepared.entry["warnings"]]
        return (
            prepared.image,
            prepared.labels,
            PreparedTransform.from_record(prepared.transform),
            outside,
            warnings,
        )
    image, record = prepare_image(original, frame, grid, role)
    return image, None, PreparedTransform.from_record(record), record["outside_field_of_view_fraction"], []


# Below this fraction of the model grid inside an image's field of view, the image is refused.
MIN_GRID_COVERAGE = 0.1


# Two planned cardiac stacks rarely differ by more than this; beyond it the alignment may have failed.
LARGE_ROTATION_DEG = 30.0


def _frames(
    moving: OriginalImage,
    fixed: OriginalImage,
    grid_shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    rigid_initial: str,
    long_axis: str,
    warnings: list[str],
) -> tuple[str, CanonicalFrame, CanonicalFrame, CommonGrid, str, RigidAlignment | None]:
    """The pair's path ("labels" or "intensity"), the two canonical frames, the grid, where the frames came
    from and the rigid pre-alignment (None on the labels path); ``warnings`` gains a large rotation."""
    rigid: RigidAlignment | None = None
    if moving.subject is not None and fixed.subject is not None:
        path = "labels"
        moving_frame = canonical_frame(moving.labels, moving.affine, long_axis=long_axis)
        fixed_frame = canonical_frame(fixed.labels, fixed.affine, long_axis=long_axis)
        extents = [heart_extent(moving.subject, moving_frame), heart_extent(fixed.subject, fixed_frame)]
        grid = cohort_grid(extents, grid_shape, spacing_mm)
        frame_from = "labels of each image"
    else:
        path = "intensity"
        rigid = rigid_prealignment(
            moving.image, moving.affine, fixed.image, fixed.affine, initial=rigid_initial
        )
        to_moving = rigid.fixed_to_moving_world
        if (turned := rigid.record()["rotation_deg"]) > LARGE_ROTATION_DEG:
            warnings.append(
                f"the rigid pre-alignment turned the moving image by {turned:.0f}°: check the result"
            )
        if fixed.subject is not None:
            fixed_frame = canonical_frame(fixed.labels, fixed.affine, long_axis=long_axis)
            grid = cohort_grid([heart_extent(fixed.subject, fixed_frame)], grid_shape, spacing_mm)
            frame_from = "fixed labels"
        elif moving.subject is not None:
            reference = canonical_frame(moving.labels, moving.affine, long_axis=long_axis)
            fixed_frame = moved_frame(reference, np.linalg.inv(to_moving), "moving_labels_through_rigid")
            grid = cohort_grid([heart_extent(moving.subject, reference)], grid_shape, spacing_mm)
            frame_from = "moving labels, through the rigid transform"
        else:
            fixed_frame = geometry_frame(fixed.image.shape, fixed.affine)
            counts, spacing = np.array(grid_shape, np.float64), np.array(spacing_mm, np.float64)
            origin = -(counts - 1.0) / 2.0 * spacing  # the field-of-view centre on the grid centre
            grid = CommonGrid(tuple(grid_shape), tuple(spacing_mm), tuple(float(o) for o in origin))  # type: ignore[arg-type]
            frame_from = "fixed image geometry (field-of-view centre, slice normal, anatomy)"
        moving_frame = moved_frame(fixed_frame, to_moving, "rigid_prealignment")
    return path, moving_frame, fixed_frame, grid, frame_from, rigid


def _check_coverage(
    moving: OriginalImage,
    fixed: OriginalImage,
    moving_outside: float,
    fixed_outside: float,
    grid: CommonGrid,
    warnings: list[str],
) -> None:
    """Refuses an image that leaves too little of the grid in its field of view; ``warnings`` gains one
    that leaves more than half of it outside."""
    for role, original, outside in (("moving", moving, moving_outside), ("fixed", fixed, fixed_outside)):
        if 1.0 - outside < MIN_GRID_COVERAGE:
            raise ValueError(
                f"{original.path}: the {role} image cannot be prepared: only {100 * (1 - outside):.1f}% of "
                f"the model's grid ({'×'.join(map(str, grid.shape))} at "
                f"{' × '.join(f'{s:g}' for s in grid.spacing_mm)} mm) lies inside its field of view"
            )
        if outside > 0.5:
            warnings.append(
                f"{role}: {100 * outside:.0f}% of the model's grid lies outside the image's field of view"
            )


def prepare_pair(
    moving: OriginalImage,
    fixed: OriginalImage,
    grid_shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    *,
    rigid_initial: str = "geometry",
    long_axis: str = "slices",
) -> PreparedPair:
    """Puts a pair on the model grid (see the module's description of the two paths).

    Args:
        moving, fixed: the inputs (:func:`read_original`).
        grid_shape: the model's grid ``(I, J, K)``.
        spacing_mm: the model's voxel size.
        rigid_initial: start of the rigid pre-alignment (intensity path), see :func:`rigid_prealignment`.
        long_axis: how the long axis is found from labels (:func:`svfnet.data.prepare.canonical_frame`):
            the model's, as its training subjects were prepared.

    Raises:
        ValueError: an image cannot be prepared (the reason is given).
    """
    warnings: list[str] = []
    path, moving_frame, fixed_frame, grid, frame_from, rigid = _frames(
        moving, fixed, grid_shape, spacing_mm, rigid_initial, long_axis, warnings
    )
    moving_image, moving_labels, moving_transform, moving_outside, moving_warnings = prepare_one(
        moving, moving_frame, grid, "moving"
    )
    fixed_image, fixed_labels, fixed_transform, fixed_outside, fixed_warnings = prepare_one(
        fixed, fixed_frame, grid, "fixed"
    )
    warnings += moving_warnings + fixed_warnings
    _check_coverage(moving, fixed, moving_outside, fixed_outside, grid, warnings)
    record = {
        "path": path,
        "frame_from": frame_from,
        "grid": grid.record(),
        "moving_frame": moving_frame.record(),
        "fixed_frame": fixed_frame.record(),
        "moving_outside_field_of_view_fraction": moving_outside,
        "fixed_outside_field_of_view_fraction": fixed_outside,
        "moving_intensity": moving_transform.record["intensity"],
        "fixed_intensity": fixed_transform.record["intensity"],
    }
    if rigid is not None:
        record["rigid"] = rigid.record()
    return PreparedPair(
        moving_image,
        fixed_image,
        moving_labels,
        fixed_labels,
        moving_transform,
        fixed_transform,
        path,
        rigid,
        record,
        warnings,
    )


# ----------------------------------------------------------------------------- outputs
def sample_inside(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Trilinear samples at voxel ``positions`` ``(3, ...)``; 0 outside the field of view.

    Inside means within half a voxel of the voxel centres (the border voxels are clamped there),
    as in preparation and as ITK's linear interpolator reads an image.
    """
    shape = np.array(volume.shape, np.float64).reshape(3, *([1] * (positions.ndim - 1)))
    inside = np.all((positions >= -0.5) & (positions <= shape - 0.5), axis=0)
    values = map_coordinates(np.asarray(volume, np.float32), positions, order=1, mode="nearest")
    return np.where(inside, values, 0.0).astype(np.float32)


def labels_inside(labels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    shape = np.array(labels.shape, np.float64).reshape(3, *([1] * (positions.ndim - 1)))
    inside = np.all((positions >= -0.5) & (positions <= shape - 0.5), axis=0)
    return np.where(inside, resample_labels(labels, positions, mode="nearest"), 0).astype(np.uint8)


def world_points(affine: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """World mm of voxel positions ``(3, ...)``."""
    flat = positions.reshape(3, -1)
    return (affine[:3, :3] @ flat + affine[:3, 3:]).reshape(positions.shape)
