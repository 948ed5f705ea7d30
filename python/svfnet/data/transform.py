"""The transform recorded with every prepared subject, and mapping results back to the original image.

Three frames are involved:

- **original voxels** ``v`` of the input image (its affine ``A`` maps them to world mm);
- **prepared voxels** ``p`` of the common grid (the prepared NIfTI affine is ``diag(spacing_mm)``,
  so ``p · spacing`` are the "prepared mm" every later stage uses);
- **world mm** ``w``, the original image's scanner (patient) space.

``v = M · [p, 1]`` with ``M = prepared_to_original_voxel`` (4 × 4), and
``w = prepared_mm_to_world · [p · spacing, 1]``. Prepared intensities are
``clip((raw − low) / (high − low), 0, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates

from svfnet.common.workdir import WorkDir
from svfnet.ops.resample import sample_labels


@dataclass(frozen=True)
class PreparedTransform:
    """How one subject went from its original image to the common grid.

    Attributes:
        prepared_to_original_voxel: ``(4, 4)``: original voxel index of a prepared voxel index.
        original_affine: ``(4, 4)`` original voxel → world mm.
        original_shape: ``(I0, J0, K0)``.
        prepared_shape: ``(I, J, K)`` of the common grid.
        spacing_mm: the common grid's voxel size.
        intensity_low: raw intensity mapped to 0.
        intensity_high: raw intensity mapped to 1.
        record: the full JSON record (frame, grid, source, ...).
    """

    prepared_to_original_voxel: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    prepared_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    intensity_low: float
    intensity_high: float
    record: dict[str, Any]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PreparedTransform:
        """Builds it from the JSON record written by ``svfnet prepare``."""
        return cls(
            prepared_to_original_voxel=np.array(record["prepared_to_original_voxel"], dtype=np.float64),
            original_affine=np.array(record["original_affine"], dtype=np.float64),
            original_shape=tuple(int(n) for n in record["original_shape"]),  # type: ignore[arg-type]
            prepared_shape=tuple(int(n) for n in record["prepared_shape"]),  # type: ignore[arg-type]
            spacing_mm=tuple(float(s) for s in record["spacing_mm"]),  # type: ignore[arg-type]
            intensity_low=float(record["intensity"]["low"]),
            intensity_high=float(record["intensity"]["high"]),
            record=record,
        )

    @property
    def original_to_prepared_voxel(self) -> np.ndarray:
        """``(4, 4)``: prepared voxel index of an original voxel index."""
        return np.linalg.inv(self.prepared_to_original_voxel)

    @property
    def prepared_mm_to_world(self) -> np.ndarray:
        """``(4, 4)``: world mm of a prepared-mm position (prepared voxel · spacing)."""
        return (
            self.original_affine
            @ self.prepared_to_original_voxel
            @ np.diag([*(1.0 / np.array(self.spacing_mm)), 1.0])
        )

    def prepared_to_original_points(self, points_vox: np.ndarray) -> np.ndarray:
        """Original voxel positions of prepared voxel positions; ``(N, 3)`` → ``(N, 3)``."""
        points = np.asarray(points_vox, dtype=np.float64)
        return points @ self.prepared_to_original_voxel[:3, :3].T + self.prepared_to_original_voxel[:3, 3]

    def prepared_to_world_points(self, points_vox: np.ndarray) -> np.ndarray:
        """World mm of prepared voxel positions; ``(N, 3)`` → ``(N, 3)``."""
        original = self.prepared_to_original_points(points_vox)
        return original @ self.original_affine[:3, :3].T + self.original_affine[:3, 3]

    def raw_intensity(self, prepared_image: np.ndarray) -> np.ndarray:
        """Undoes the intensity normalisation (exact where the prepared value is inside (0, 1))."""
        return (
            np.asarray(prepared_image, dtype=np.float32) * (self.intensity_high - self.intensity_low)
            + self.intensity_low
        )


def read_transform(workdir: str | Path, subject_id: str) -> PreparedTransform:
    """Loads the recorded transform of a prepared subject."""
    import json

    path = WorkDir(workdir).transform(subject_id)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {subject_id!r} a prepared subject of {workdir}?)")
    return PreparedTransform.from_record(json.loads(path.read_text()))


def original_grid_in_prepared(transform: PreparedTransform) -> np.ndarray:
    """Prepared voxel positions of every original voxel; ``(3, I0, J0, K0)``."""
    grid = np.indices(transform.original_shape, dtype=np.float64).reshape(3, -1)
    inverse = transform.original_to_prepared_voxel
    return (inverse[:3, :3] @ grid + inverse[:3, 3:]).reshape(3, *transform.original_shape)


def to_original(
    volume: np.ndarray, transform: PreparedTransform, *, kind: str = "image", fill: float = 0.0
) -> np.ndarray:
    """Resamples a volume on the prepared grid back onto the subject's original image grid.

    Args:
        volume: ``(I, J, K)`` on the prepared grid (an image, a warped image, or labels).
        transform: the subject's :class:`PreparedTransform`.
        kind: ``"image"`` (trilinear) or ``"labels"`` (one-hot trilinear then argmax).
        fill: value outside the prepared grid (images; labels get 0).

    Returns:
        ``(I0, J0, K0)``: float32 for images, uint8 for labels.
    """
    volume = np.asarray(volume)
    if volume.shape != transform.prepared_shape:
        raise ValueError(
            f"to_original(): 'volume' must be {transform.prepared_shape} (the prepared grid), "
            f"got {volume.shape}"
        )
    if kind not in ("image", "labels"):
        raise ValueError(f"to_original(): 'kind' must be 'image' or 'labels', got {kind!r}")
    positions = original_grid_in_prepared(transform)
    if kind == "image":
        return map_coordinates(
            volume.astype(np.float32), positions, order=1, mode="constant", cval=fill
        ).astype(np.float32)
    return resample_labels(volume, positions)


def resample_labels(labels: np.ndarray, positions: np.ndarray, *, mode: str = "constant") -> np.ndarray:
    """Labels read at voxel positions by one-hot trilinear interpolation and argmax (the one vote of
    :func:`svfnet.ops.resample.sample_labels`, the compiled kernel ``warp_labels`` uses too).

    Args:
        labels: ``(I, J, K)`` integer labels.
        positions: ``(3, ...)`` voxel positions in ``labels`` (read in float32).
        mode: outside the grid, ``"constant"`` reads background, ``"nearest"`` the border voxel.

    Returns:
        uint8 labels of shape ``positions.shape[1:]``.
    """
    return np.asarray(sample_labels(np.asarray(labels), np.asarray(positions), mode=mode)).astype(
        np.uint8, copy=False
    )


def original_positions(disp: np.ndarray, fixed: PreparedTransform, moving: PreparedTransform) -> np.ndarray:
    """Carries a registration found on the prepared grid back to the original images.

    ``disp`` maps the fixed subject's prepared grid into the moving subject's prepared grid
    (``x ↦ x + disp(x)``, in prepared voxels, as every svfnet field). The result gives, for every
    voxel of the fixed subject's *original* image, its position in the moving subject's *original*
    voxels: ``scipy.ndimage.map_coordinates(moving_original, positions, order=1)`` is the moving
    original image warped onto the fixed original grid. Outside the prepared grid the field is
    clamped to its border.

    Args:
        disp: ``(3, I, J, K)`` displacement on the prepared grid (voxels).
        fixed: the fixed subject's transform.
        moving: the moving subject's transform.

    Returns:
        ``(3, I0, J0, K0)`` float64 positions in the moving original image (voxels).
    """
    disp = np.asarray(disp, dtype=np.float64)
    if disp.shape != (3, *fixed.prepared_shape):
        raise ValueError(
            f"original_positions(): 'disp' must be (3, {', '.join(map(str, fixed.prepared_shape))}), "
            f"got {disp.shape}"
        )
    if tuple(moving.prepared_shape) != tuple(fixed.prepared_shape):
        raise ValueError(
            "original_positions(): the fixed and moving transforms are for different prepared grids"
        )
    prepared = original_grid_in_prepared(fixed)
    flat = prepared.reshape(3, -1)
    moved = flat + np.stack([map_coordinates(c, flat, order=1, mode="nearest") for c in disp])
    matrix = moving.prepared_to_original_voxel
    return (matrix[:3, :3] @ moved + matrix[:3, 3:]).reshape(3, *fixed.original_shape)
