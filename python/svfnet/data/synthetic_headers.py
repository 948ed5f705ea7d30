"""The synthetic cohort's geometry as files: the stack's voxel → RAS+ affine and the NIfTI header
styles met in public data (:data:`HEADER_STYLES`), each an encoding of the true geometry."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path
from svfnet.data.synthetic_anatomy import ScanGeometry, axis_angle_rotation, matrix_tuple

#: How the clinical cohort's NIfTI headers encode each subject's geometry (see :func:`encode_header`).
HEADER_STYLES = ("itk", "acdc", "qform-only", "sform-only", "disagree", "oblique")
_NIFTI_XFORM_SCANNER_ANAT, _NIFTI_XFORM_ALIGNED_ANAT = 1, 2


@dataclass(frozen=True)
class HeaderEncoding:
    """How a NIfTI header encodes a subject's geometry (see :func:`encode_header`).

    ``qform`` and ``sform`` are the ``(4, 4)`` matrices written (``None`` where the code is 0);
    ``pixdim`` the voxel size written; ``geometry_from`` the part ITK takes the orientation and
    origin from (``"qform"`` or ``"sform"``; the spacing always comes from ``pixdim``).
    """

    style: str
    qform: tuple[tuple[float, ...], ...] | None
    qform_code: int
    sform: tuple[tuple[float, ...], ...] | None
    sform_code: int
    pixdim: tuple[float, float, float]
    geometry_from: str


def stack_affine(geometry: ScanGeometry) -> np.ndarray:
    """The voxel → RAS+ mm affine of a stack stored base first; ``(4, 4)``."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(geometry.stack_to_patient) @ np.diag(
        [geometry.in_plane_mm, geometry.in_plane_mm, geometry.slice_mm]
    )
    # patient origin: put the LV base centre near the scanner isocentre, as a planned scan would
    affine[:3, 3] = -np.array(geometry.stack_to_patient) @ np.array(geometry.heart_origin_stack_mm)
    return affine


# ----------------------------------------------------------------------------- geometry and NIfTI headers
def _nearest_axis_aligned(rotation: np.ndarray) -> np.ndarray:
    """The signed permutation matrix nearest ``rotation`` (same determinant)."""
    best = max(
        itertools.permutations(range(3)),
        key=lambda rows: sum(abs(rotation[r, c]) for c, r in enumerate(rows)),
    )
    aligned = np.zeros((3, 3))
    for column, row in enumerate(best):
        aligned[row, column] = 1.0 if rotation[row, column] >= 0 else -1.0
    if np.linalg.det(aligned) * np.linalg.det(rotation) < 0:  # keep the handedness: flip the weakest axis
        weakest = min(range(3), key=lambda c: abs(rotation[best[c], c]))
        aligned[:, weakest] *= -1.0
    return aligned


def true_affine(geometry: ScanGeometry, header_style: str) -> np.ndarray:
    """The voxel → RAS+ affine of the stored clinical volume, ``(4, 4)``: the geometry its header encodes.

    The orientation depends on the style: ``"acdc"`` is stored with the rotation
    ``diag(-1, -1, 1)`` (ACDC's; the world frame then has no anatomical meaning), ``"itk"`` with the
    axis-aligned frame nearest the patient's pose, the others with the patient's double-oblique pose.
    The image content does not depend on it: only where the world puts the voxels.
    """
    if header_style not in HEADER_STYLES:
        raise ValueError(
            f"true_affine(): 'header_style' must be one of {HEADER_STYLES}, got {header_style!r}"
        )
    stack_to_patient = np.array(geometry.stack_to_patient)
    flip = np.diag([1.0, 1.0, -1.0 if geometry.apex_first else 1.0])  # stored frame ← base-first frame
    if header_style == "acdc":
        rotation = np.diag([-1.0, -1.0, 1.0]) @ flip
    elif header_style == "itk":
        rotation = _nearest_axis_aligned(stack_to_patient)
    else:
        rotation = stack_to_patient
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([geometry.in_plane_mm, geometry.in_plane_mm, geometry.slice_mm])
    affine[:3, 3] = -rotation @ np.array(geometry.heart_origin_stack_mm)
    if geometry.apex_first:
        reverse = np.eye(4)
        reverse[2, 2], reverse[2, 3] = -1.0, geometry.shape[2] - 1
        affine = affine @ reverse
    return affine


def _misplaced(affine: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """``affine`` turned 8–25° about the volume centre and moved 15–50 mm: a header part gone stale."""
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3]
    turn = axis_angle_rotation(rng.normal(size=3), math.radians(rng.uniform(8.0, 25.0)))
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(15.0, 50.0)
    moved = np.eye(4)
    moved[:3, :3] = turn @ affine[:3, :3]
    moved[:3, 3] = turn @ (affine[:3, 3] - centre) + centre + shift
    return moved


def encode_header(
    affine: np.ndarray,
    header_style: str,
    rng: np.random.Generator | None = None,
    shape: tuple[int, int, int] = (1, 1, 1),
) -> HeaderEncoding:
    """How a header of style ``header_style`` encodes the true voxel → RAS+ ``affine``.

    ITK (and SimpleITK) read the spacing from ``pixdim``, and the orientation and origin from the
    sform when its code is 1 (scanner), else from the qform when its code is set, else from the
    sform (its columns normalised). Every style below makes ITK read ``affine``:

    - ``"itk"``, ``"oblique"``: qform = sform = ``affine``, codes 1 (what ITK and svfnet write);
    - ``"acdc"``: qform code 0; sform code 2 holding the rotation *without* the voxel size (the
      ACDC release); the voxel size only in ``pixdim``;
    - ``"qform-only"``: qform code 1, sform code 0;
    - ``"sform-only"``: qform code 0, sform code 2 (as the Sunnybrook conversions);
    - ``"disagree"``: both set and different (drawn with ``rng``): either qform code 1 true and a
      stale sform of code 2 (ITK reads the qform; nibabel's ``affine`` the wrong sform), or a stale
      qform and the true sform of code 1 (ITK and nibabel read the sform). The stale part is
      turned 8–25° and moved 15–50 mm about the centre of a volume of ``shape``.
    """
    if header_style not in HEADER_STYLES:
        raise ValueError(
            f"encode_header(): 'header_style' must be one of {HEADER_STYLES}, got {header_style!r}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    true = matrix_tuple(affine)
    scanner, aligned = _NIFTI_XFORM_SCANNER_ANAT, _NIFTI_XFORM_ALIGNED_ANAT
    if header_style in ("itk", "oblique"):
        return HeaderEncoding(header_style, true, scanner, true, scanner, spacing, "sform")
    if header_style == "acdc":
        unscaled = affine.copy()
        unscaled[:3, :3] = affine[:3, :3] / np.array(spacing)
        return HeaderEncoding(header_style, None, 0, matrix_tuple(unscaled), aligned, spacing, "sform")
    if header_style == "qform-only":
        return HeaderEncoding(header_style, true, scanner, None, 0, spacing, "qform")
    if header_style == "sform-only":
        return HeaderEncoding(header_style, None, 0, true, aligned, spacing, "sform")
    if rng is None:
        raise ValueError("encode_header(): the 'disagree' style draws its stale part: give 'rng'")
    stale = matrix_tuple(_misplaced(affine, shape, rng))
    if rng.random() < 0.5:
        return HeaderEncoding(header_style, true, scanner, stale, aligned, spacing, "qform")
    return HeaderEncoding(header_style, stale, scanner, true, scanner, spacing, "sform")


def nifti_header(encoding: HeaderEncoding, shape: tuple[int, ...], dtype: Any) -> Any:
    """A ``nibabel.Nifti1Header`` written as ``encoding`` says (codes, qform, sform and ``pixdim``)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(None if encoding.qform is None else np.array(encoding.qform), code=encoding.qform_code)
    header.set_sform(None if encoding.sform is None else np.array(encoding.sform), code=encoding.sform_code)
    header["pixdim"][1:4] = encoding.pixdim
    header.set_xyzt_units("mm")
    return header


def nibabel_affine(encoding: HeaderEncoding) -> np.ndarray:
    """What ``nibabel.load(path).affine`` returns for a file written with ``encoding``: sform, else qform."""
    return np.asarray(nifti_header(encoding, (2, 2, 2), np.int16).get_best_affine(), dtype=np.float64)


def write_nifti_encoded(path: str | Path, data: np.ndarray, encoding: HeaderEncoding) -> None:
    """Writes a 3D volume atomically with the header ``encoding`` describes (not svfnet's own)."""
    import nibabel as nib

    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"write_nifti_encoded(): 'data' must be (I, J, K), got shape {data.shape}")
    image = nib.Nifti1Image(data, None, header=nifti_header(encoding, data.shape, data.dtype))
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
