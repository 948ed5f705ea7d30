"""Rigid (Euler 3D) pre-alignment of a moving image to a fixed one by Mattes mutual information with
SimpleITK, restricted to a cylinder around the fixed stack's slice axis (where a planned cardiac stack
holds the heart); seeded, so that two runs of one pair agree. Used when label maps are not given.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

RIGID_INITS = ("geometry", "world")


# RAS+ (nibabel) ↔ LPS (ITK) world coordinates: x and y change sign
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- rigid pre-alignment
@dataclass(frozen=True)
class RigidAlignment:
    """A rigid transform from the fixed image's world to the moving image's world.

    Attributes:
        fixed_to_moving_world: ``(4, 4)``: ``[x_m, 1] = M · [x_f, 1]``, world RAS+ mm.
        metric: final Mattes mutual information (negative; lower is better).
        iterations: optimiser iterations at the last level.
        stop_condition: the optimiser's reason for stopping.
        initial: ``"geometry"`` (field-of-view centres aligned) or ``"world"`` (scanner coordinates).
        seconds: wall time.
    """

    fixed_to_moving_world: np.ndarray
    metric: float
    iterations: int
    stop_condition: str
    initial: str
    seconds: float

    def record(self) -> dict[str, Any]:
        rotation = self.fixed_to_moving_world[:3, :3]
        angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
        return {
            "fixed_to_moving_world_ras": self.fixed_to_moving_world.tolist(),
            "rotation_deg": angle,
            "translation_mm": float(np.linalg.norm(self.fixed_to_moving_world[:3, 3])),
            "metric": "mattes_mutual_information",
            "metric_value": self.metric,
            "iterations": self.iterations,
            "stop_condition": self.stop_condition,
            "initial": self.initial,
            "seconds": self.seconds,
        }


def simpleitk():
    import SimpleITK  # a dependency; imported here so that importing svfnet stays light

    return SimpleITK


def to_sitk(sitk, image: np.ndarray, affine: np.ndarray):
    """A SimpleITK image (LPS physical space) of a nibabel-style array and RAS+ affine."""
    result = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 1, 0)))
    linear = np.asarray(affine, np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    result.SetSpacing(spacing.tolist())
    result.SetDirection((RAS_TO_LPS @ linear / spacing).ravel().tolist())
    result.SetOrigin((RAS_TO_LPS @ np.asarray(affine, np.float64)[:3, 3]).tolist())
    return result


def heart_region_mask(shape: tuple[int, ...], affine: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the slice axis through the field-of-view centre; uint8 ``(I, J, K)``."""
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    offset = affine[:3, :3] @ (index - (np.array(shape, np.float64)[:, None] - 1.0) / 2.0)
    axis = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    across = offset - np.outer(axis, axis @ offset)
    return (np.linalg.norm(across, axis=0) <= radius_mm).reshape(shape).astype(np.uint8)


def _registration_method(sitk, mask, seed: int, threads: int | None):  # noqa: ANN001, ANN202
    """The SimpleITK registration :func:`rigid_prealignment` runs: Mattes mutual information over
    ``mask``, regular-step gradient descent, three levels."""
    method = sitk.ImageRegistrationMethod()
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=100, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _initial_transform(sitk, fixed_image, moving_image, initial: str):  # noqa: ANN001, ANN202
    """The Euler 3D start: field-of-view centres aligned (``"geometry"``) or the identity of the world
    frames, centred on the fixed image (``"world"``)."""
    if initial == "geometry":
        start = sitk.CenteredTransformInitializer(
            fixed_image,
            moving_image,
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.GEOMETRY,
        )
    else:
        start = sitk.Euler3DTransform()
        start.SetCenter(
            fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_image.GetSize()])
        )
    return start


def _ras_matrix(transform) -> np.ndarray:  # noqa: ANN001
    """The fixed-world (RAS+) to moving-world ``(4, 4)`` matrix of a SimpleITK (LPS) affine transform."""
    # the transform is affine: read its matrix off the images of the origin and the unit vectors
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.array(transform.TransformPoint(tuple(np.eye(3)[n]))) - origin for n in range(3)]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = np.stack(columns, axis=1), origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    ras = flip @ lps @ flip
    return ras


def rigid_prealignment(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    *,
    initial: str = "geometry",
    mask_radius_mm: float = 50.0,
    seed: int = 1,
    threads: int | None = None,
) -> RigidAlignment:
    """Rigidly aligns ``moving`` to ``fixed`` by mutual information (SimpleITK, Euler 3D).

    Three levels (shrink 4, 2, 1; smoothing 4, 2, 0 mm), Mattes mutual information (32 bins, 25%
    random samples with a fixed seed) over a cylinder of radius ``mask_radius_mm`` around the fixed
    stack's slice axis through its field-of-view centre (where a planned cardiac stack holds the
    heart: whole-chest alignment of two subjects drifts away from the heart), regular-step gradient
    descent with scales from physical shifts.

    Args:
        moving, fixed: ``(I, J, K)`` images, raw intensities.
        moving_affine, fixed_affine: ``(4, 4)`` voxel → world RAS+ mm.
        initial: ``"geometry"`` starts with the field-of-view centres aligned (works whatever the
            world frames); ``"world"`` starts from the scanner coordinates (both images in one
            patient frame).
        mask_radius_mm: radius of the metric's region.
        seed: metric sampling seed, at least 1 (SimpleITK reads 0 as "seed from the wall clock",
            which made two runs of one pair differ: the default was 0 until 2026-12-02).
        threads: SimpleITK threads for this registration (default: its global default).

    Returns:
        The transform from fixed world to moving world, with the optimiser's report.

    Raises:
        ValueError: the optimisation failed or diverged.
    """
    if initial not in RIGID_INITS:
        raise ValueError(f"rigid_prealignment(): 'initial' must be one of {RIGID_INITS}, got {initial!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 1:
        raise ValueError(
            f"rigid_prealignment(): 'seed' must be an integer >= 1 (0 is SimpleITK's wall clock), got {seed!r}"
        )
    sitk = simpleitk()
    started = time.perf_counter()
    fixed_image = to_sitk(sitk, fixed, fixed_affine)
    moving_image = to_sitk(sitk, moving, moving_affine)
    mask = sitk.GetImageFromArray(
        heart_region_mask(fixed.shape, fixed_affine, mask_radius_mm).transpose(2, 1, 0)
    )
    mask.CopyInformation(fixed_image)

    method = _registration_method(sitk, mask, seed, threads)
    start = _initial_transform(sitk, fixed_image, moving_image, initial)
    method.SetInitialTransform(start, inPlace=False)
    try:
        transform = method.Execute(fixed_image, moving_image)
    except RuntimeError as error:  # ITK exceptions (e.g. too few samples in the overlap)
        raise ValueError(f"the rigid pre-alignment failed: {str(error).strip().splitlines()[-1]}") from None
    ras = _ras_matrix(transform)
    metric = float(method.GetMetricValue())
    if not (np.all(np.isfinite(ras)) and math.isfinite(metric)):
        raise ValueError("the rigid pre-alignment diverged (non-finite transform or metric)")
    return RigidAlignment(
        ras,
        metric,
        int(method.GetOptimizerIteration()),
        method.GetOptimizerStopConditionDescription(),
        initial,
        time.perf_counter() - started,
    )
