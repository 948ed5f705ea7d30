"""What :func:`svfnet.segmentation.multi_atlas.segment` writes and how it gets there: the output files
(:data:`OUTPUTS`, :func:`output_paths`), the fused distribution mapped back onto the image's original grid
(:func:`probabilities_to_original`), each region's volume with the atlases' interval
(:func:`region_volumes`), and the files written together (:func:`write_outputs`)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates

from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.workdir import REGIONS
from svfnet.data.nifti import nifti_image
from svfnet.data.transform import PreparedTransform, original_grid_in_prepared

__all__ = ["OUTPUTS", "output_paths", "probabilities_to_original", "region_volumes", "write_outputs"]

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


def probabilities_to_original(prepared_probabilities: np.ndarray, transform: PreparedTransform) -> np.ndarray:
    """The fused distribution on the image's original grid: foreground channels trilinear with 0
    outside the prepared grid, background 1 minus their sum (as :func:`svfnet.data.transform.to_original`)."""
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


def region_volumes(
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


def write_outputs(
    outputs, labels, uncertainty, probabilities, affine, label_values, record, timings, started
) -> None:
    """Writes every file beside its final name, renames them together, the JSON record last."""
    import nibabel as nib

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
