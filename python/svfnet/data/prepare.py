"""Preparation: every subject rigidly aligned from its labels, cropped and resampled onto one grid.

For each subject a **canonical frame** is computed from its labels, in world millimetres:

- origin: the centroid of the LV blood pool (of the LV, or of all labels, when it is missing);
- ``k`` axis: the long axis, pointing from base to apex. By default (``long_axis="slices"``) its
  line is the slice normal of the short-axis stack, which is planned along the LV long axis, so
  slices stay slices and thick slices are never resampled obliquely; ``long_axis="labels"`` takes
  the principal axis of the LV labels instead (for data that is not a short-axis stack). The
  direction is chosen so that the LV's profile along the axis is skewed towards the apex (the LV
  narrows there: skewness ≥ 0.15); when the profile is too even (partial coverage), from anatomy
  (the apex points left, anterior and inferior in RAS+ patient space);
- ``i`` axis: from the LV centre towards the RV centroid, perpendicular to ``k``. Without RV
  labels, the anatomical LV → RV direction (right and anterior in patient space), and failing that
  the image's own ``i`` axis;
- ``j = k × i``: a proper rotation, so no subject is mirrored.

Every subject's frame is mapped onto one **common grid** (default ``64 × 64 × 16``): the LV centre
lands on the same voxel in every subject. Its spacing is, by default, the smallest that holds
every subject's labelled heart plus a margin (in-plane spacing equal along ``i`` and ``j``); it can
be given instead. Images are resampled trilinearly (with a Gaussian anti-aliasing prefilter where
the grid is coarser than the image), labels by one-hot trilinear interpolation and argmax;
outside the original field of view, images read 0 and labels background. Intensities are
normalised to ``[0, 1]`` between the 0.5th and 99.5th percentiles of the voxels inside the field of
view, then clipped.

The transform from the prepared grid back to the original image, the frame, the grid and the
intensity scaling are recorded per subject (``prepared/transforms/<id>.json``, see
:mod:`svfnet.data.transform`). Subjects that lack a region, whose labels reach the edge of the
image, whose LV blood pool is not enclosed by myocardium, and the like, are kept and reported
(``subjects.json``: ``missing_regions`` and ``warnings``).
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from svfnet.common.limits import MAX_SUBJECTS, check_grid_shape, check_memory, prepare_memory_bytes
from svfnet.common.locks import folder_lock
from svfnet.common.staging import STAGING, recover_replaced, remove_staging, replace_tree
from svfnet.common.workdir import REGIONS, WorkDir, write_prepared_subject, write_subjects
from svfnet.data.label_checks import label_warnings
from svfnet.data.labels import label_values
from svfnet.data.readers import Dataset, Subject, load_subject
from svfnet.data.transform import resample_labels

logger = logging.getLogger(__name__)

LONG_AXIS_SOURCES = ("slices", "labels")
DEFAULT_SHAPE = (64, 64, 16)
DEFAULT_MARGIN_MM = 10.0
PERCENTILES = (0.5, 99.5)

# Anatomical directions in RAS+ patient space, used only when the labels cannot decide.
APEX_DIRECTION_RAS = np.array([-0.55, 0.45, -0.70]) / np.linalg.norm([-0.55, 0.45, -0.70])
RV_DIRECTION_RAS = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)

_MIN_SKEWNESS = 0.15  # LV profile skewness below which it does not decide the apex (synthetic: 0.3–0.45)
_MIN_PROJECTION = 0.3  # an anatomical direction must be this far from the long axis to be used


# ----------------------------------------------------------------------------- the frame
@dataclass(frozen=True)
class CanonicalFrame:
    """A subject's canonical frame in world mm.

    Attributes:
        centre_mm: ``(3,)`` origin (the LV blood-pool centroid), world mm.
        axes: ``(3, 3)`` columns ``e_i`` (towards the RV), ``e_j = e_k × e_i``, ``e_k`` (base → apex).
        long_axis_from: ``"slices"`` or ``"labels"``.
        apex_from: what chose the base → apex sense: ``"lv_shape"`` or ``"anatomy"``.
        in_plane_from: what chose ``e_i``: ``"rv"``, ``"anatomy"`` or ``"image"``.
        centre_from: the labels the centre is the centroid of: ``"lv_blood_pool"``, ``"lv"``, ``"all"``.
    """

    centre_mm: np.ndarray
    axes: np.ndarray
    long_axis_from: str
    apex_from: str
    in_plane_from: str
    centre_from: str

    def to_canonical(self, world_mm: np.ndarray) -> np.ndarray:
        """Canonical coordinates of world points; ``(N, 3)`` → ``(N, 3)`` mm."""
        return (np.asarray(world_mm, dtype=np.float64) - self.centre_mm) @ self.axes

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CanonicalFrame:
        """The frame of a :meth:`record` (a prepared subject's ``transform["frame"]``)."""
        axes = np.stack([np.asarray(record["axes_world"][n], np.float64) for n in ("i", "j", "k")], axis=1)
        return cls(
            np.asarray(record["centre_world_mm"], np.float64),
            axes,
            str(record["long_axis_from"]),
            str(record["apex_from"]),
            str(record["in_plane_from"]),
            str(record["centre_from"]),
        )

    def record(self) -> dict[str, Any]:
        return {
            "centre_world_mm": [float(v) for v in self.centre_mm],
            "axes_world": {
                name: [float(v) for v in self.axes[:, n]] for n, name in enumerate(("i", "j", "k"))
            },
            "long_axis_from": self.long_axis_from,
            "apex_from": self.apex_from,
            "in_plane_from": self.in_plane_from,
            "centre_from": self.centre_from,
        }


def _world_points(labels: np.ndarray, affine: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """World mm of the voxels whose label is in ``values``; ``(N, 3)``."""
    index = np.argwhere(np.isin(labels, values)).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def canonical_frame(labels: np.ndarray, affine: np.ndarray, *, long_axis: str = "slices") -> CanonicalFrame:
    """Computes a subject's canonical frame from its labels (see the module's description).

    Args:
        labels: ``(I, J, K)`` labels in svfnet's values (at least one region present).
        affine: ``(4, 4)`` voxel → world mm.
        long_axis: ``"slices"`` (the slice normal) or ``"labels"`` (principal axis of the LV).

    Returns:
        The frame.
    """
    if long_axis not in LONG_AXIS_SOURCES:
        raise ValueError(f"long_axis must be one of {LONG_AXIS_SOURCES}, got {long_axis!r}")
    affine = np.asarray(affine, dtype=np.float64)
    blood = _world_points(labels, affine, (1,))
    lv = _world_points(labels, affine, (1, 2))
    rv = _world_points(labels, affine, (3, 4))
    everything = _world_points(labels, affine, (1, 2, 3, 4))
    if len(everything) == 0:
        raise ValueError("canonical_frame(): the label map holds no region")
    if len(blood):
        centre, centre_from = blood.mean(axis=0), "lv_blood_pool"
    elif len(lv):
        centre, centre_from = lv.mean(axis=0), "lv"
    else:
        centre, centre_from = everything.mean(axis=0), "all"
    shape_points = lv if len(lv) >= 10 else everything

    if long_axis == "slices":
        axis = _unit(affine[:3, 2])
    else:
        centred = shape_points - shape_points.mean(axis=0)
        _, eigenvectors = np.linalg.eigh(centred.T @ centred)
        axis = eigenvectors[:, -1]

    # the sense of the long axis: base → apex. The LV narrows towards the apex, so its profile along
    # the axis has a tail there (positive skewness); anatomy decides when the profile is too even
    projection = (shape_points - shape_points.mean(axis=0)) @ axis
    spread = projection.std()
    skewness = float(np.mean(projection**3) / spread**3) if spread > 0 else 0.0
    anatomical = float(axis @ APEX_DIRECTION_RAS)
    if abs(skewness) >= _MIN_SKEWNESS or abs(anatomical) < _MIN_PROJECTION:
        sign, apex_from = (1.0 if skewness >= 0 else -1.0), "lv_shape"
    else:
        sign, apex_from = math.copysign(1.0, anatomical), "anatomy"
    axis = sign * axis

    # the in-plane reference: towards the RV
    def perpendicular(vector: np.ndarray) -> np.ndarray:
        return vector - (vector @ axis) * axis

    towards_rv = perpendicular(rv.mean(axis=0) - centre) if len(rv) >= 10 else np.zeros(3)
    if np.linalg.norm(towards_rv) >= 1.0:
        in_plane, in_plane_from = _unit(towards_rv), "rv"
    elif np.linalg.norm(perpendicular(RV_DIRECTION_RAS)) >= _MIN_PROJECTION:
        in_plane, in_plane_from = _unit(perpendicular(RV_DIRECTION_RAS)), "anatomy"
    else:
        image_i = perpendicular(_unit(affine[:3, 0]))
        if np.linalg.norm(image_i) < _MIN_PROJECTION:
            image_i = perpendicular(_unit(affine[:3, 1]))
        in_plane, in_plane_from = _unit(image_i), "image"
    axes = np.stack([in_plane, np.cross(axis, in_plane), axis], axis=1)
    return CanonicalFrame(centre, axes, long_axis, apex_from, in_plane_from, centre_from)


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class CommonGrid:
    """The common grid, placed in the canonical frame.

    Attributes:
        shape: ``(I, J, K)``.
        spacing_mm: voxel size (mm).
        origin_mm: canonical coordinates (mm) of voxel ``(0, 0, 0)``; voxel ``p`` is at
            ``origin_mm + p · spacing_mm``.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CommonGrid:
        """The grid of a :meth:`record` (``subjects.json``'s ``"grid"``)."""
        return cls(
            tuple(int(n) for n in record["shape"]),  # type: ignore[arg-type]
            tuple(float(s) for s in record["spacing_mm"]),  # type: ignore[arg-type]
            tuple(float(o) for o in record["origin_canonical_mm"]),  # type: ignore[arg-type]
        )

    def record(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "origin_canonical_mm": list(self.origin_mm),
        }


def heart_extent(subject: Subject, frame: CanonicalFrame) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest canonical coordinates (mm) of the subject's labelled voxels; two ``(3,)``."""
    canonical = frame.to_canonical(_world_points(subject.labels, subject.affine, (1, 2, 3, 4)))
    return canonical.min(axis=0), canonical.max(axis=0)


def cohort_grid(
    extents: list[tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
) -> CommonGrid:
    """The grid that holds every subject's heart (the union of their canonical extents).

    Args:
        extents: per subject, the ``(low, high)`` canonical extent of its labels (mm).
        shape: grid shape.
        spacing_mm: voxel size; ``None`` picks the smallest for which the voxel centres span the
            union plus ``margin_mm`` on every side (equal along ``i`` and ``j``, rounded up to 0.01 mm).
        margin_mm: margin around the union (mm), when the spacing is picked.

    Returns:
        The grid, centred on the union of the extents.
    """
    low = np.min([lo for lo, _ in extents], axis=0)
    high = np.max([hi for _, hi in extents], axis=0)
    counts = np.array(shape, dtype=np.float64)
    if spacing_mm is None:
        needed = (high - low + 2.0 * margin_mm) / (counts - 1.0)  # first to last voxel centre
        in_plane = max(needed[0], needed[1])
        spacing = np.ceil(np.array([in_plane, in_plane, needed[2]]) * 100.0) / 100.0
    else:
        spacing = np.array(spacing_mm, dtype=np.float64)
    origin = (low + high) / 2.0 - (counts - 1.0) / 2.0 * spacing
    return CommonGrid(
        tuple(int(n) for n in shape),
        tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        tuple(float(o) for o in origin),
    )  # type: ignore[arg-type]


def prepared_to_original_matrix(frame: CanonicalFrame, grid: CommonGrid, affine: np.ndarray) -> np.ndarray:
    """``(4, 4)`` mapping a prepared voxel index to the original voxel index."""
    canonical_from_prepared = np.eye(4)
    canonical_from_prepared[:3, :3] = np.diag(grid.spacing_mm)
    canonical_from_prepared[:3, 3] = grid.origin_mm
    world_from_canonical = np.eye(4)
    world_from_canonical[:3, :3] = frame.axes
    world_from_canonical[:3, 3] = frame.centre_mm
    return np.linalg.inv(affine) @ world_from_canonical @ canonical_from_prepared


# ----------------------------------------------------------------------------- one subject
@dataclass(frozen=True)
class PreparedVolumes:
    """One subject on the common grid, with its transform record and report.

    Attributes:
        image: ``(I, J, K)`` float32 in ``[0, 1]``.
        labels: ``(I, J, K)`` uint8.
        transform: JSON-ready transform record (see :mod:`svfnet.data.transform`).
        entry: JSON-ready ``subjects.json`` entry (id, regions, missing regions, warnings, source).
    """

    image: np.ndarray
    labels: np.ndarray
    transform: dict[str, Any]
    entry: dict[str, Any]


def _antialias(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Gaussian prefilter along the original axes the grid samples more coarsely than the image."""
    steps = np.linalg.norm(matrix[:3, :3], axis=1)  # original voxels per prepared voxel, per original axis
    sigma = np.maximum(0.0, (steps - 1.0) / 2.0)
    return gaussian_filter(image, sigma=sigma, mode="nearest") if np.any(sigma > 0) else image


@dataclass(frozen=True)
class ResampledImage:
    """An image on the common grid, as :func:`resample_image` makes it.

    Attributes:
        image: ``grid.shape`` float32, intensities mapped to [0, 1] by the percentiles
            ``PERCENTILES`` (``low``, ``high``) of the values inside the original field of view,
            0 outside it.
        inside: flat bool mask of the grid voxels inside the original field of view.
        positions: ``(3, voxels)`` original voxel positions of the grid voxels.
        matrix: the 4×4 prepared-to-original voxel matrix.
    """

    image: np.ndarray
    inside: np.ndarray
    positions: np.ndarray
    matrix: np.ndarray
    low: float
    high: float


def resample_image(
    image: np.ndarray, affine: np.ndarray, frame: CanonicalFrame, grid: CommonGrid
) -> ResampledImage:
    """Resamples an original image onto the common grid (anti-aliased, trilinear) and normalises it:
    the one place where a cohort subject (:func:`prepare_subject`) and an image to register
    (``svfnet register``) get the same treatment."""
    matrix = prepared_to_original_matrix(frame, grid, affine)
    prepared_index = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    positions = matrix[:3, :3] @ prepared_index + matrix[:3, 3:]
    original_shape = np.array(image.shape, dtype=np.float64)[:, None]
    inside = np.all((positions >= -0.5) & (positions <= original_shape - 0.5), axis=0)
    values = map_coordinates(_antialias(image, matrix), positions, order=1, mode="nearest")
    values_inside = values[inside]
    low, high = (
        (float(v) for v in np.percentile(values_inside, PERCENTILES)) if values_inside.size else (0.0, 1.0)
    )
    if high <= low:  # flat around the heart: keep the values, shifted
        high = low + 1.0
    normalised = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    normalised[~inside] = 0.0
    return ResampledImage(normalised.reshape(grid.shape), inside, positions, matrix, low, high)


def prepare_subject(subject: Subject, frame: CanonicalFrame, grid: CommonGrid) -> PreparedVolumes:
    """Resamples one subject onto the common grid and normalises its intensities.

    Args:
        subject: the loaded subject.
        frame: its canonical frame.
        grid: the common grid.

    Returns:
        The prepared image and labels, with the transform record and the report entry.
    """
    resampled = resample_image(subject.image, subject.affine, frame, grid)
    matrix, low, high, normalised = resampled.matrix, resampled.low, resampled.high, resampled.image
    labels = resample_labels(subject.labels, resampled.positions, mode="nearest").reshape(grid.shape)
    labels.reshape(-1)[~resampled.inside] = 0

    warnings = label_warnings(subject)
    prepared_regions = {int(v) for v in label_values(labels) if v}
    lost = sorted(subject.regions - prepared_regions)
    if lost:
        warnings.append(f"regions {lost} vanished in resampling (too small for the grid)")
    foreground = np.argwhere(subject.labels > 0).astype(np.float64)
    in_prepared = (foreground - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T
    outside_grid = np.any((in_prepared < -0.5) | (in_prepared > np.array(grid.shape) - 0.5), axis=1)
    outside_fraction = float(np.mean(outside_grid)) if len(foreground) else 0.0
    if outside_fraction > 0:
        warnings.append(f"{100 * outside_fraction:.1f}% of the labelled voxels fall outside the common grid")
    missing = sorted(set(REGIONS) - prepared_regions)
    for warning in warnings:  # the report carries them; the log is for -v
        logger.info("%s: %s", subject.id, warning)

    transform = {
        "id": subject.id,
        "prepared_to_original_voxel": matrix.tolist(),
        "original_affine": subject.affine.tolist(),
        "original_shape": list(subject.image.shape),
        "prepared_shape": list(grid.shape),
        "spacing_mm": list(grid.spacing_mm),
        "grid": grid.record(),
        "frame": frame.record(),
        "intensity": {"method": "percentile", "percentiles": list(PERCENTILES), "low": low, "high": high},
        "source": subject.files.source(),
    }
    entry = {
        "id": subject.id,
        "regions": sorted(prepared_regions),
        "missing_regions": missing,
        "warnings": warnings,
        "outside_field_of_view_fraction": float(1.0 - np.mean(resampled.inside)),
        "labels_outside_grid_fraction": outside_fraction,
        "original_spacing_mm": [round(s, 4) for s in subject.spacing_mm],
        "source": subject.files.source(),
    }
    return PreparedVolumes(normalised, labels, transform, entry)


# ----------------------------------------------------------------------------- a dataset
@dataclass(frozen=True)
class PreparationReport:
    """What ``run_prepare`` did.

    Attributes:
        workdir: the work folder.
        grid: the common grid.
        entries: the ``subjects.json`` entries (id, regions, missing_regions, warnings, ...).
    """

    workdir: Path
    grid: CommonGrid
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def with_missing_regions(self) -> dict[str, list[int]]:
        return {e["id"]: e["missing_regions"] for e in self.entries if e["missing_regions"]}

    @property
    def with_warnings(self) -> dict[str, list[str]]:
        return {e["id"]: e["warnings"] for e in self.entries if e["warnings"]}


def _largest_volume(dataset: Dataset) -> int:
    """Voxels of the largest image of the dataset, from the headers only (a file whose header
    cannot be read is left to the first pass, which names it)."""
    import nibabel as nib

    largest = 0
    for files in dataset.subjects:
        try:
            largest = max(largest, math.prod(int(n) for n in nib.load(str(files.image)).shape[:3]))
        except Exception:  # noqa: BLE001 - reported with the file's name when it is read
            continue
    return largest


def check_preparation(dataset: Dataset, shape: tuple[int, int, int]) -> None:
    """The cohort's size and the memory preparing it needs (one subject at a time: the grid and the
    largest image), against the limits and this machine; ValueError before anything is read."""
    if len(dataset) > MAX_SUBJECTS:
        raise ValueError(f"{dataset.root}: {len(dataset):,} subjects, above the limit of {MAX_SUBJECTS:,}")
    check_memory(
        prepare_memory_bytes(shape, _largest_volume(dataset)),
        f"preparing {dataset.root} on a {'x'.join(map(str, shape))} grid",
        "use a smaller --shape (the default 64 64 16 needs about 0.3 GB)",
    )


def run_prepare(
    workdir: str | Path,
    dataset: Dataset,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    long_axis: str = "slices",
    overwrite: bool = False,
    progress: bool = True,
) -> PreparationReport:
    """The prepare stage: every subject of a dataset prepared into ``workdir/prepared/``.

    Every subject is read and checked, and every frame computed, before anything is written: a
    bad file stops the run with an error naming it and leaves the work folder as it was. The grid
    must suit SVF-Net (in-plane sizes divisible by 8, slices by 2) and the limits of
    :mod:`svfnet.common.limits`, and the memory preparation needs (estimated from the grid and the largest
    image's header) must be available, else ValueError before anything is read. The work folder is
    locked meanwhile (:mod:`svfnet.common.locks`). Each subject's content digests are recorded in
    ``subjects.json`` (``"digests"``): later stages' fingerprints are made of them.

    Args:
        workdir: the work folder.
        dataset: from :func:`svfnet.data.read_dataset`.
        shape: the common grid's shape ``(I, J, K)``.
        spacing_mm: the grid's voxel size; ``None`` fits the cohort's hearts (see :func:`cohort_grid`).
        margin_mm: margin around the hearts when the spacing is fitted.
        long_axis: ``"slices"`` or ``"labels"`` (see :func:`canonical_frame`).
        overwrite: replace an existing ``prepared/``. The new one is written beside it
            (``WORKDIR/.staging/prepare/``) and takes its place only when complete, so a failed or
            killed preparation leaves the old one as it was.
        progress: show tqdm progress bars.

    Returns:
        The report (also written as ``prepared/subjects.json``).

    Raises:
        FileExistsError: ``prepared/`` exists and ``overwrite`` is false.
        FileNotFoundError, ValueError: a bad input (named in the message).
        svfnet.common.locks.FolderLocked: another process is writing the work folder.
    """
    shape = check_grid_shape(tuple(shape), "--shape")
    if spacing_mm is not None and (
        len(spacing_mm) != 3 or not all(math.isfinite(s) and 0 < s <= 1000 for s in spacing_mm)
    ):
        raise ValueError(f"--spacing must be three positive numbers up to 1000 (mm), got {spacing_mm}")
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"--margin must be a non-negative number of mm, got {margin_mm}")
    if long_axis not in LONG_AXIS_SOURCES:
        raise ValueError(f"--long-axis must be one of {', '.join(LONG_AXIS_SOURCES)}, got {long_axis!r}")
    if len(dataset) == 0:
        raise ValueError(f"{dataset.root}: the dataset has no subjects")
    check_preparation(dataset, shape)
    folder = WorkDir(workdir)
    with folder_lock(folder.root, f"the work folder {folder.root}"):
        recover_replaced(folder.root)
        if folder.subjects_json.exists() and not overwrite:
            raise FileExistsError(
                f"{folder.prepared} already holds a prepared dataset; use --force to replace it"
            )
        # a prepared folder is replaced only once its successor is complete (written beside it)
        staged = folder.prepared.exists()
        target = WorkDir(folder.root / STAGING / "prepare") if staged else folder
        if staged and target.root.exists():
            shutil.rmtree(target.root)  # an earlier replacement that did not finish
        try:
            report = _prepare_into(dataset, target, shape, spacing_mm, margin_mm, long_axis, progress)
        except BaseException:
            if staged:
                remove_staging(folder.root, "prepare")
            raise
        if staged:
            replace_tree(target.prepared, folder.prepared)
            remove_staging(folder.root, "prepare")
    return PreparationReport(folder.root, report.grid, report.entries)


def _prepare_into(
    dataset: Dataset,
    folder: WorkDir,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float] | None,
    margin_mm: float,
    long_axis: str,
    progress: bool,
) -> PreparationReport:
    """The two passes of :func:`run_prepare`, writing ``folder.prepared``."""
    from tqdm.auto import tqdm

    # pass 1: read and check everything, compute the frames (nothing written)
    frames: list[CanonicalFrame] = []
    extents: list[tuple[np.ndarray, np.ndarray]] = []
    for files in tqdm(dataset.subjects, desc="checking", unit="subject", disable=not progress):
        subject = load_subject(files)
        if float(subject.image.max()) <= float(subject.image.min()):
            raise ValueError(f"{files.image}: the image is constant ({float(subject.image.min())})")
        frame = canonical_frame(subject.labels, subject.affine, long_axis=long_axis)
        frames.append(frame)
        extents.append(heart_extent(subject, frame))
    grid = cohort_grid(extents, shape, spacing_mm, margin_mm)
    logger.info("common grid %s at %s mm", grid.shape, grid.spacing_mm)

    # pass 2: resample and write
    entries: list[dict[str, Any]] = []
    for files, frame in tqdm(
        list(zip(dataset.subjects, frames, strict=True)),
        desc="preparing",
        unit="subject",
        disable=not progress,
    ):
        prepared = prepare_subject(load_subject(files), frame, grid)
        digests = write_prepared_subject(
            folder.root, files.id, prepared.image, prepared.labels, grid.spacing_mm, prepared.transform
        )
        entries.append({**prepared.entry, "digests": digests})
    write_subjects(
        folder.root,
        {
            "subjects": entries,
            "shape": list(grid.shape),
            "spacing_mm": list(grid.spacing_mm),
            "grid": grid.record(),
            "long_axis": long_axis,
            "dataset": {
                "root": str(dataset.root.resolve()),
                "layout": dataset.layout,
                "label_mapping": {str(k): v for k, v in sorted(dataset.label_mapping.items())},
            },
            "missing_regions": {e["id"]: e["missing_regions"] for e in entries if e["missing_regions"]},
        },
    )
    return PreparationReport(folder.root, grid, entries)
