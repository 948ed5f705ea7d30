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
import logging
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

from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.locks import prefix_lock
from svfnet.data.labels import IDENTITY_LABELS, LabelMapping, format_label_mapping
from svfnet.data.nifti import nifti_image, read_geometry, vector_image
from svfnet.data.transform import original_positions
from svfnet.registration.arrays import Registration, refinement_params, register
from svfnet.registration.pairs import PairFiles
from svfnet.registration.prepare import (
    OriginalImage,
    PreparedPair,
    labels_inside,
    prepare_pair,
    read_original,
    sample_inside,
    world_points,
)
from svfnet.registration.rigid import RAS_TO_LPS
from svfnet.training.model import SVFNet, as_model

__all__ = [
    "BatchResult",
    "NiftiRegistration",
    "output_paths",
    "register_nifti",
    "register_pairs",
    "write_itk_displacement",
]

logger = logging.getLogger(__name__)


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
        registration: the result on the fixed prepared grid (:class:`svfnet.registration.arrays.Registration`).
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
            (see :func:`svfnet.registration.arrays.register`; True or a mapping of demons parameters).

    Returns:
        The result; ``outputs`` and ``metadata`` list what was written.

    The output prefix is locked while the pair is registered (``PREFIX.svfnet.lock``, see
    :mod:`svfnet.common.locks`): two processes writing one prefix would mix their files.

    Raises:
        FileNotFoundError: an input is missing.
        FileExistsError: an output exists and ``overwrite`` is false.
        svfnet.common.locks.FolderLocked: another process is writing this output prefix.
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
        if out_prefix is not None:  # one writer per output prefix (:mod:`svfnet.common.locks`)
            stack.enter_context(prefix_lock(pair.out_prefix))
        _check_pair(pair, outputs, overwrite)
        return _register_nifti(
            pair, model, outputs, mapping, rigid_initial, device, checkpoint, started, refine
        )


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
    """:func:`register_nifti`'s work, once its arguments are checked, its outputs claimed and the prefix locked."""
    net = as_model(model, device, func="register_nifti")
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    moving_original = read_original("moving", pair.moving, pair.moving_labels, mapping)
    fixed_original = read_original("fixed", pair.fixed, pair.fixed_labels, mapping)
    timings["read"] = time.perf_counter() - tick

    prepared = _prepared(pair, moving_original, fixed_original, net, rigid_initial, timings)

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
    originals = _on_original_grid(result, prepared, moving_original, fixed_original)
    timings["map_to_original"] = time.perf_counter() - tick
    warnings = _warnings(prepared, moving_original, fixed_original)
    source = checkpoint or (model if isinstance(model, (str, os.PathLike)) else None)
    metadata = _metadata(
        pair, source, net, mapping, prepared, fixed_original, result, refine, warnings, timings, outputs
    )
    if outputs:
        _write_outputs(outputs, pair, result, prepared, fixed_original, originals, metadata, timings, started)
    else:
        timings["total"] = time.perf_counter() - started
    return NiftiRegistration(
        result, prepared, originals["positions"], originals["displacement"], outputs, metadata
    )


def _prepared(
    pair: PairFiles,
    moving_original: OriginalImage,
    fixed_original: OriginalImage,
    net: SVFNet,
    rigid_initial: str,
    timings: dict[str, float],
) -> PreparedPair:
    """The pair prepared on the model's grid (``timings`` gains the preparation's and the rigid
    pre-alignment's seconds; the preparation path is logged)."""
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
    return prepared


def _on_original_grid(
    result: Registration,
    prepared: PreparedPair,
    moving_original: OriginalImage,
    fixed_original: OriginalImage,
) -> dict[str, np.ndarray | None]:
    """The registration on the fixed image's original grid: the positions in the moving original grid,
    the displacement and the SVF in world mm, the warped image and the warped labels (None without)."""
    fixed_t, moving_t = prepared.fixed_transform, prepared.moving_transform
    positions = original_positions(result.displacement, fixed_t, moving_t)
    fixed_grid_world = world_points(
        fixed_original.affine, np.indices(fixed_original.image.shape, dtype=np.float64)
    )
    displacement_mm = world_points(moving_original.affine, positions) - fixed_grid_world
    # the SVF as a world velocity on the fixed original grid: sampled (border-clamped, as
    # original_positions clamps the displacement) and carried by the prepared grid's linear part
    in_prepared = world_points(
        fixed_t.original_to_prepared_voxel, np.indices(fixed_original.image.shape, dtype=np.float64)
    )
    svf_sampled = np.stack(
        [map_coordinates(c, in_prepared, order=1, mode="nearest") for c in result.svf.astype(np.float64)]
    )
    svf_world = np.einsum("ab,b...->a...", prepared.fixed_prepared_affine[:3, :3], svf_sampled)
    warped_original = sample_inside(moving_original.image, positions)
    warped_labels_original = (
        labels_inside(moving_original.labels, positions) if moving_original.labels is not None else None
    )
    return {
        "positions": positions,
        "displacement": displacement_mm,
        "svf": svf_world,
        "warped": warped_original,
        "warped_labels": warped_labels_original,
    }


def _warnings(
    prepared: PreparedPair, moving_original: OriginalImage, fixed_original: OriginalImage
) -> list[str]:
    """The preparation's warnings (logged) and the problems of the inputs' headers."""
    warnings = list(prepared.warnings)
    for warning in warnings:
        logger.warning("%s", warning)
    for original in (moving_original, fixed_original):  # the reader warned of these already
        for path in (original.path, original.labels_path):
            if path is not None:
                warnings += list(read_geometry(path)[0].problems)

    return warnings


def _metadata(
    pair: PairFiles,
    source: str | os.PathLike | None,
    net: SVFNet,
    mapping: LabelMapping,
    prepared: PreparedPair,
    fixed_original: OriginalImage,
    result: Registration,
    refine: bool | Mapping[str, Any],
    warnings: list[str],
    timings: dict[str, float],
    outputs: dict[str, Path],
) -> dict[str, Any]:
    """The registration's metadata (``PREFIX_metadata.json``): inputs, model (``source``: the checkpoint it
    came from, if known), preparation, timings, outputs."""
    return {
        "format": "svfnet-registration-1",
        "inputs": {
            "moving": str(pair.moving.resolve()),
            "fixed": str(pair.fixed.resolve()),
            "moving_labels": str(pair.moving_labels.resolve()) if pair.moving_labels else None,
            "fixed_labels": str(pair.fixed_labels.resolve()) if pair.fixed_labels else None,
            "label_mapping": format_label_mapping(mapping),
        },
        "model": {
            "checkpoint": str(Path(source).resolve()) if source else None,
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


def _write_outputs(
    outputs: dict[str, Path],
    pair: PairFiles,
    result: Registration,
    prepared: PreparedPair,
    fixed_original: OriginalImage,
    originals: dict[str, np.ndarray | None],
    metadata: dict[str, Any],
    timings: dict[str, float],
    started: float,
) -> None:
    """Writes every output beside its final name, swaps them in, the metadata last (``originals``: the
    warped image, SVF, displacement and warped labels on the fixed original grid)."""
    warped_original, svf_world = originals["warped"], originals["svf"]
    displacement_mm, warped_labels_original = originals["displacement"], originals["warped_labels"]
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
        write_itk_displacement(
            renames.enter_context(atomic_path(outputs["displacement_itk"])),
            displacement_mm,
            fixed_original.affine,
        )
        every = output_paths(pair.out_prefix, with_labels=True)
        for stale in [every.pop("metadata"), *(p for k, p in every.items() if k not in outputs)]:
            stale.unlink(missing_ok=True)
    timings["write"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    write_json(outputs["metadata"], metadata)


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

    Every output prefix is locked first (``PREFIX.svfnet.lock``, :mod:`svfnet.common.locks`: another
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
                _check_pair(
                    pair, output_paths(pair.out_prefix, with_labels=pair.moving_labels is not None), overwrite
                )
        return _register_batch(
            pairs, model, label_mapping, rigid_initial, overwrite, keep_going, device, progress, refine
        )


def _register_batch(
    pairs, model, label_mapping, rigid_initial, overwrite, keep_going, device, progress, refine
) -> BatchResult:
    from tqdm.auto import tqdm

    net = as_model(model, device, func="register_pairs")
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
