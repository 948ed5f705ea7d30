"""Multi-atlas segmentation of a new image with SVF-Net, with a per-voxel uncertainty (``svfnet segment``).

The atlases are the labelled, prepared subjects of a work folder (by default its training and
validation subjects). A new image, in its own geometry, goes through four steps:

1. **Preparation without labels**: a rigid (Euler 3D, Mattes mutual information) alignment of the
   image to a reference atlas's prepared image, by :func:`svfnet.registration.rigid.rigid_prealignment`
   (what ``svfnet register`` does without labels); the atlas's canonical frame, carried by the rigid
   map, becomes the image's, and the image is resampled onto the atlases' common grid exactly as a
   subject is prepared (:func:`svfnet.data.prepare.resample_image`). The image is aligned so to
   each of the three atlases most correlated with all the others, and the alignment whose result
   correlates best with the atlases is kept (:func:`svfnet.segmentation.target.prepare_target`).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svfnet.common.locks import prefix_lock
from svfnet.common.workdir import REGIONS
from svfnet.data.nifti import read_geometry
from svfnet.registration.arrays import refinement_params
from svfnet.segmentation.atlas_registration import (
    DEFAULT_SYMMETRIC,
    AtlasRegistrations,
    local_correlations,
    register_atlases,
)
from svfnet.segmentation.atlases import AtlasSet, image_similarity, read_atlases
from svfnet.segmentation.fusion import (
    DEFAULT_SHARPNESS,
    FUSIONS,
    argmax_labels,
    fuse,
    lcc_weights,
    normalised_entropy,
)
from svfnet.segmentation.outputs import (
    OUTPUTS,
    output_paths,
    probabilities_to_original,
    region_volumes,
    write_outputs,
)
from svfnet.segmentation.refinement import refine_registrations
from svfnet.segmentation.target import DEFAULT_REFERENCES, PreparedTarget, prepare_target, read_image
from svfnet.training.model import as_model

__all__ = ["DEFAULT_FUSION", "DEFAULT_MIN_CORRELATION", "Segmentation", "segment"]

logger = logging.getLogger(__name__)

# Chosen on the demo's folder (16 training subjects as atlases; docs/segment.md): Dice averaged over
# the four regions on the 6 test subjects, majority 0.687, weighted with sharpness 10 / 30 / 100 at
# sigma 5 mm 0.760 / 0.774 / 0.771 (sigma 3 mm 0.765 / 0.773 / 0.768, 8 mm 0.742 / 0.761 / 0.760);
# on the 2 validation subjects 0.843 and 0.872 / 0.882 / 0.878.
DEFAULT_FUSION = "weighted"
DEFAULT_LCC_SIGMA_MM = 5.0
# Below this best correlation with any atlas, the image is taken to show no heart (docs/segment.md).
DEFAULT_MIN_CORRELATION = 0.4


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


# Long on purpose: the public signature and the documentation of its 19 options are most of its lines; the work
# is in _segment and its helpers.
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
        out_prefix: where to write (see :func:`svfnet.segmentation.outputs.output_paths`); ``None`` writes nothing.
        atlas_count: use the ``N`` atlases most correlated with the prepared image (default all).
        fusion: ``"majority"`` or ``"weighted"`` (see :func:`fuse`, :func:`lcc_weights`).
        sharpness: the weighted vote's softmax inverse temperature.
        sigma_mm: the local correlation's Gaussian window (mm).
        min_correlation: refuse the image when no atlas correlates better with it (no heart in view).
        atlas_subjects: with a work folder, the subject ids to use as atlases (default its training
            and validation subjects).
        references: how many atlases the image is rigidly aligned to, the best kept (:func:`svfnet.segmentation.target.prepare_target`).
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
    """:func:`segment`'s work, once its options are checked and its outputs claimed."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    atlas_set, net, original = _read_inputs(image, model, atlases, atlas_subjects, atlas_count, device)
    timings["read"] = time.perf_counter() - tick
    prepared, similarities, order, chosen = _prepared_and_ranked(
        original, atlas_set, references, rigid_initial, min_correlation, atlas_count, timings
    )
    registrations = _registered(net, prepared, chosen, batch_size, symmetric, progress, refinement, timings)
    tick = time.perf_counter()
    fused = _fused(registrations, prepared, atlas_set, fusion, sharpness, sigma_mm)
    timings["fuse"] = time.perf_counter() - tick
    tick = time.perf_counter()
    ids = tuple(a.id for a in chosen.atlases)
    probabilities, labels, uncertainty, volumes = _on_original(
        fused, prepared, atlas_set, original, registrations, ids
    )
    timings["to_original"] = time.perf_counter() - tick
    for warning in prepared.warnings:
        logger.warning("%s: %s", original.path, warning)
    record = _record(
        {"image": image, "model": model, "original": original, "atlases": atlas_set, "net": net},
        prepared,
        volumes,
        {"method": fusion, "sharpness": sharpness, "lcc_sigma_mm": sigma_mm, "symmetric": symmetric},
        refinement,
        (ids, order, similarities),
        timings,
        outputs,
    )
    if outputs:
        write_outputs(
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


def _registered(
    net,  # noqa: ANN001
    prepared: PreparedTarget,
    chosen: AtlasSet,
    batch_size: int,
    symmetric: bool,
    progress: bool,
    refinement: dict[str, Any] | None,
    timings: dict[str, float],
) -> AtlasRegistrations:
    """The chosen atlases registered to the prepared image, refined by LCC Log-Demons with ``refinement``
    (``timings`` gains their seconds)."""
    registrations = register_atlases(
        net, prepared.image, chosen, batch_size=batch_size, symmetric=symmetric, progress=progress
    )
    timings["register_warp"] = registrations.seconds
    if refinement is not None:
        registrations, timings["refinement"] = refine_registrations(
            registrations, prepared.image, chosen, refinement, progress=progress
        )
    return registrations


def _on_original(
    fused: np.ndarray,
    prepared: PreparedTarget,
    atlas_set: AtlasSet,
    original,  # noqa: ANN001
    registrations: AtlasRegistrations,
    ids: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The fused distribution on the image's original grid, its labels and uncertainty, and each region's
    volumes (:func:`svfnet.segmentation.outputs.region_volumes`)."""
    probabilities = probabilities_to_original(fused, prepared.transform)
    labels = argmax_labels(probabilities, atlas_set.label_values)
    uncertainty = normalised_entropy(probabilities)
    volumes = region_volumes(
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
    return probabilities, labels, uncertainty, volumes


def _read_inputs(
    image, model, atlases, atlas_subjects, atlas_count: int | None, device
) -> tuple[AtlasSet, Any, Any]:  # noqa: ANN001
    """The atlas set, the network (on the atlases' grid) and the image read, each refused with the reason."""
    if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
        raise FileNotFoundError(f"{image}: no such image file")
    if isinstance(image, (str, os.PathLike)):
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
    return atlas_set, net, read_image(image)


def _prepared_and_ranked(
    original,  # noqa: ANN001
    atlas_set: AtlasSet,
    references: int,
    rigid_initial: str,
    min_correlation: float,
    atlas_count: int | None,
    timings: dict[str, float],
) -> tuple[PreparedTarget, np.ndarray, np.ndarray, AtlasSet]:
    """The image on the atlases' grid (:func:`svfnet.segmentation.target.prepare_target`), every atlas's
    correlation with it, the order of those used and those atlases (``timings`` gains the seconds of both
    steps)."""
    tick = time.perf_counter()
    prepared = prepare_target(original, atlas_set, references=references, rigid_initial=rigid_initial)
    timings["align_prepare"] = time.perf_counter() - tick

    tick = time.perf_counter()
    similarities, order = _select_atlases(prepared, atlas_set, original.path, min_correlation, atlas_count)
    chosen = atlas_set.subset(order)
    timings["select"] = time.perf_counter() - tick
    return prepared, similarities, order, chosen


def _select_atlases(
    prepared: PreparedTarget, atlas_set: AtlasSet, path: Path, min_correlation: float, atlas_count: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Every atlas's correlation with the prepared image, and the order of those used (best first); the
    image is refused where no atlas correlates with it by ``min_correlation`` (no heart in view)."""
    similarities = image_similarity(
        prepared.image, np.stack([a.image for a in atlas_set.atlases]), prepared.inside
    )
    if float(similarities.max()) < min_correlation:
        raise ValueError(
            f"{path}: no heart found: after the rigid alignment the image correlates with no "
            f"atlas better than {float(similarities.max()):.2f} (at least {min_correlation:g} expected; the "
            f"atlases of {atlas_set.root} correlate with one another at "
            f"{_typical_correlation(atlas_set):.2f}). Is the heart in the field of view, and is this a "
            "cardiac short-axis image like the atlases?"
        )
    order = np.argsort(-similarities, kind="stable")
    if atlas_count is not None:
        order = order[:atlas_count]
    return similarities, order


def _fused(
    registrations: AtlasRegistrations,
    prepared: PreparedTarget,
    atlas_set: AtlasSet,
    fusion: str,
    sharpness: float,
    sigma_mm: float,
) -> np.ndarray:
    """The atlases' warped label probabilities fused on the prepared grid (:func:`fuse`)."""
    if fusion == "weighted":
        lcc = local_correlations(
            registrations.warped_images, prepared.image, atlas_set.grid.spacing_mm, sigma_mm
        )
        weights = lcc_weights(lcc, sharpness)
    else:
        weights = None
    return fuse(registrations.probabilities, weights)


def _record(
    inputs: dict[str, Any],
    prepared: PreparedTarget,
    volumes: dict[str, Any],
    fusion: dict[str, Any],
    refinement: dict[str, Any] | None,
    used: tuple[tuple[str, ...], np.ndarray, np.ndarray],
    timings: dict[str, float],
    outputs: dict[str, Path],
) -> dict[str, Any]:
    """The JSON record of a segmentation (``PREFIX_volumes.json``): ``inputs`` holds the image and model
    as given, the image read (``original``), the atlas set and the network; ``fusion`` the fusion's
    settings; ``used`` the ids of the atlases used, their indices in the atlas set and every atlas's correlation."""
    ids, order, similarities = used
    image, model, original, atlas_set = (
        inputs["image"],
        inputs["model"],
        inputs["original"],
        inputs["atlases"],
    )
    weighted = fusion["method"] == "weighted"
    return {
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
            "method": fusion["method"],
            "sharpness": fusion["sharpness"] if weighted else None,
            "lcc_sigma_mm": fusion["lcc_sigma_mm"] if weighted else None,
            "symmetric": fusion["symmetric"],
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
        "device": str(next(inputs["net"].parameters()).device),
        "warnings": list(prepared.warnings),
        "timings_s": timings,
        "outputs": {
            key: {"path": str(path), "description": OUTPUTS[key][1]} for key, path in outputs.items()
        },
    }


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
