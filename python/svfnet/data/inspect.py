"""What a dataset holds, before anything is computed (``svfnet inspect DATASET``).

Per subject: the layout and frame it was found in, shape, voxel size and orientation as ITK reads
the headers, the header's disagreements, the label values and each region's volume (ml) and
slices, the regions missing, the warnings ``svfnet prepare`` would give, and — when it would refuse
the subject — why. Nothing is written; every subject is looked at even when an earlier one fails,
so that one run lists every problem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from svfnet.common.workdir import REGIONS
from svfnet.data.label_checks import label_warnings
from svfnet.data.labels import label_values
from svfnet.data.nifti import read_geometry, read_nifti
from svfnet.data.prepare import canonical_frame
from svfnet.data.readers import Dataset, SubjectFiles, load_subject

__all__ = ["RegionSummary", "SubjectInspection", "inspect_dataset", "inspect_subject", "summarise"]

REGION_NAMES = REGIONS  # svfnet's regions by label value (one home: svfnet.common.workdir)


@dataclass(frozen=True)
class RegionSummary:
    """One region of one subject: volume (ml), voxels, and the slices (k) it is labelled on."""

    name: str
    volume_ml: float
    voxels: int
    slices: list[int]


@dataclass
class SubjectInspection:
    """What ``svfnet inspect`` found for one subject (JSON-ready through :meth:`record`).

    Attributes:
        id, layout, phase, image, labels: the subject as the dataset reader listed it.
        shape: ``(I, J, K)`` of the image; ``None`` if its header could not be read.
        spacing_mm: voxel size as ITK reads the header.
        orientation: the world direction each array axis points to (nibabel's axis codes, RAS+).
        geometry_source: ``"sform"``, ``"qform"`` or ``"pixdim"``: what gave orientation and origin.
        header_warnings: the header's disagreements (image and label map).
        label_values: the values in the label map as stored (before mapping).
        regions: the regions present after mapping, by svfnet value.
        missing_regions: the regions svfnet knows that this subject lacks.
        labelled_slices: how many slices hold any label, of ``shape[2]``.
        warnings: what ``svfnet prepare`` would warn of.
        error: why ``svfnet prepare`` would refuse the subject, or ``None``.
    """

    id: str
    layout: str
    phase: str | None
    image: str
    labels: str
    shape: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    orientation: str | None = None
    geometry_source: str | None = None
    header_warnings: list[str] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)
    regions: dict[int, RegionSummary] = field(default_factory=dict)
    missing_regions: list[int] = field(default_factory=list)
    labelled_slices: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def record(self) -> dict[str, Any]:
        record = asdict(self)
        record["regions"] = {str(value): asdict(summary) for value, summary in self.regions.items()}
        return record


def inspect_subject(files: SubjectFiles, *, long_axis: str = "slices") -> SubjectInspection:
    """Looks at one subject as ``svfnet prepare`` would, without stopping at the first problem."""
    result = SubjectInspection(files.id, files.layout, files.phase, str(files.image), str(files.labels))
    try:
        for path in (files.image, files.labels):
            geometry, shape = read_geometry(path)
            result.header_warnings += list(geometry.problems)
            if path == files.image:
                result.shape, result.spacing_mm = shape, geometry.spacing_mm
                result.geometry_source = geometry.source
                result.orientation = "".join(nib.aff2axcodes(geometry.affine))
        subject = load_subject(files)
    except (OSError, ValueError) as error:
        result.error = str(error)
        return result
    raw = subject.labels  # in svfnet's values; the values as stored come from the file itself
    result.label_values = [int(v) for v in label_values(read_nifti(files.labels, kind="labels")[0])]
    voxel_ml = float(np.prod(subject.spacing_mm)) / 1000.0
    for value, name in REGION_NAMES.items():
        mask = raw == value
        voxels = int(np.count_nonzero(mask))
        if voxels:
            slices = [int(k) for k in np.flatnonzero(mask.any(axis=(0, 1)))]
            result.regions[value] = RegionSummary(name, round(voxels * voxel_ml, 3), voxels, slices)
        else:
            result.missing_regions.append(value)
    result.labelled_slices = int(np.count_nonzero(raw.any(axis=(0, 1))))
    result.warnings = label_warnings(subject)
    if float(subject.image.max()) <= float(subject.image.min()):
        result.error = f"{files.image}: the image is constant ({float(subject.image.min())})"
        return result
    try:
        canonical_frame(subject.labels, subject.affine, long_axis=long_axis)
    except ValueError as error:
        result.error = f"{files.labels}: {error}"
    return result


def inspect_dataset(
    dataset: Dataset, *, long_axis: str = "slices", progress: bool = True
) -> list[SubjectInspection]:
    """Inspects every subject of ``dataset`` (see :func:`inspect_subject`)."""
    from tqdm.auto import tqdm

    return [
        inspect_subject(files, long_axis=long_axis)
        for files in tqdm(dataset.subjects, desc="inspecting", unit="subject", disable=not progress)
    ]


def _range(values: list[float]) -> list[float] | None:
    return [round(min(values), 4), round(max(values), 4)] if values else None


def summarise(dataset: Dataset, inspections: list[SubjectInspection]) -> dict[str, Any]:
    """The dataset at a glance: counts, ranges of voxel size and volumes, the refused subjects."""
    readable = [s for s in inspections if s.spacing_mm is not None]
    volumes = {
        name: _range([s.regions[value].volume_ml for s in inspections if value in s.regions])
        for value, name in REGION_NAMES.items()
    }
    return {
        "dataset": str(dataset.root),
        "layout": dataset.layout,
        "subjects": len(inspections),
        "refused": {s.id: s.error for s in inspections if s.error},
        "with_header_warnings": [s.id for s in inspections if s.header_warnings],
        "with_warnings": [s.id for s in inspections if s.warnings],
        "missing_regions": {
            name: [s.id for s in inspections if s.error is None and value in s.missing_regions]
            for value, name in REGION_NAMES.items()
        },
        "in_plane_mm": _range(
            [min(s.spacing_mm[:2]) for s in readable] + [max(s.spacing_mm[:2]) for s in readable]
        ),
        "slice_mm": _range([s.spacing_mm[2] for s in readable]),
        "slices": _range([float(s.shape[2]) for s in readable if s.shape]),
        "volume_ml": volumes,
    }
