"""The atlases of a multi-atlas segmentation: the labelled, prepared subjects of a work folder (training
and validation by default), and how they are chosen for an image (normalised cross-correlation inside
the image's field of view; the most central atlases for the rigid alignment).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfnet.common.workdir import WorkDir
from svfnet.data.nifti import read_nifti
from svfnet.data.prepare import CanonicalFrame, CommonGrid
from svfnet.data.transform import PreparedTransform

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- atlases
@dataclass(frozen=True)
class Atlas:
    """One labelled prepared subject.

    Attributes:
        id: the subject's id in its work folder.
        image: ``(I, J, K)`` float32 prepared image in ``[0, 1]``.
        labels: ``(I, J, K)`` uint8 prepared labels.
        transform: prepared grid ↔ the subject's original image (its frame in ``record["frame"]``).
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    transform: PreparedTransform

    @property
    def prepared_affine(self) -> np.ndarray:
        """``(4, 4)``: prepared voxel → the subject's world (RAS+ mm)."""
        return self.transform.original_affine @ self.transform.prepared_to_original_voxel

    @property
    def frame(self) -> CanonicalFrame:
        return CanonicalFrame.from_record(self.transform.record["frame"])


@dataclass(frozen=True)
class AtlasSet:
    """The atlases of one work folder, on its common grid.

    Attributes:
        root: the work folder.
        atlases: the atlases, in the order of ``subjects.json``.
        grid: the common grid (shape, spacing, placement in the canonical frame).
        long_axis: how the subjects' long axis was found (``svfnet prepare --long-axis``).
        label_values: the label values the atlases hold, 0 first, ascending.
    """

    root: Path
    atlases: tuple[Atlas, ...]
    grid: CommonGrid
    long_axis: str
    label_values: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.atlases)

    def subset(self, indices) -> AtlasSet:
        """The atlases at ``indices`` (in that order), same grid and label values."""
        return AtlasSet(
            self.root, tuple(self.atlases[i] for i in indices), self.grid, self.long_axis, self.label_values
        )


def read_atlases(workdir: str | os.PathLike, subjects: list[str] | tuple[str, ...] | None = None) -> AtlasSet:
    """Reads the labelled prepared subjects of a work folder as atlases.

    Args:
        workdir: a work folder with ``prepared/`` (``svfnet prepare``).
        subjects: the subject ids to use; ``None``: the training and validation subjects of
            ``split.json`` when it exists, else every prepared subject. Subjects without labels (no
            label file, or labels that are all background) are left out.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: not a prepared work folder, an unknown subject id, no labelled subject left,
            subjects on different grids (each message names the folder).
    """
    folder = WorkDir(workdir)
    if not folder.root.is_dir():
        raise FileNotFoundError(f"{folder.root}: no such atlas folder")
    if not folder.subjects_json.is_file():
        raise ValueError(
            f"{folder.root}: not a prepared work folder (no prepared/subjects.json): the atlases must be the "
            "labelled subjects of a folder prepared by `svfnet prepare` (or `svfnet run`)"
        )
    record = json.loads(folder.subjects_json.read_text())
    known = [entry["id"] for entry in record.get("subjects", [])]
    if subjects is None:
        split_file = folder.root / "split.json"
        if split_file.is_file():
            split = json.loads(split_file.read_text())
            chosen = set(split.get("train", [])) | set(split.get("val", []))
            subjects = [s for s in known if s in chosen]
        else:
            subjects = known
    else:
        subjects = list(subjects)
        if unknown := sorted(set(subjects) - set(known)):
            raise ValueError(
                f"{folder.root}: no prepared subjects {unknown[:5]} (the folder has {len(known)})"
            )
    grid = CommonGrid.from_record(record["grid"]) if "grid" in record else None
    atlases: list[Atlas] = []
    values: set[int] = {0}
    for subject_id in subjects:
        if not (folder.labels(subject_id).is_file() and folder.image(subject_id).is_file()):
            logger.info("%s: %s has no prepared image or labels: not an atlas", folder.root, subject_id)
            continue
        labels = read_nifti(folder.labels(subject_id), kind="labels")[0]
        if not labels.any():
            logger.info("%s: %s has no labelled voxel: not an atlas", folder.root, subject_id)
            continue
        image = read_nifti(folder.image(subject_id), kind="image")[0]
        transform = PreparedTransform.from_record(json.loads(folder.transform(subject_id).read_text()))
        subject_grid = CommonGrid.from_record(transform.record["grid"])
        grid = grid or subject_grid
        if subject_grid.shape != grid.shape or not np.allclose(subject_grid.spacing_mm, grid.spacing_mm):
            raise ValueError(f"{folder.root}: {subject_id} is on another grid than the other subjects")
        values |= {int(v) for v in np.unique(labels)}
        atlases.append(Atlas(subject_id, image, labels.astype(np.uint8), transform))
    if not atlases:
        raise ValueError(
            f"{folder.root}: no labelled subjects to use as atlases (of {len(subjects)} subjects considered, "
            "none has a prepared label map with a labelled voxel)"
        )
    return AtlasSet(
        folder.root, tuple(atlases), grid, str(record.get("long_axis", "slices")), tuple(sorted(values))
    )


def image_similarity(target: np.ndarray, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalised cross-correlation (Pearson) of ``target`` ``(I, J, K)`` with each of ``images``
    ``(A, I, J, K)`` over the voxels of ``mask`` (all when ``None``); ``(A,)`` float64 in ``[-1, 1]``,
    0 for a constant image.

    Why this measure for selecting atlases: after the rigid alignment every image sits in the
    atlases' canonical frame with prepared intensities, so one correlation over the grid measures
    how alike the anatomy and its placement are, at the cost of a dot product per atlas (the mean
    local correlation costs a Gaussian filtering per atlas; on the demo's folder its 8 best atlases
    shared 5 to 7 with these, docs/segment.md).
    """
    target = np.asarray(target, np.float64)
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[1:] != target.shape:
        raise ValueError(f"image_similarity(): 'images' must be (A, *{target.shape}), got {images.shape}")
    keep = np.ones(target.shape, bool) if mask is None else np.asarray(mask, bool)
    t = target[keep] - target[keep].mean()
    x = images[:, keep]
    x = x - x.mean(axis=1, keepdims=True)
    denominator = np.sqrt((t @ t) * np.einsum("av,av->a", x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, x @ t / np.where(denominator > 0, denominator, 1.0), 0.0)


def central_atlases(atlases: AtlasSet) -> np.ndarray:
    """Atlas indices, the one whose prepared image correlates best on average with all the others
    (the medoid) first."""
    images = np.stack([a.image for a in atlases.atlases]).reshape(len(atlases), -1).astype(np.float64)
    images -= images.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(images, axis=1)
    correlation = (images @ images.T) / np.maximum(np.outer(norms, norms), 1e-12)
    return np.argsort(-correlation.sum(axis=1), kind="stable")


def medoid(atlases: AtlasSet) -> int:
    """Index of the atlas whose prepared image correlates best, on average, with all the others."""
    return int(central_atlases(atlases)[0])
