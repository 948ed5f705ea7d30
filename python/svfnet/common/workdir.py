"""The work folder that every stage reads and writes: one place that knows its layout.

```
WORKDIR/
  prepared/                 svfnet prepare (or svfnet synth + prepare)
    subjects.json           {"subjects": [{"id", "regions", "missing_regions", "warnings", "source"}...],
                            "shape", "spacing_mm", "grid", "dataset", "missing_regions"} (written last)
    images/<id>.nii.gz      float32 image on the common grid
    labels/<id>.nii.gz      uint8 label map on the common grid (0 bg, 1 LV, 2 LV myo, 3 RV, 4 RV myo)
    transforms/<id>.json    the transform from the prepared grid back to the original image
  shapes/                   svfnet shapes
  references/               svfnet references
  models/                   svfnet train
  evaluation/               svfnet evaluate
```

Prepared NIfTI files carry the common grid's affine, a diagonal ``diag(spacing_mm)``: voxel
``(i, j, k)`` sits at ``(i, j, k) · spacing`` millimetres, the frame in which the shapes stage
stores landmarks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Regions of interest, as label values (README.md, Conventions).
REGIONS: dict[int, str] = {1: "LV blood pool", 2: "LV myocardium", 3: "RV blood pool", 4: "RV myocardium"}


@dataclass(frozen=True)
class WorkDir:
    """Paths of one work folder (nothing is created until a stage writes)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def subjects_json(self) -> Path:
        return self.prepared / "subjects.json"

    def image(self, subject_id: str) -> Path:
        return self.prepared / "images" / f"{subject_id}.nii.gz"

    def labels(self, subject_id: str) -> Path:
        return self.prepared / "labels" / f"{subject_id}.nii.gz"

    def transform(self, subject_id: str) -> Path:
        return self.prepared / "transforms" / f"{subject_id}.json"

    @property
    def shapes(self) -> Path:
        return self.root / "shapes"

    @property
    def references(self) -> Path:
        return self.root / "references"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"


@dataclass(frozen=True)
class PreparedSubject:
    """One subject on the common grid."""

    id: str
    image: np.ndarray  # float32 (I, J, K)
    labels: np.ndarray  # uint8 (I, J, K)
    spacing_mm: tuple[float, float, float]
    regions: frozenset[int]  # label values present (subset of REGIONS)


def subject_ids(workdir: str | Path) -> list[str]:
    """Ids of the prepared subjects, in the order of ``subjects.json``."""
    path = WorkDir(workdir).subjects_json
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `svfnet prepare` (or `svfnet synth`) for this work folder first"
        )
    return [entry["id"] for entry in json.loads(path.read_text())["subjects"]]


def read_prepared(workdir: str | Path, subject_id: str) -> PreparedSubject:
    """Loads one prepared subject (image, labels, spacing) from the work folder."""
    from svfnet.data.nifti import read_nifti

    folder = WorkDir(workdir)
    image, affine = read_nifti(folder.image(subject_id), kind="image")
    labels = read_nifti(folder.labels(subject_id), kind="labels")[0].astype(np.uint8)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    regions = frozenset(int(r) for r in np.unique(labels) if int(r) in REGIONS)
    return PreparedSubject(subject_id, image, labels, spacing, regions)


def read_all_prepared(workdir: str | Path) -> list[PreparedSubject]:
    return [read_prepared(workdir, subject_id) for subject_id in subject_ids(workdir)]


def write_prepared_subject(
    workdir: str | Path,
    subject_id: str,
    image: np.ndarray,
    labels: np.ndarray,
    spacing_mm: tuple[float, float, float],
    transform: dict[str, Any],
) -> dict[str, Any]:
    """Writes one prepared subject (image, labels, transform record), each file atomically.

    Args:
        workdir: the work folder.
        subject_id: the subject's id (a file-name stem).
        image: ``(I, J, K)`` float32 on the common grid.
        labels: ``(I, J, K)`` uint8 on the common grid (svfnet's label values).
        spacing_mm: the grid's voxel size; the NIfTI affine is ``diag(spacing_mm)``.
        transform: JSON-ready record of the transform back to the original image.

    Returns:
        The subject's content digests as :func:`subject_digests` makes them (``image``, ``labels``,
        ``spacing_mm``), for ``subjects.json``'s entry (``"digests"``).
    """
    from svfnet.common.atomic import write_json
    from svfnet.data.nifti import write_nifti

    image = np.asarray(image, dtype=np.float32)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(
            f"write_prepared_subject(): 'image' {image.shape} and 'labels' {labels.shape} must be the same "
            "(I, J, K) shape"
        )
    if not subject_id or "/" in subject_id or subject_id.startswith("."):
        raise ValueError(f"write_prepared_subject(): 'subject_id' {subject_id!r} is not a usable file name")
    folder = WorkDir(workdir)
    affine = np.diag([*(float(s) for s in spacing_mm), 1.0])
    write_nifti(folder.image(subject_id), image, affine)
    write_nifti(folder.labels(subject_id), labels.astype(np.uint8), affine)
    write_json(folder.transform(subject_id), transform)
    return subject_digests(image, labels.astype(np.uint8), spacing_mm)


def write_subjects(workdir: str | Path, record: dict[str, Any]) -> None:
    """Writes ``prepared/subjects.json`` atomically (``record["subjects"]`` lists ``{"id", ...}`` entries)."""
    from svfnet.common.atomic import write_json

    if not isinstance(record.get("subjects"), list) or any("id" not in entry for entry in record["subjects"]):
        raise ValueError("write_subjects(): 'record' must hold a 'subjects' list of entries with an 'id'")
    write_json(WorkDir(workdir).subjects_json, record)


# ------------------------------------------------------------------------------------ content digests
def array_digest(array: np.ndarray) -> str:
    """SHA-256 (16 hex digits) of an array's dtype, shape and values."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _rounded_spacing(spacing_mm) -> list[float]:
    # as a NIfTI header holds it (float32): recorded and read-back voxel sizes then agree exactly
    return [float(np.float32(s)) for s in spacing_mm]


def subject_digests(image: np.ndarray, labels: np.ndarray, spacing_mm) -> dict[str, Any]:
    """What a prepared subject holds, as digests: ``{"image", "labels", "spacing_mm"}``."""
    return {
        "image": array_digest(np.asarray(image, dtype=np.float32)),
        "labels": array_digest(np.asarray(labels, dtype=np.uint8)),
        "spacing_mm": _rounded_spacing(spacing_mm),
    }


def prepared_digests(
    workdir: str | Path,
    subject_ids_: list[str] | tuple[str, ...] | None = None,
    parts: tuple[str, ...] = ("image", "labels"),
) -> dict[str, str]:
    """One digest per prepared subject of the ``parts`` it holds (``"image"``, ``"labels"``) and its
    grid's voxel size: what a stage that reads those parts depends on (its fingerprint).

    ``svfnet prepare`` records each subject's digests in ``subjects.json``; a subject without them
    (a folder written otherwise) is read and digested here.
    """
    path = WorkDir(workdir).subjects_json
    record = json.loads(path.read_text()) if path.is_file() else {"subjects": []}
    entries = {entry["id"]: entry for entry in record.get("subjects", [])}
    ids = list(subject_ids_) if subject_ids_ is not None else subject_ids(workdir)
    out = {}
    for subject_id in ids:
        recorded = entries.get(subject_id, {}).get("digests") or {}
        if not all(key in recorded for key in (*parts, "spacing_mm")):
            subject = read_prepared(workdir, subject_id)
            recorded = subject_digests(subject.image, subject.labels, subject.spacing_mm)
        payload = json.dumps([[recorded[part] for part in parts], _rounded_spacing(recorded["spacing_mm"])])
        out[subject_id] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return out
