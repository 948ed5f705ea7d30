"""Registering NIfTI images in their original geometry (the ``svfnet register`` command).

A pair of images as they come from the scanner is put on the model's grid with the preparation
training data went through (:mod:`svfnet.data.prepare`), registered by :func:`svfnet.register`
(network, exponential, warp), and the results are written both on that grid and on the fixed
image's original grid, including the displacement in the ITK convention. See docs/register.md.

Two preparation paths:

- ``"labels"`` (label maps for both images, as in the paper): each image gets its canonical frame
  from its own labels (LV centre, long axis base → apex, RV direction) and is resampled exactly as
  ``svfnet prepare`` does; the grid (the model's shape and spacing) is centred on the union of the
  two hearts, so both LV centres land on one voxel.
- ``"intensity"`` (otherwise): a rigid (Euler 3D) pre-alignment of the moving image to the fixed
  one by Mattes mutual information with SimpleITK, restricted to a cylinder around the fixed
  stack's slice axis (where a planned cardiac stack holds the heart). The fixed image's frame comes
  from the fixed labels if given, else from the moving labels carried through the rigid transform,
  else from the fixed image's geometry: the centre of its field of view, its slice normal as the
  long axis (sense and in-plane direction from anatomy, as :func:`canonical_frame` falls back to).
  The moving frame is the fixed one moved by the rigid transform.

Frames used here: *original voxels* of each input, *world* mm (RAS+, the headers read as ITK reads them:
:func:`svfnet.data.nifti.nifti_geometry`), and
*prepared voxels* of the model grid; every field on the prepared grid is in svfnet's convention
(``(3, I, J, K)`` in voxels, pull-back: ``x ↦ x + u(x)`` maps a fixed voxel into the moving image).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import map_coordinates

from svfnet import default_device
from svfnet._io import atomic_path, write_json
from svfnet.data.labels import IDENTITY_LABELS, LabelMapping, format_label_mapping
from svfnet.data.nifti import nifti_image, nifti_stem, read_geometry, read_nifti, vector_image
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
from svfnet.data.transform import PreparedTransform, original_positions, resample_labels
from svfnet.locks import prefix_lock
from svfnet.model import SVFNet, load
from svfnet.registration import Registration, refinement_params, register

__all__ = [
    "BatchResult",
    "NiftiRegistration",
    "OriginalImage",
    "PairFiles",
    "PreparedPair",
    "RigidAlignment",
    "output_paths",
    "prepare_pair",
    "read_original",
    "read_pairs",
    "register_nifti",
    "register_pairs",
    "rigid_prealignment",
    "write_itk_displacement",
]

logger = logging.getLogger(__name__)

PREPARATION_PATHS = ("labels", "intensity")
RIGID_INITS = ("geometry", "world")
# RAS+ (nibabel) ↔ LPS (ITK) world coordinates: x and y change sign
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

# Output files, by key: (file suffix after PREFIX, grid, description). The JSON metadata repeats it.
OUTPUTS: dict[str, tuple[str, str, str]] = {
    "warped": (
        "warped.nii.gz",
        "prepared",
        "moving image warped onto the fixed prepared grid, intensities in [0, 1]",
    ),
    "warped_labels": ("warped_labels.nii.gz", "prepared", "moving labels warped (one-hot), uint8"),
    "svf": ("svf.nii.gz", "prepared", "SVF, (I, J, K, 3): components (i, j, k) in prepared voxels"),
    "displacement": (
        "displacement.nii.gz",
        "prepared",
        "exp(SVF), (I, J, K, 3) in prepared voxels: fixed voxel x maps to moving prepared voxel x + u(x)",
    ),
    "fixed_prepared": ("fixed_prepared.nii.gz", "prepared", "the fixed image as the network saw it"),
    "moving_prepared": (
        "moving_prepared.nii.gz",
        "moving_prepared",
        "the moving image as the network saw it (on the moving image's own prepared grid)",
    ),
    "warped_original": (
        "warped_original.nii.gz",
        "original",
        "moving image (its raw intensities) resampled onto the fixed original grid, one interpolation",
    ),
    "warped_labels_original": (
        "warped_labels_original.nii.gz",
        "original",
        "moving labels resampled onto the fixed original grid (one-hot), uint8",
    ),
    "svf_original": (
        "svf_original.nii.gz",
        "original",
        "SVF as a world velocity, (I0, J0, K0, 3) RAS+ mm; full map = rigid_fixed_to_moving_world ∘ exp(svf)",
    ),
    "displacement_original": (
        "displacement_original.nii.gz",
        "original",
        "displacement, (I0, J0, K0, 3) RAS+ mm: fixed world point w maps to moving world point w + d(w)",
    ),
    "displacement_itk": (
        "displacement_itk.nii.gz",
        "original",
        "the same displacement in the ITK convention: LPS mm, 5D (I0, J0, K0, 1, 3), intent VECTOR",
    ),
    "metadata": ("registration.json", "", "this file: inputs, path taken, frames, timings, outputs"),
}
_LABEL_OUTPUTS = ("warped_labels", "warped_labels_original")


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class PairFiles:
    """One pair to register, as files.

    Attributes:
        moving, fixed: 3D NIfTI images.
        out_prefix: output prefix (``PREFIX_warped.nii.gz``...; a folder, or a prefix ending in
            ``/``, gets ``folder/warped.nii.gz``...).
        moving_labels, fixed_labels: optional label maps on the images' grids.
    """

    moving: Path
    fixed: Path
    out_prefix: str
    moving_labels: Path | None = None
    fixed_labels: Path | None = None

    def missing_files(self) -> list[Path]:
        return [
            p
            for p in (self.moving, self.fixed, self.moving_labels, self.fixed_labels)
            if p and not p.is_file()
        ]


def read_pairs(path: str | os.PathLike) -> list[PairFiles]:
    """Reads a batch file: CSV with a header ``moving,fixed,out_prefix[,moving_labels,fixed_labels]``.

    ``out`` is accepted for ``out_prefix``; empty label cells mean no labels; relative paths are
    relative to the CSV file's folder; ``#`` starts a comment line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column or cell, an unknown column, or two rows with one output prefix
            (the message gives the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    base = path.parent
    with path.open(newline="") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    columns = [c.strip() for c in reader.fieldnames or []]
    aliases = {"out": "out_prefix", "output": "out_prefix", "prefix": "out_prefix"}
    columns = [aliases.get(c, c) for c in columns]
    allowed = {"moving", "fixed", "out_prefix", "moving_labels", "fixed_labels"}
    if unknown := sorted(set(columns) - allowed):
        raise ValueError(f"{path}: unknown columns {unknown} (expected {sorted(allowed)})")
    if missing := sorted({"moving", "fixed", "out_prefix"} - set(columns)):
        raise ValueError(
            f"{path}: the header lacks the columns {missing} "
            "(expected moving,fixed,out_prefix[,moving_labels,fixed_labels])"
        )
    reader.fieldnames = columns

    def resolve(text: str | None) -> Path | None:
        text = (text or "").strip()
        if not text:
            return None
        candidate = Path(text).expanduser()
        return candidate if candidate.is_absolute() else base / candidate

    pairs: list[PairFiles] = []
    seen: dict[str, int] = {}
    for line_number, row in enumerate(reader, start=2):
        if None in row:
            raise ValueError(f"{path}, row {line_number}: more cells than columns")
        cells = {k: resolve(v) for k, v in row.items()}
        for required in ("moving", "fixed", "out_prefix"):
            if cells[required] is None:
                raise ValueError(f"{path}, row {line_number}: the '{required}' cell is empty")
        prefix_text = (row["out_prefix"] or "").strip()
        prefix = str(cells["out_prefix"]) + ("/" if prefix_text.endswith(("/", os.sep)) else "")
        if prefix in seen:
            raise ValueError(
                f"{path}, row {line_number}: output prefix {prefix_text!r} repeats row {seen[prefix]}"
            )
        seen[prefix] = line_number
        pairs.append(
            PairFiles(
                cells["moving"], cells["fixed"], prefix, cells.get("moving_labels"), cells.get("fixed_labels")
            )
        )
    if not pairs:
        raise ValueError(f"{path}: no pairs listed")
    return pairs


def output_paths(out_prefix: str | os.PathLike, *, with_labels: bool) -> dict[str, Path]:
    """The files one registration writes, by key (see ``OUTPUTS``).

    ``PREFIX`` naming: ``PREFIX_warped.nii.gz``; a prefix that is an existing folder or ends in a
    path separator names files inside it (``PREFIX/warped.nii.gz``).
    """
    text = os.fspath(out_prefix)
    if not text:
        raise ValueError("the output prefix is empty")
    as_folder = text.endswith(("/", os.sep)) or Path(text).is_dir()
    keys = [k for k in OUTPUTS if with_labels or k not in _LABEL_OUTPUTS]
    if as_folder:
        return {k: Path(text) / OUTPUTS[k][0] for k in keys}
    return {k: Path(f"{text}_{OUTPUTS[k][0]}") for k in keys}


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


def _simpleitk():
    import SimpleITK  # a dependency; imported here so that importing svfnet stays light

    return SimpleITK


def _to_sitk(sitk, image: np.ndarray, affine: np.ndarray):
    """A SimpleITK image (LPS physical space) of a nibabel-style array and RAS+ affine."""
    result = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 1, 0)))
    linear = np.asarray(affine, np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    result.SetSpacing(spacing.tolist())
    result.SetDirection((RAS_TO_LPS @ linear / spacing).ravel().tolist())
    result.SetOrigin((RAS_TO_LPS @ np.asarray(affine, np.float64)[:3, 3]).tolist())
    return result


def _heart_region_mask(shape: tuple[int, ...], affine: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the slice axis through the field-of-view centre; uint8 ``(I, J, K)``."""
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    offset = affine[:3, :3] @ (index - (np.array(shape, np.float64)[:, None] - 1.0) / 2.0)
    axis = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    across = offset - np.outer(axis, axis @ offset)
    return (np.linalg.norm(across, axis=0) <= radius_mm).reshape(shape).astype(np.uint8)


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
    sitk = _simpleitk()
    started = time.perf_counter()
    fixed_image = _to_sitk(sitk, fixed, fixed_affine)
    moving_image = _to_sitk(sitk, moving, moving_affine)
    mask = sitk.GetImageFromArray(
        _heart_region_mask(fixed.shape, fixed_affine, mask_radius_mm).transpose(2, 1, 0)
    )
    mask.CopyInformation(fixed_image)

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
    method.SetInitialTransform(start, inPlace=False)
    try:
        transform = method.Execute(fixed_image, moving_image)
    except RuntimeError as error:  # ITK exceptions (e.g. too few samples in the overlap)
        raise ValueError(f"the rigid pre-alignment failed: {str(error).strip().splitlines()[-1]}") from None

    # the transform is affine: read its matrix off the images of the origin and the unit vectors
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.array(transform.TransformPoint(tuple(np.eye(3)[n]))) - origin for n in range(3)]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = np.stack(columns, axis=1), origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    ras = flip @ lps @ flip
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


def _moved_frame(frame: CanonicalFrame, matrix: np.ndarray, centre_from: str) -> CanonicalFrame:
    """``frame`` carried by the rigid world map ``matrix`` ``(4, 4)``."""
    return CanonicalFrame(
        matrix[:3, :3] @ frame.centre_mm + matrix[:3, 3],
        matrix[:3, :3] @ frame.axes,
        frame.long_axis_from,
        frame.apex_from,
        frame.in_plane_from,
        centre_from,
    )


def _geometry_frame(image_shape: tuple[int, ...], affine: np.ndarray) -> CanonicalFrame:
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


def _prepare_image(
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


def _prepare_one(
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
    image, record = _prepare_image(original, frame, grid, role)
    return image, None, PreparedTransform.from_record(record), record["outside_field_of_view_fraction"], []


# Below this fraction of the model grid inside an image's field of view, the image is refused.
_MIN_GRID_COVERAGE = 0.1
# Two planned cardiac stacks rarely differ by more than this; beyond it the alignment may have failed.
_LARGE_ROTATION_DEG = 30.0


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
        if (turned := rigid.record()["rotation_deg"]) > _LARGE_ROTATION_DEG:
            warnings.append(
                f"the rigid pre-alignment turned the moving image by {turned:.0f}°: check the result"
            )
        if fixed.subject is not None:
            fixed_frame = canonical_frame(fixed.labels, fixed.affine, long_axis=long_axis)
            grid = cohort_grid([heart_extent(fixed.subject, fixed_frame)], grid_shape, spacing_mm)
            frame_from = "fixed labels"
        elif moving.subject is not None:
            reference = canonical_frame(moving.labels, moving.affine, long_axis=long_axis)
            fixed_frame = _moved_frame(reference, np.linalg.inv(to_moving), "moving_labels_through_rigid")
            grid = cohort_grid([heart_extent(moving.subject, reference)], grid_shape, spacing_mm)
            frame_from = "moving labels, through the rigid transform"
        else:
            fixed_frame = _geometry_frame(fixed.image.shape, fixed.affine)
            counts, spacing = np.array(grid_shape, np.float64), np.array(spacing_mm, np.float64)
            origin = -(counts - 1.0) / 2.0 * spacing  # the field-of-view centre on the grid centre
            grid = CommonGrid(tuple(grid_shape), tuple(spacing_mm), tuple(float(o) for o in origin))  # type: ignore[arg-type]
            frame_from = "fixed image geometry (field-of-view centre, slice normal, anatomy)"
        moving_frame = _moved_frame(fixed_frame, to_moving, "rigid_prealignment")

    moving_image, moving_labels, moving_transform, moving_outside, moving_warnings = _prepare_one(
        moving, moving_frame, grid, "moving"
    )
    fixed_image, fixed_labels, fixed_transform, fixed_outside, fixed_warnings = _prepare_one(
        fixed, fixed_frame, grid, "fixed"
    )
    warnings += moving_warnings + fixed_warnings
    for role, original, outside in (("moving", moving, moving_outside), ("fixed", fixed, fixed_outside)):
        if 1.0 - outside < _MIN_GRID_COVERAGE:
            raise ValueError(
                f"{original.path}: the {role} image cannot be prepared: only {100 * (1 - outside):.1f}% of "
                f"the model's grid ({'×'.join(map(str, grid.shape))} at "
                f"{' × '.join(f'{s:g}' for s in grid.spacing_mm)} mm) lies inside its field of view"
            )
        if outside > 0.5:
            warnings.append(
                f"{role}: {100 * outside:.0f}% of the model's grid lies outside the image's field of view"
            )
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
def _sample_inside(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Trilinear samples at voxel ``positions`` ``(3, ...)``; 0 outside the field of view.

    Inside means within half a voxel of the voxel centres (the border voxels are clamped there),
    as in preparation and as ITK's linear interpolator reads an image.
    """
    shape = np.array(volume.shape, np.float64).reshape(3, *([1] * (positions.ndim - 1)))
    inside = np.all((positions >= -0.5) & (positions <= shape - 0.5), axis=0)
    values = map_coordinates(np.asarray(volume, np.float32), positions, order=1, mode="nearest")
    return np.where(inside, values, 0.0).astype(np.float32)


def _labels_inside(labels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    shape = np.array(labels.shape, np.float64).reshape(3, *([1] * (positions.ndim - 1)))
    inside = np.all((positions >= -0.5) & (positions <= shape - 0.5), axis=0)
    return np.where(inside, resample_labels(labels, positions, mode="nearest"), 0).astype(np.uint8)


def _world(affine: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """World mm of voxel positions ``(3, ...)``."""
    flat = positions.reshape(3, -1)
    return (affine[:3, :3] @ flat + affine[:3, 3:]).reshape(positions.shape)


def write_itk_displacement(
    path: str | os.PathLike, displacement_ras_mm: np.ndarray, affine: np.ndarray
) -> None:
    """Writes a displacement field as ITK, ANTs and SimpleITK read it, atomically.

    Args:
        path: ``.nii.gz`` destination.
        displacement_ras_mm: ``(3, I, J, K)``: world RAS+ mm; point ``w`` of the grid maps to ``w + d``.
        affine: ``(4, 4)`` voxel → world RAS+ mm of the grid (the field's geometry in the file).

    The file holds LPS millimetres (x and y negated) in a 5D ``(I, J, K, 1, 3)`` float32 NIfTI with
    intent code 1007 (VECTOR), as ITK writes displacement fields and reads them unchanged
    (``sitk.DisplacementFieldTransform(sitk.ReadImage(path, sitk.sitkVectorFloat64))``).
    """
    lps = np.einsum("ab,b...->a...", RAS_TO_LPS, np.asarray(displacement_ras_mm, np.float64))
    with atomic_path(path) as temporary:
        nib.save(vector_image(lps, affine, itk=True, name="LPS mm"), str(temporary))


# ----------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class NiftiRegistration:
    """What :func:`register_nifti` did.

    Attributes:
        registration: the result on the fixed prepared grid (:class:`svfnet.registration.Registration`).
        prepared: the prepared pair (both images on the grid, transforms, path taken).
        positions: ``(3, I0, J0, K0)`` moving original voxel of every fixed original voxel.
        displacement_original_mm: ``(3, I0, J0, K0)`` world RAS+ mm (fixed world → moving world).
        outputs: written files by key (see ``OUTPUTS``).
        metadata: the JSON metadata (also written as ``outputs["metadata"]``).
    """

    registration: Registration
    prepared: PreparedPair
    positions: np.ndarray
    displacement_original_mm: np.ndarray
    outputs: dict[str, Path]
    metadata: dict[str, Any]

    @property
    def path(self) -> str:
        """``"labels"`` or ``"intensity"``: how the pair was put on the grid."""
        return self.prepared.path


def _load_model(model: SVFNet | str | os.PathLike, device: str | torch.device | None) -> SVFNet:
    if isinstance(model, SVFNet):
        return model.eval()
    if isinstance(model, (str, os.PathLike)):
        return load(model, device or default_device())
    raise TypeError(f"'model' must be an SVFNet or a checkpoint path, got {type(model).__name__}")


def register_nifti(
    moving: str | os.PathLike,
    fixed: str | os.PathLike,
    model: SVFNet | str | os.PathLike,
    out_prefix: str | os.PathLike | None,
    *,
    moving_labels: str | os.PathLike | None = None,
    fixed_labels: str | os.PathLike | None = None,
    label_mapping: LabelMapping | None = None,
    rigid_initial: str = "geometry",
    overwrite: bool = False,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    refine: bool | Mapping[str, Any] = False,
) -> NiftiRegistration:
    """Registers two NIfTI images in their original geometry and writes the results.

    Args:
        moving, fixed: 3D NIfTI images (any orientation and voxel size).
        model: a loaded :class:`SVFNet` or a checkpoint path (loaded on ``device``).
        out_prefix: output prefix (see :func:`output_paths`); ``None`` writes nothing.
        moving_labels, fixed_labels: label maps on the images' grids. Both given: the ``"labels"``
            path; otherwise the ``"intensity"`` path (and a single label map still helps, see the
            module's description). Moving labels are warped along.
        label_mapping: ``{file value: svfnet value}`` for the label maps (default svfnet's own values).
        rigid_initial: ``"geometry"`` or ``"world"`` (see :func:`rigid_prealignment`).
        overwrite: replace existing outputs (else FileExistsError before any work). The new files
            are written beside the old ones and take their names only once all are written.
        device: where to load a checkpoint (default CUDA when available, else CPU).
        checkpoint: the checkpoint a loaded ``model`` came from, for the metadata.
        refine: refine SVF-Net's SVF with LCC Log-Demons started from it, on the prepared grid
            (see :func:`svfnet.registration.register`; True or a mapping of demons parameters).

    Returns:
        The result; ``outputs`` and ``metadata`` list what was written.

    The output prefix is locked while the pair is registered (``PREFIX.svfnet.lock``, see
    :mod:`svfnet.locks`): two processes writing one prefix would mix their files.

    Raises:
        FileNotFoundError: an input is missing.
        FileExistsError: an output exists and ``overwrite`` is false.
        svfnet.locks.FolderLocked: another process is writing this output prefix.
        ValueError: an input that is unreadable, not 3D, disagrees with its labels, or cannot be
            prepared; a bad checkpoint. Nothing is written then.
    """
    started = time.perf_counter()
    refinement_params(refine, "register_nifti()")  # checked before any work
    pair = PairFiles(
        Path(moving),
        Path(fixed),
        os.fspath(out_prefix) if out_prefix is not None else "",
        Path(moving_labels) if moving_labels is not None else None,
        Path(fixed_labels) if fixed_labels is not None else None,
    )
    mapping = dict(label_mapping) if label_mapping is not None else dict(IDENTITY_LABELS)
    outputs = (
        output_paths(pair.out_prefix, with_labels=pair.moving_labels is not None)
        if out_prefix is not None
        else {}
    )
    with contextlib.ExitStack() as stack:
        if out_prefix is not None:  # one writer per output prefix (:mod:`svfnet.locks`)
            stack.enter_context(prefix_lock(pair.out_prefix))
        _check_pair(pair, outputs, overwrite)
        return _register_nifti(pair, model, outputs, mapping, rigid_initial, device, checkpoint, started, refine)


def _register_nifti(
    pair: PairFiles,
    model: SVFNet | str | os.PathLike,
    outputs: dict[str, Path],
    mapping: LabelMapping,
    rigid_initial: str,
    device: str | torch.device | None,
    checkpoint: str | os.PathLike | None,
    started: float,
    refine: bool | Mapping[str, Any] = False,
) -> NiftiRegistration:
    net = _load_model(model, device)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    moving_original = read_original("moving", pair.moving, pair.moving_labels, mapping)
    fixed_original = read_original("fixed", pair.fixed, pair.fixed_labels, mapping)
    timings["read"] = time.perf_counter() - tick

    tick = time.perf_counter()
    prepared = prepare_pair(
        moving_original,
        fixed_original,
        net.config.grid,
        net.config.spacing_mm,
        rigid_initial=rigid_initial,
        long_axis=net.config.long_axis,
    )
    timings["prepare"] = time.perf_counter() - tick  # includes the rigid pre-alignment
    if prepared.rigid is not None:
        timings["rigid"] = prepared.rigid.seconds
    logger.info(
        "%s → %s: preparation path %r (frames from %s)",
        pair.moving,
        pair.fixed,
        prepared.path,
        prepared.record["frame_from"],
    )

    result = register(
        prepared.moving,
        prepared.fixed,
        net,
        moving_labels=prepared.moving_labels,
        spacing_mm=tuple(net.config.spacing_mm),
        refine=refine,
    )
    timings["network_exp_warp"] = result.seconds - result.refinement_seconds
    if result.refinement_seconds:
        timings["refinement"] = result.refinement_seconds

    tick = time.perf_counter()
    fixed_t, moving_t = prepared.fixed_transform, prepared.moving_transform
    positions = original_positions(result.displacement, fixed_t, moving_t)
    fixed_grid_world = _world(fixed_original.affine, np.indices(fixed_original.image.shape, dtype=np.float64))
    displacement_mm = _world(moving_original.affine, positions) - fixed_grid_world
    # the SVF as a world velocity on the fixed original grid: sampled (border-clamped, as
    # original_positions clamps the displacement) and carried by the prepared grid's linear part
    in_prepared = _world(
        fixed_t.original_to_prepared_voxel, np.indices(fixed_original.image.shape, dtype=np.float64)
    )
    svf_sampled = np.stack(
        [map_coordinates(c, in_prepared, order=1, mode="nearest") for c in result.svf.astype(np.float64)]
    )
    svf_world = np.einsum("ab,b...->a...", prepared.fixed_prepared_affine[:3, :3], svf_sampled)
    warped_original = _sample_inside(moving_original.image, positions)
    warped_labels_original = (
        _labels_inside(moving_original.labels, positions) if moving_original.labels is not None else None
    )
    timings["map_to_original"] = time.perf_counter() - tick

    warnings = list(prepared.warnings)
    for warning in warnings:
        logger.warning("%s", warning)
    for original in (moving_original, fixed_original):  # the reader warned of these already
        for path in (original.path, original.labels_path):
            if path is not None:
                warnings += list(read_geometry(path)[0].problems)

    metadata: dict[str, Any] = {
        "format": "svfnet-registration-1",
        "inputs": {
            "moving": str(pair.moving.resolve()),
            "fixed": str(pair.fixed.resolve()),
            "moving_labels": str(pair.moving_labels.resolve()) if pair.moving_labels else None,
            "fixed_labels": str(pair.fixed_labels.resolve()) if pair.fixed_labels else None,
            "label_mapping": format_label_mapping(mapping),
        },
        "model": {
            "checkpoint": str(Path(source).resolve())
            if (source := checkpoint or (model if isinstance(model, (str, os.PathLike)) else None))
            else None,
            "config": net.config.to_dict(),
            "device": str(next(net.parameters()).device),
        },
        "preparation": prepared.record,
        "prepared_grid_affine": prepared.fixed_prepared_affine.tolist(),
        "moving_prepared_grid_affine": prepared.moving_prepared_affine.tolist(),
        "rigid_fixed_to_moving_world": prepared.rigid_fixed_to_moving_world.tolist(),
        "fixed_original_affine": fixed_original.affine.tolist(),
        "fixed_original_shape": list(fixed_original.image.shape),
        "refinement": refinement_params(refine, "register_nifti()"),  # LCC Log-Demons' overrides, or None
        "svf_max_vox": float(np.abs(result.svf).max()),
        "displacement_max_vox": float(np.abs(result.displacement).max()),
        "warnings": warnings,
        "timings_s": timings,
        "outputs": {
            key: {"path": str(path), "grid": OUTPUTS[key][1], "description": OUTPUTS[key][2]}
            for key, path in outputs.items()
        },
    }
    if outputs:
        tick = time.perf_counter()
        volumes: dict[str, nib.Nifti1Image] = {
            "warped": nifti_image(result.warped.astype(np.float32), prepared.fixed_prepared_affine),
            "svf": vector_image(result.svf, prepared.fixed_prepared_affine, itk=False, name="svf vox ijk"),
            "displacement": vector_image(
                result.displacement, prepared.fixed_prepared_affine, itk=False, name="disp vox ijk"
            ),
            "fixed_prepared": nifti_image(prepared.fixed, prepared.fixed_prepared_affine),
            "moving_prepared": nifti_image(prepared.moving, prepared.moving_prepared_affine),
            "warped_original": nifti_image(warped_original, fixed_original.affine),
            "svf_original": vector_image(svf_world, fixed_original.affine, itk=False, name="svf RAS mm"),
            "displacement_original": vector_image(
                displacement_mm, fixed_original.affine, itk=False, name="disp RAS mm"
            ),
        }
        if result.warped_labels is not None:
            volumes["warped_labels"] = nifti_image(
                result.warped_labels.astype(np.uint8), prepared.fixed_prepared_affine
            )
        if warped_labels_original is not None:
            volumes["warped_labels_original"] = nifti_image(warped_labels_original, fixed_original.affine)
        # everything is computed before the first file is written, and every file is written beside
        # its final name before any takes it (write beside, then swap): a failure while writing
        # leaves an old set as it was. Then the old set's metadata (the mark of a complete set) goes
        # first, with the old label outputs a registration without labels does not replace, the new
        # files take their names, and the new metadata, written last, marks the new set complete: a
        # kill half way never leaves new files beside old metadata.
        with contextlib.ExitStack() as renames:
            for key, image in volumes.items():
                nib.save(image, str(renames.enter_context(atomic_path(outputs[key]))))
            write_itk_displacement(renames.enter_context(atomic_path(outputs["displacement_itk"])), displacement_mm,
                                   fixed_original.affine)
            every = output_paths(pair.out_prefix, with_labels=True)
            for stale in [every.pop("metadata"), *(p for k, p in every.items() if k not in outputs)]:
                stale.unlink(missing_ok=True)
        timings["write"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - started
        write_json(outputs["metadata"], metadata)
    else:
        timings["total"] = time.perf_counter() - started
    return NiftiRegistration(result, prepared, positions, displacement_mm, outputs, metadata)


def _check_pair(pair: PairFiles, outputs: dict[str, Path], overwrite: bool) -> None:
    """Input files exist and outputs may be written (raises before any work)."""
    if missing := pair.missing_files():
        raise FileNotFoundError(f"{missing[0]}: no such file")
    if not overwrite:
        existing = [p for p in outputs.values() if p.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} exists (and {len(existing) - 1} more outputs); use --force (overwrite=True) "
                "to replace them"
            )


@dataclass
class BatchResult:
    """What :func:`register_pairs` did: the registrations done and the pairs that failed (with why)."""

    done: list[NiftiRegistration] = field(default_factory=list)
    failed: list[tuple[PairFiles, str]] = field(default_factory=list)


def register_pairs(
    pairs: list[PairFiles],
    model: SVFNet | str | os.PathLike,
    *,
    label_mapping: LabelMapping | None = None,
    rigid_initial: str = "geometry",
    overwrite: bool = False,
    keep_going: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    refine: bool | Mapping[str, Any] = False,
) -> BatchResult:
    """Registers many pairs with one loaded model (see :func:`register_nifti`).

    Every output prefix is locked first (``PREFIX.svfnet.lock``, :mod:`svfnet.locks`: another
    process writing one of them is refused, naming it); then every pair's inputs (existence) and
    outputs (unless ``overwrite``) are checked before the model is loaded or anything is written.

    Args:
        pairs: from :func:`read_pairs` or built directly.
        model: a loaded :class:`SVFNet` or a checkpoint path (loaded once).
        keep_going: on a bad pair, record it and go on (default: raise, keeping the pairs done).
        progress: show a tqdm bar.
        label_mapping, rigid_initial, overwrite, device, refine: as in :func:`register_nifti`.
    """
    refinement_params(refine, "register_pairs()")  # checked before any work
    planned: dict[Path, int] = {}
    for number, pair in enumerate(pairs, start=1):
        outputs = output_paths(pair.out_prefix, with_labels=pair.moving_labels is not None)
        for path in outputs.values():
            if path.resolve() in planned:
                raise ValueError(f"pairs {planned[path.resolve()]} and {number} would both write {path}")
            planned[path.resolve()] = number
    with contextlib.ExitStack() as locks:
        # every prefix locked before any output is checked or written: another process writing one
        # of them is refused now, naming it, and none can start writing one while this runs
        for pair in pairs:
            locks.enter_context(prefix_lock(pair.out_prefix))
        if not keep_going:
            for pair in pairs:
                _check_pair(pair, output_paths(pair.out_prefix, with_labels=pair.moving_labels is not None), overwrite)
        return _register_batch(
            pairs, model, label_mapping, rigid_initial, overwrite, keep_going, device, progress, refine
        )


def _register_batch(
    pairs, model, label_mapping, rigid_initial, overwrite, keep_going, device, progress, refine
) -> BatchResult:
    from tqdm.auto import tqdm

    net = _load_model(model, device)
    batch = BatchResult()
    for pair in tqdm(pairs, desc="registering", unit="pair", disable=not progress):
        try:
            batch.done.append(
                register_nifti(
                    pair.moving,
                    pair.fixed,
                    net,
                    pair.out_prefix,
                    moving_labels=pair.moving_labels,
                    fixed_labels=pair.fixed_labels,
                    label_mapping=label_mapping,
                    rigid_initial=rigid_initial,
                    overwrite=overwrite,
                    checkpoint=model if isinstance(model, (str, os.PathLike)) else None,
                    refine=refine,
                )
            )
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            if not keep_going:
                raise
            logger.error("%s → %s: %s", pair.moving, pair.fixed, error)
            batch.failed.append((pair, str(error)))
    return batch
