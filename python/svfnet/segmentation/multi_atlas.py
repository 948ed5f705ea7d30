"""Multi-atlas segmentation of a new image with SVF-Net, with a per-voxel uncertainty (``svfnet segment``).

The atlases are the labelled, prepared subjects of a work folder (by default its training and
validation subjects). A new image, in its own geometry, goes through four steps:

1. **Preparation without labels**: a rigid (Euler 3D, Mattes mutual information) alignment of the
   image to a reference atlas's prepared image, by :func:`svfnet.registration.rigid.rigid_prealignment`
   (what ``svfnet register`` does without labels); the atlas's canonical frame, carried by the rigid
   map, becomes the image's, and the image is resampled onto the atlases' common grid exactly as a
   subject is prepared (:func:`svfnet.data.prepare.resample_image`). The image is aligned so to
   each of the three atlases most correlated with all the others, and the alignment whose result
   correlates best with the atlases is kept (:func:`prepare_target`).
2. **Atlas selection** (``atlas_count``): the atlases whose prepared images correlate best with the
   prepared image (normalised cross-correlation over the voxels inside the image's field of view;
   see :func:`image_similarity`). The same measure detects an image without a heart in view.
3. **Registration**: every atlas is registered to the image with SVF-Net
   (:func:`svfnet.registration.arrays.predict_svf`, one direction by default), in batches; the atlas's
   labels are warped one-hot and trilinearly, giving per atlas a probability of each label at every
   voxel.
4. **Fusion** (:func:`fuse`): ``majority`` averages the atlases' probabilities; ``weighted`` weighs
   each atlas at each voxel by the softmax over atlases of ``sharpness × LCC``, the local
   correlation between the warped atlas image and the image (:func:`lcc_weights`). The label is the
   fused distribution's argmax, its uncertainty the distribution's normalised entropy
   (:func:`normalised_entropy`, in ``[0, 1]``).

The results are mapped back onto the image's original grid (its affine in every output) and written
as ``PREFIX_labels.nii.gz``, ``PREFIX_uncertainty.nii.gz``, ``PREFIX_probabilities.nii.gz`` and
``PREFIX_volumes.json``. See docs/segment.md.

The registration step (:func:`register_atlases`) returns the SVFs before anything is warped; with
``refine`` each SVF is refined by LCC Log-Demons started from it before the atlases are warped again
(:mod:`svfnet.segmentation.refinement`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from svfnet.common.workdir import REGIONS
from svfnet.data.transform import PreparedTransform
from svfnet.segmentation.atlas_registration import (
    DEFAULT_SYMMETRIC,
    AtlasRegistrations,
    local_correlations,
    register_atlases,
)
from svfnet.segmentation.atlases import Atlas, AtlasSet, central_atlases, image_similarity, read_atlases
from svfnet.segmentation.fusion import (
    DEFAULT_SHARPNESS,
    FUSIONS,
    argmax_labels,
    fuse,
    lcc_weights,
    normalised_entropy,
)
from svfnet.training.model import as_model

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_MIN_CORRELATION",
    "DEFAULT_REFERENCES",
    "OUTPUTS",
    "PreparedTarget",
    "Segmentation",
    "output_paths",
    "probabilities_to_original",
    "prepare_target",
    "segment",
]

logger = logging.getLogger(__name__)

# Chosen on the demo's folder (16 training subjects as atlases; docs/segment.md): Dice averaged over
# the four regions on the 6 test subjects, majority 0.687, weighted with sharpness 10 / 30 / 100 at
# sigma 5 mm 0.760 / 0.774 / 0.771 (sigma 3 mm 0.765 / 0.773 / 0.768, 8 mm 0.742 / 0.761 / 0.760);
# on the 2 validation subjects 0.843 and 0.872 / 0.882 / 0.878.
DEFAULT_FUSION = "weighted"
DEFAULT_LCC_SIGMA_MM = 5.0
# The image is rigidly aligned to this many of the most central atlases, the best alignment kept.
DEFAULT_REFERENCES = 3
# Below this best correlation with any atlas, the image is taken to show no heart (docs/segment.md).
DEFAULT_MIN_CORRELATION = 0.4
# The interval of each region's volume: these percentiles of the atlases' volumes.
VOLUME_PERCENTILES = (10.0, 90.0)

# Output files, by key: file suffix after PREFIX, and what it holds.
OUTPUTS: dict[str, tuple[str, str]] = {
    "labels": ("labels.nii.gz", "fused labels, uint8 (0 background, 1 LV blood pool, 2 LV myocardium, ...)"),
    "uncertainty": (
        "uncertainty.nii.gz",
        "normalised entropy of the fused label distribution, float32 in [0, 1]",
    ),
    "probabilities": (
        "probabilities.nii.gz",
        "fused label distribution, float32 (I, J, K, L): channel n is label label_values[n]",
    ),
    "volumes": (
        "volumes.json",
        "this file: each region's volume (ml) with the atlases' interval, uncertainty",
    ),
}


def output_paths(out_prefix: str | os.PathLike) -> dict[str, Path]:
    """The files :func:`segment` writes, by key (``PREFIX_labels.nii.gz``...; a prefix that is an
    existing folder or ends in a separator names files inside it, as ``svfnet register`` does)."""
    text = os.fspath(out_prefix)
    if not text:
        raise ValueError("segment(): the output prefix 'out_prefix' is empty")
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return {key: Path(text) / name for key, (name, _) in OUTPUTS.items()}
    return {key: Path(f"{text}_{name}") for key, (name, _) in OUTPUTS.items()}


# ----------------------------------------------------------------------------- preparing the image
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
    from svfnet.registration.prepare import moved_frame, prepare_image
    from svfnet.registration.rigid import rigid_prealignment

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
    from svfnet.registration.prepare import LARGE_ROTATION_DEG, MIN_GRID_COVERAGE

    if reference is not None:
        candidates = [int(reference)]
    else:
        if isinstance(references, bool) or not isinstance(references, int) or references < 1:
            raise ValueError(f"prepare_target(): 'references' must be a positive integer, got {references!r}")
        candidates = [int(i) for i in central_atlases(atlases)[:references]]
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


# ----------------------------------------------------------------------------- the whole segmentation
@dataclass(frozen=True)
class Segmentation:
    """What :func:`segment` computed (and wrote, when given an output prefix).

    Attributes:
        labels: ``(I0, J0, K0)`` uint8 on the image's original grid.
        uncertainty: ``(I0, J0, K0)`` float32 in ``[0, 1]`` (normalised entropy of ``probabilities``).
        probabilities: ``(L, I0, J0, K0)`` float32 fused label distribution (``label_values``).
        affine: ``(4, 4)`` the image's affine (of every original-grid output).
        label_values: the labels of the probability channels.
        prepared: the image on the atlases' grid.
        prepared_probabilities: ``(L, I, J, K)`` fused distribution on the prepared grid.
        atlas_ids: the atlases used, best correlated first.
        similarities: their correlation with the prepared image (:func:`image_similarity`).
        registrations: the atlases registered to the image (prepared grid).
        volumes: the JSON record (also ``PREFIX_volumes.json``).
        outputs: written files by key (empty without an output prefix).
    """

    labels: np.ndarray
    uncertainty: np.ndarray
    probabilities: np.ndarray
    affine: np.ndarray
    label_values: tuple[int, ...]
    prepared: PreparedTarget
    prepared_probabilities: np.ndarray
    atlas_ids: tuple[str, ...]
    similarities: np.ndarray
    registrations: AtlasRegistrations
    volumes: dict[str, Any]
    outputs: dict[str, Path]


def _check_options(
    fusion: str,
    atlas_count: int | None,
    batch_size: int,
    sharpness: float,
    sigma_mm: float,
    min_correlation: float,
) -> None:
    if fusion not in FUSIONS:
        raise ValueError(
            f"segment(): 'fusion' (--fusion) must be one of {', '.join(FUSIONS)}, got {fusion!r}"
        )
    if atlas_count is not None and (
        isinstance(atlas_count, bool) or not isinstance(atlas_count, int) or atlas_count < 1
    ):
        raise ValueError(
            f"segment(): 'atlas_count' (--atlas-count) must be a positive integer, got {atlas_count!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1024:
        raise ValueError(
            f"segment(): 'batch_size' (--batch-size) must be an integer in [1, 1024], got {batch_size!r}"
        )
    if not (math.isfinite(sharpness) and sharpness >= 0):
        raise ValueError(f"segment(): 'sharpness' must be a non-negative number, got {sharpness}")
    if not (math.isfinite(sigma_mm) and sigma_mm > 0):
        raise ValueError(f"segment(): 'sigma_mm' must be a positive number of mm, got {sigma_mm}")
    if not (math.isfinite(min_correlation) and -1 <= min_correlation < 1):
        raise ValueError(f"segment(): 'min_correlation' must be in [-1, 1), got {min_correlation}")


def _read_image(image) -> Any:
    from svfnet.data.labels import IDENTITY_LABELS
    from svfnet.registration.prepare import OriginalImage, read_original

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


def check_atlas_grid(net, atlases: AtlasSet, model_name: str) -> None:
    grid = atlases.grid
    trained_grid, trained_spacing = tuple(net.config.grid), tuple(net.config.spacing_mm)
    if tuple(grid.shape) != trained_grid or not np.allclose(
        grid.spacing_mm, trained_spacing, rtol=1e-3, atol=0
    ):
        raise ValueError(
            f"the atlases of {atlases.root} are on a {'x'.join(map(str, grid.shape))} grid at "
            f"{' x '.join(f'{s:g}' for s in grid.spacing_mm)} mm, the model {model_name} was trained on "
            f"{'x'.join(map(str, trained_grid))} at {' x '.join(f'{s:g}' for s in trained_spacing)} mm: "
            "use the "
            "work folder the model was trained on (or one prepared with its --shape and --spacing)"
        )


def probabilities_to_original(prepared_probabilities: np.ndarray, transform: PreparedTransform) -> np.ndarray:
    """The fused distribution on the image's original grid: foreground channels trilinear with 0
    outside the prepared grid, background 1 minus their sum (as :func:`svfnet.data.transform.to_original`)."""
    from svfnet.data.transform import original_grid_in_prepared

    positions = original_grid_in_prepared(transform)
    foreground = (
        np.stack(
            [
                map_coordinates(c.astype(np.float32), positions, order=1, mode="constant", cval=0.0)
                for c in prepared_probabilities[1:]
            ]
        )
        if len(prepared_probabilities) > 1
        else np.zeros((0, *transform.original_shape), np.float32)
    )
    foreground = np.clip(foreground, 0.0, 1.0)
    background = np.clip(1.0 - foreground.sum(axis=0, keepdims=True), 0.0, 1.0)
    return np.concatenate([background, foreground]).astype(np.float32)


def _volumes(
    labels: np.ndarray,
    uncertainty: np.ndarray,
    affine: np.ndarray,
    label_values: tuple[int, ...],
    atlas_probabilities: np.ndarray,
    fused: np.ndarray,
    inside: np.ndarray,
    spacing_mm,
    atlas_ids,
) -> dict[str, Any]:
    """Each region's volume (ml) on the original grid, the interval of the atlases' volumes and the
    mean uncertainty over the region.

    ``volume_ml`` counts the labelled voxels of the written label map; ``expected_volume_ml`` sums the
    fused probability (on the prepared grid, inside the image's field of view), the measure the
    atlases' volumes are in: a hard label map shrinks thin structures that no single voxel holds
    with a majority (the RV myocardium), and the atlases' interval is about the expected volume.
    """
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    prepared_voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    regions: dict[str, Any] = {}
    for channel, value in enumerate(label_values):
        if value == 0:
            continue
        mask = labels == value
        # each atlas's warped volume, counted where the image has data (inside its field of view)
        atlas_volumes = (atlas_probabilities[:, channel] * inside[None]).reshape(len(atlas_ids), -1).sum(
            axis=1
        ) * prepared_voxel_ml
        low, high = (float(v) for v in np.percentile(atlas_volumes, VOLUME_PERCENTILES))
        regions[REGIONS.get(value, f"label {value}")] = {
            "label": int(value),
            "volume_ml": float(np.count_nonzero(mask)) * voxel_ml,
            "expected_volume_ml": float((fused[channel] * inside).sum()) * prepared_voxel_ml,
            "interval_ml": [low, high],
            "atlas_volume_mean_ml": float(atlas_volumes.mean()),
            "atlas_volume_std_ml": float(atlas_volumes.std(ddof=1)) if len(atlas_volumes) > 1 else 0.0,
            "atlas_volumes_ml": {
                atlas_id: float(v) for atlas_id, v in zip(atlas_ids, atlas_volumes, strict=True)
            },
            "mean_uncertainty": float(uncertainty[mask].mean()) if mask.any() else None,
        }
    heart = labels > 0
    return {
        "regions": regions,
        "heart_mean_uncertainty": float(uncertainty[heart].mean()) if heart.any() else None,
        "interval": f"{VOLUME_PERCENTILES[0]:g}th to {VOLUME_PERCENTILES[1]:g}th percentile of the atlases' "
        "volumes (each atlas's warped labels, as probabilities, inside the image's field of view)",
        "voxel_ml": voxel_ml,
    }


def segment(
    image,
    model,
    atlases,
    *,
    out_prefix: str | os.PathLike | None = None,
    atlas_count: int | None = None,
    fusion: str = DEFAULT_FUSION,
    sharpness: float = DEFAULT_SHARPNESS,
    sigma_mm: float = DEFAULT_LCC_SIGMA_MM,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    atlas_subjects: list[str] | tuple[str, ...] | None = None,
    references: int = DEFAULT_REFERENCES,
    rigid_initial: str = "geometry",
    symmetric: bool = DEFAULT_SYMMETRIC,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = False,
    refine: bool | Mapping[str, Any] = False,
) -> Segmentation:
    """Segments a new image from labelled atlases with SVF-Net (see the module's description).

    Args:
        image: a 3D NIfTI file, or an ``(array (I0, J0, K0), affine (4, 4))`` pair (voxel → RAS+ mm).
        model: a loaded :class:`svfnet.training.model.SVFNet` or a checkpoint path (loaded on ``device``).
        atlases: a work folder (its labelled prepared subjects, see :func:`read_atlases`) or an
            :class:`AtlasSet`.
        out_prefix: where to write (see :func:`output_paths`); ``None`` writes nothing.
        atlas_count: use the ``N`` atlases most correlated with the prepared image (default all).
        fusion: ``"majority"`` or ``"weighted"`` (see :func:`fuse`, :func:`lcc_weights`).
        sharpness: the weighted vote's softmax inverse temperature.
        sigma_mm: the local correlation's Gaussian window (mm).
        min_correlation: refuse the image when no atlas correlates better with it (no heart in view).
        atlas_subjects: with a work folder, the subject ids to use as atlases (default its training
            and validation subjects).
        references: how many atlases the image is rigidly aligned to, the best kept (:func:`prepare_target`).
        rigid_initial: start of the rigid alignment (``"geometry"`` or ``"world"``).
        symmetric: average both registration directions (:func:`svfnet.registration.arrays.predict_svf`):
            twice the network time, and no gain after the fusion on the demo (``DEFAULT_SYMMETRIC``).
        batch_size: atlases registered per network call.
        device: where to load a checkpoint (default CUDA when available, else CPU).
        overwrite: replace existing outputs (else FileExistsError before any work).
        progress: a tqdm bar over the atlases.
        refine: refine each atlas's registration with LCC Log-Demons started from its SVF-Net SVF
            (:func:`svfnet.segmentation.refinement.refine_registrations`): True for
            :data:`svfnet.registration.arrays.REFINEMENT`, or a mapping of
            :class:`~svfnet.baselines.lcc_demons.LCCDemonsParams` fields updating it (e.g.
            ``{"iterations": (5, 10)}``), as :func:`svfnet.registration.arrays.register`'s ``refine``.

    Returns:
        The :class:`Segmentation`.

    Raises:
        FileNotFoundError: the image, the atlas folder or the checkpoint is missing.
        FileExistsError: an output exists and ``overwrite`` is false.
        TypeError: ``refine`` is not a bool or a mapping, or names an unknown demons parameter.
        ValueError: a bad option (``refine`` included), an image that is not 3D or constant, an atlas
            folder without labelled subjects, atlases and model on different grids, an image in which no
            heart is found (the rigid alignment fails, or no atlas correlates with it by
            ``min_correlation``). Nothing is written then.
        svfnet.common.locks.FolderLocked: another process writes this output prefix.
    """
    from svfnet.common.locks import prefix_lock
    from svfnet.registration.arrays import refinement_params

    started = time.perf_counter()
    _check_options(fusion, atlas_count, batch_size, sharpness, sigma_mm, min_correlation)
    refinement = refinement_params(refine, "segment()")
    if isinstance(references, bool) or not isinstance(references, int) or references < 1:
        raise ValueError(f"segment(): 'references' must be a positive integer, got {references!r}")
    outputs = output_paths(out_prefix) if out_prefix is not None else {}
    with contextlib.ExitStack() as stack:
        if out_prefix is not None:
            stack.enter_context(prefix_lock(out_prefix))
            if not overwrite and (existing := [p for p in outputs.values() if p.exists()]):
                raise FileExistsError(
                    f"{existing[0]} exists (and {len(existing) - 1} more outputs); use --force "
                    "(overwrite=True) to replace them"
                )
        return _segment(
            image,
            model,
            atlases,
            outputs,
            started,
            atlas_count=atlas_count,
            fusion=fusion,
            sharpness=sharpness,
            sigma_mm=sigma_mm,
            min_correlation=min_correlation,
            atlas_subjects=atlas_subjects,
            references=references,
            rigid_initial=rigid_initial,
            symmetric=symmetric,
            batch_size=batch_size,
            device=device,
            progress=progress,
            refinement=refinement,
        )


def _segment(
    image,
    model,
    atlases,
    outputs: dict[str, Path],
    started: float,
    *,
    atlas_count: int | None,
    fusion: str,
    sharpness: float,
    sigma_mm: float,
    min_correlation: float,
    atlas_subjects,
    references: int,
    rigid_initial: str,
    symmetric: bool,
    batch_size: int,
    device,
    progress: bool,
    refinement: dict[str, Any] | None = None,
) -> Segmentation:

    timings: dict[str, float] = {}
    tick = time.perf_counter()
    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        raise FileNotFoundError(f"{image}: no such image file")
    if isinstance(image, (str, os.PathLike)):
        from svfnet.data.nifti import read_geometry

        read_geometry(image)  # a 2D/4D or unreadable file is refused here, from its header
    atlas_set = atlases if isinstance(atlases, AtlasSet) else read_atlases(atlases, atlas_subjects)
    if atlas_count is not None and atlas_count > len(atlas_set):
        raise ValueError(
            f"--atlas-count {atlas_count}: the atlas folder {atlas_set.root} has {len(atlas_set)} labelled "
            "atlases"
        )
    net = as_model(model, device, func="segment")
    model_name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "given"
    check_atlas_grid(net, atlas_set, model_name)
    original = _read_image(image)
    timings["read"] = time.perf_counter() - tick

    tick = time.perf_counter()
    prepared = prepare_target(original, atlas_set, references=references, rigid_initial=rigid_initial)
    timings["align_prepare"] = time.perf_counter() - tick

    tick = time.perf_counter()
    similarities = image_similarity(
        prepared.image, np.stack([a.image for a in atlas_set.atlases]), prepared.inside
    )
    if float(similarities.max()) < min_correlation:
        raise ValueError(
            f"{original.path}: no heart found: after the rigid alignment the image correlates with no "
            f"atlas better than {float(similarities.max()):.2f} (at least {min_correlation:g} expected; the "
            f"atlases of {atlas_set.root} correlate with one another at "
            f"{_typical_correlation(atlas_set):.2f}). Is the heart in the field of view, and is this a "
            "cardiac short-axis image like the atlases?"
        )
    order = np.argsort(-similarities, kind="stable")
    if atlas_count is not None:
        order = order[:atlas_count]
    chosen = atlas_set.subset(order)
    timings["select"] = time.perf_counter() - tick

    registrations = register_atlases(
        net, prepared.image, chosen, batch_size=batch_size, symmetric=symmetric, progress=progress
    )
    timings["register_warp"] = registrations.seconds
    if refinement is not None:
        from svfnet.segmentation.refinement import refine_registrations

        registrations, timings["refinement"] = refine_registrations(
            registrations, prepared.image, chosen, refinement, progress=progress
        )

    tick = time.perf_counter()
    if fusion == "weighted":
        lcc = local_correlations(
            registrations.warped_images, prepared.image, atlas_set.grid.spacing_mm, sigma_mm
        )
        weights = lcc_weights(lcc, sharpness)
    else:
        weights = None
    fused = fuse(registrations.probabilities, weights)
    timings["fuse"] = time.perf_counter() - tick

    tick = time.perf_counter()
    probabilities = probabilities_to_original(fused, prepared.transform)
    labels = argmax_labels(probabilities, atlas_set.label_values)
    uncertainty = normalised_entropy(probabilities)
    ids = tuple(a.id for a in chosen.atlases)
    volumes = _volumes(
        labels,
        uncertainty,
        original.affine,
        atlas_set.label_values,
        registrations.probabilities,
        fused,
        prepared.inside,
        atlas_set.grid.spacing_mm,
        ids,
    )
    timings["to_original"] = time.perf_counter() - tick
    for warning in prepared.warnings:
        logger.warning("%s: %s", original.path, warning)

    record: dict[str, Any] = {
        "format": "svfnet-segmentation-1",
        "inputs": {
            "image": str(original.path.resolve()) if isinstance(image, (str, os.PathLike)) else None,
            "atlases": str(atlas_set.root.resolve()),
            "model": str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) else None,
        },
        "label_values": list(atlas_set.label_values),
        "label_names": {
            str(v): REGIONS.get(v, "background" if v == 0 else f"label {v}") for v in atlas_set.label_values
        },
        **volumes,
        "fusion": {
            "method": fusion,
            "sharpness": sharpness if fusion == "weighted" else None,
            "lcc_sigma_mm": sigma_mm if fusion == "weighted" else None,
            "symmetric": symmetric,
        },
        # LCC Log-Demons' parameters refining each atlas's SVF, or None
        "refinement": None if refinement is None else _json_ready(refinement),
        "atlases": [
            {"id": atlas_id, "correlation": float(similarities[i])}
            for atlas_id, i in zip(ids, order, strict=True)
        ],
        "atlases_available": len(atlas_set),
        "preparation": {
            "reference_atlas": prepared.reference,
            "rigid": prepared.rigid,
            "alignments_tried": prepared.record["alignments_tried"],
            "grid_inside_fraction": prepared.record["grid_inside_fraction"],
            "frame": prepared.record["frame"],
            "grid": prepared.record["grid"],
            "intensity": prepared.record["intensity"],
            "prepared_to_original_voxel": prepared.record["prepared_to_original_voxel"],
        },
        "original_affine": original.affine.tolist(),
        "original_shape": list(original.image.shape),
        "device": str(next(net.parameters()).device),
        "warnings": list(prepared.warnings),
        "timings_s": timings,
        "outputs": {
            key: {"path": str(path), "description": OUTPUTS[key][1]} for key, path in outputs.items()
        },
    }
    if outputs:
        tick = time.perf_counter()
        _write(
            outputs,
            labels,
            uncertainty,
            probabilities,
            original.affine,
            atlas_set.label_values,
            record,
            timings,
            started,
        )
    else:
        timings["total"] = time.perf_counter() - started
    return Segmentation(
        labels,
        uncertainty,
        probabilities,
        original.affine,
        atlas_set.label_values,
        prepared,
        fused,
        ids,
        similarities[order],
        registrations,
        record,
        outputs,
    )


def _json_ready(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _typical_correlation(atlases: AtlasSet) -> float:
    images = np.stack([a.image for a in atlases.atlases])
    if len(images) < 2:
        return 1.0
    return float(
        np.median(
            [
                image_similarity(images[n], np.delete(images, n, axis=0)).mean()
                for n in range(min(len(images), 8))
            ]
        )
    )


def _write(
    outputs, labels, uncertainty, probabilities, affine, label_values, record, timings, started
) -> None:
    """Writes every file beside its final name, renames them together, the JSON record last."""
    import nibabel as nib

    from svfnet.common.atomic import atomic_path, write_json
    from svfnet.data.nifti import nifti_image

    tick = time.perf_counter()
    volumes = {
        "labels": nifti_image(labels.astype(np.uint8), affine),
        "uncertainty": nifti_image(uncertainty.astype(np.float32), affine),
        "probabilities": nifti_image(np.ascontiguousarray(np.moveaxis(probabilities, 0, -1)), affine),
    }
    volumes["probabilities"].header["intent_name"] = ("p " + ",".join(map(str, label_values))).encode()[:16]
    # the old set's JSON (the mark of a complete set) goes first: a kill half way never leaves new
    # images beside an old record; the new record, written last, marks the new set complete
    with contextlib.ExitStack() as renames:
        for key, image in volumes.items():
            nib.save(image, str(renames.enter_context(atomic_path(outputs[key]))))
        outputs["volumes"].unlink(missing_ok=True)
    timings["write"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    write_json(outputs["volumes"], record)
