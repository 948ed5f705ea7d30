"""Dataset readers: the plain, nnU-Net / Decathlon and ACDC layouts.

A :class:`Dataset` is a list of :class:`SubjectFiles` (an id, an image file, a label file, and the
label mapping to svfnet's regions); :func:`load_subject` reads one into a :class:`Subject`
(arrays, affine, the regions present), checking it on the way. Reading a dataset only lists
files (missing partners are errors); loading checks contents.

Layouts (``layout=None`` detects them in this order):

- ``nnunet``: ``dataset.json`` with ``imagesTr/`` and ``labelsTr/``; ``labelsTr/CASE.nii.gz``
  pairs with ``imagesTr/CASE_0000.nii.gz`` (nnU-Net) or ``imagesTr/CASE.nii.gz`` (Decathlon).
  Labels are mapped by their names in ``dataset.json`` (either ``{"1": "LV"}`` or
  ``{"LV": 1}``).
- ``acdc``: ``patientNNN/Info.cfg`` (``ED: n``, ``ES: n``) with ``patientNNN_frameFF.nii.gz`` and
  ``patientNNN_frameFF_gt.nii.gz``, in the dataset folder or up to two folders below it
  (``training/``, ``testing/``); ids are ``patientNNN_ED`` (or ``_ES``); labels 1 RV cavity → 3,
  2 myocardium → 2, 3 LV cavity → 1.
- ``plain``: ``NAME.nii.gz`` with ``NAME_gt.nii.gz`` or ``NAME_seg.nii.gz`` in one folder; labels
  are taken as svfnet's own unless a mapping is given. ``phase="ED"`` keeps the names ending in
  ``_ED`` (any case), likewise ``"ES"``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svfnet.data.labels import (
    ACDC_LABELS,
    IDENTITY_LABELS,
    LabelMapping,
    apply_label_mapping,
    check_label_mapping,
    format_label_mapping,
    label_mapping_from_names,
    label_values,
    mapped_regions,
)
from svfnet.data.nifti import NIFTI_SUFFIXES, is_nifti_name, nifti_stem, read_nifti

logger = logging.getLogger(__name__)

LAYOUTS = ("plain", "nnunet", "acdc")
PHASES = ("ED", "ES")
LABEL_SUFFIXES = ("_gt", "_seg")


@dataclass(frozen=True)
class SubjectFiles:
    """One subject of a dataset, not yet read.

    Attributes:
        id: unique id within the dataset (file-name safe).
        image: image file.
        labels: label-map file.
        label_mapping: ``{dataset value: svfnet value}``.
        layout: the layout it was read from.
        phase: ``"ED"``/``"ES"`` where the layout says, else ``None``.
    """

    id: str
    image: Path
    labels: Path
    label_mapping: LabelMapping
    layout: str
    phase: str | None = None

    @property
    def regions(self) -> frozenset[int]:
        """The regions this subject's labels can provide (after mapping)."""
        return mapped_regions(self.label_mapping)

    def source(self) -> dict:
        """JSON-ready description (for ``subjects.json`` and transforms)."""
        return {
            "layout": self.layout,
            "image": str(self.image.resolve()),
            "labels": str(self.labels.resolve()),
            "phase": self.phase,
            "label_mapping": format_label_mapping(self.label_mapping),
        }


@dataclass(frozen=True)
class Dataset:
    """A dataset: its folder, layout, label mapping and subjects (in a stable, sorted order)."""

    root: Path
    layout: str
    label_mapping: LabelMapping
    subjects: list[SubjectFiles] = field(default_factory=list)
    ignored_labels: dict[int, str] = field(default_factory=dict)  # nnU-Net names that match no region

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[SubjectFiles]:
        return iter(self.subjects)

    def __getitem__(self, index: int) -> SubjectFiles:
        return self.subjects[index]

    @property
    def regions(self) -> frozenset[int]:
        """The regions the dataset's labels can provide."""
        return mapped_regions(self.label_mapping)


@dataclass(frozen=True)
class Subject:
    """One loaded subject, labels already in svfnet's values.

    Attributes:
        id: the subject id.
        image: ``(I, J, K)`` float32 intensities.
        labels: ``(I, J, K)`` uint8 labels (0 background, 1–4 regions).
        affine: ``(4, 4)`` voxel → world mm (the image's).
        regions: the regions present (non-empty) in ``labels``.
        files: where it came from.
        unmapped_values: non-zero source label values the mapping did not list (now background).
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    regions: frozenset[int]
    files: SubjectFiles
    unmapped_values: tuple[int, ...] = ()

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k (mm)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- loading
def refuse_complex(path: str | Path, role: str = "image") -> None:
    """ValueError if the NIfTI file at ``path`` holds complex voxels (read from its header only).

    A complex image (raw MRI data, a Fourier-domain result) cast to float keeps the real part only,
    which is not the image anyone looks at: refused, naming the file, rather than read wrong. A
    file whose header cannot be read is left to :func:`svfnet.data.nifti.read_nifti`, which names it.
    """
    import nibabel as nib

    try:
        dtype = np.dtype(nib.load(str(path)).get_data_dtype())
    except Exception:  # noqa: BLE001 - read_nifti reports an unreadable file with its own message
        return
    if dtype.kind == "c":
        raise ValueError(
            f"{path}: the {role} holds complex values ({dtype}); svfnet reads real-valued images (save the "
            "magnitude, e.g. numpy.abs, as float32)"
        )


def load_subject(files: SubjectFiles) -> Subject:
    """Reads and checks one subject.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is unreadable or not NIfTI, not 3D, complex-valued, has NaN intensities; the image and
            label map disagree in shape or affine; or the label map holds no region after mapping.
    """
    refuse_complex(files.image)
    refuse_complex(files.labels, "label map")
    image, image_affine = read_nifti(files.image, kind="image")
    raw_labels, labels_affine = read_nifti(files.labels, kind="labels")
    if image.shape != raw_labels.shape:
        raise ValueError(
            f"{files.labels}: label map shape {raw_labels.shape} differs from image shape "
            f"{image.shape} of {files.image}"
        )
    if not np.allclose(image_affine, labels_affine, rtol=1e-5, atol=1e-2):
        raise ValueError(
            f"{files.labels}: label map affine differs from the affine of {files.image}:\n"
            f"{labels_affine}\nvs\n{image_affine}"
        )
    labels, unmapped = apply_label_mapping(raw_labels, files.label_mapping)
    if not labels.any():
        found = [int(v) for v in label_values(raw_labels)]
        raise ValueError(
            f"{files.labels}: the label map is empty after mapping "
            f"{format_label_mapping(files.label_mapping)} (values found: {found}); give the dataset's labels "
            "with --labels SRC:DST,..."
        )
    if unmapped:
        logger.info(
            "%s: label values %s are not in the mapping %s and become background",
            files.labels,
            unmapped,
            format_label_mapping(files.label_mapping),
        )
    regions = frozenset(int(v) for v in label_values(labels) if v)
    return Subject(files.id, image, labels, image_affine, regions, files, tuple(unmapped))


# ----------------------------------------------------------------------------- layouts
def read_dataset(
    root: str | Path,
    layout: str | None = None,
    *,
    phase: str | None = None,
    label_mapping: Mapping[int, int] | None = None,
) -> Dataset:
    """Lists the subjects of a dataset folder.

    Args:
        root: the dataset folder.
        layout: ``"plain"``, ``"nnunet"``, ``"acdc"``, or ``None`` to detect it.
        phase: ``"ED"`` or ``"ES"``: which ACDC frame to take (default ED); in the plain layout,
            keep the names ending in ``_ED``/``_ES`` (default: all). Not used by nnU-Net.
        label_mapping: ``{dataset value: svfnet value}``, overriding the layout's default.

    Returns:
        The dataset, subjects sorted by id.

    Raises:
        FileNotFoundError: ``root`` or a file a subject needs is missing.
        ValueError: unknown layout or phase, layout not recognised, no subjects, bad mapping,
            malformed ``dataset.json`` or ``Info.cfg``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    if layout is None:
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if phase is not None and phase.upper() not in PHASES:
        raise ValueError(f"phase must be ED or ES, got {phase!r}")
    phase = phase.upper() if phase is not None else None
    mapping = check_label_mapping(label_mapping) if label_mapping is not None else None
    if layout == "plain":
        return read_plain(root, phase=phase, label_mapping=mapping)
    if layout == "nnunet":
        if phase is not None:
            raise ValueError("phase (--phase) applies to the acdc and plain layouts, not to nnunet")
        return read_nnunet(root, label_mapping=mapping)
    return read_acdc(root, phase=phase or "ED", label_mapping=mapping)


def detect_layout(root: str | Path) -> str:
    """``"nnunet"`` if ``dataset.json`` and ``labelsTr/`` are there, ``"acdc"`` if ``*/Info.cfg`` files
    are, ``"plain"`` if NIfTI files are; else ``ValueError``."""
    root = Path(root)
    if (root / "dataset.json").is_file() and (root / "labelsTr").is_dir():
        return "nnunet"
    if _acdc_info_files(root):
        return "acdc"
    if any(is_nifti_name(path) for path in root.iterdir()):
        return "plain"
    raise ValueError(
        f"{root}: cannot tell the dataset layout (no dataset.json + labelsTr/, no patient*/Info.cfg, "
        "no .nii/.nii.gz files); give --layout"
    )


def _nifti_files(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the NIfTI files in ``folder`` (hidden files skipped)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if is_nifti_name(path) and path.is_file():
            stem = nifti_stem(path)
            if stem in files:
                raise ValueError(f"{folder}: both {files[stem].name} and {path.name} exist; keep one")
            files[stem] = path
    return files


def read_plain(
    root: str | Path, *, phase: str | None = None, label_mapping: LabelMapping | None = None
) -> Dataset:
    """Plain layout: ``NAME.nii.gz`` + ``NAME_gt.nii.gz`` (or ``_seg``) in one folder."""
    root = Path(root)
    files = _nifti_files(root)
    label_files = {stem: path for stem, path in files.items() if stem.endswith(LABEL_SUFFIXES)}
    images = {stem: path for stem, path in files.items() if stem not in label_files}
    mapping = dict(label_mapping if label_mapping is not None else IDENTITY_LABELS)
    subjects: list[SubjectFiles] = []
    for name, image in images.items():
        partners = [label_files[name + suffix] for suffix in LABEL_SUFFIXES if name + suffix in label_files]
        if not partners:
            raise FileNotFoundError(
                f"{image}: no label map beside it (expected {name}_gt.nii.gz or {name}_seg.nii.gz)"
            )
        if len(partners) > 1:
            raise ValueError(f"{image}: two label maps ({', '.join(p.name for p in partners)}); keep one")
        subject_phase = _name_phase(name)
        if phase is not None and subject_phase != phase:
            continue
        subjects.append(SubjectFiles(name, image, partners[0], mapping, "plain", subject_phase))
    for stem, path in label_files.items():
        if stem[: stem.rfind("_")] not in images:
            raise FileNotFoundError(f"{path}: label map without its image ({stem[: stem.rfind('_')]}.nii.gz)")
    if not subjects:
        what = f" whose name ends in _{phase}" if phase else ""
        raise ValueError(
            f"{root}: no image{what} with a label map (NAME.nii.gz + NAME_gt.nii.gz) in the plain layout"
        )
    return Dataset(root, "plain", mapping, subjects)


def _name_phase(name: str) -> str | None:
    match = re.search(r"_(ED|ES)$", name, flags=re.IGNORECASE)
    return match.group(1).upper() if match else None


def read_nnunet(root: str | Path, *, label_mapping: LabelMapping | None = None) -> Dataset:
    """nnU-Net / Medical Segmentation Decathlon layout, labels mapped by their names in ``dataset.json``."""
    root = Path(root)
    description_path = root / "dataset.json"
    if not description_path.is_file():
        raise FileNotFoundError(f"{description_path}: no such file (the nnunet layout needs dataset.json)")
    try:
        description = json.loads(description_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{description_path}: not readable JSON ({error})") from error
    for folder in ("imagesTr", "labelsTr"):
        if not (root / folder).is_dir():
            raise FileNotFoundError(
                f"{root / folder}: no such folder (the nnunet layout needs imagesTr/ and labelsTr/)"
            )
    ignored: dict[int, str] = {}
    if label_mapping is None:
        names = _nnunet_label_names(description_path, description)
        mapping, ignored = label_mapping_from_names(names)
        if not mapping:
            raise ValueError(
                f"{description_path}: none of the label names {sorted(names.values())} is an LV or RV "
                "region; give the mapping with --labels SRC:DST,..."
            )
        if ignored:
            logger.info(
                "%s: labels %s match no svfnet region and become background", description_path, ignored
            )
    else:
        mapping = label_mapping
    ending = str(description.get("file_ending", ".nii.gz"))
    if ending not in NIFTI_SUFFIXES:
        raise ValueError(f"{description_path}: file_ending {ending!r} is not NIfTI (.nii.gz or .nii)")
    subjects: list[SubjectFiles] = []
    for case, labels in _nifti_files(root / "labelsTr").items():
        candidates = [root / "imagesTr" / f"{case}_0000{ending}", root / "imagesTr" / f"{case}{ending}"]
        image = next((path for path in candidates if path.is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{labels}: no image for it ({candidates[0]} or {candidates[1]})")
        if (root / "imagesTr" / f"{case}_0001{ending}").is_file():
            logger.info("%s: several channels; svfnet uses channel 0000", case)
        subjects.append(SubjectFiles(case, image, labels, mapping, "nnunet"))
    if not subjects:
        raise ValueError(f"{root / 'labelsTr'}: no label maps (.nii.gz)")
    return Dataset(root, "nnunet", mapping, subjects, ignored)


def _nnunet_label_names(path: Path, description: dict) -> dict[int, str]:
    """``{value: name}`` from ``dataset.json``'s ``labels``.

    Decathlon writes ``{"1": "LV"}``, nnU-Net v2 ``{"LV": 1}``.
    """
    labels = description.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: no 'labels' dictionary; give the mapping with --labels SRC:DST,...")
    names: dict[int, str] = {}
    if all(re.fullmatch(r"\d+", str(key)) for key in labels):
        for key, name in labels.items():
            names[int(key)] = str(name)
        return names
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"{path}: label {name!r} has value {value!r}; region-based labels are not supported, "
                "give the mapping with --labels SRC:DST,..."
            )
        names[value] = str(name)
    return names


def _acdc_info_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in ("*/Info.cfg", "*/*/Info.cfg", "*/*/*/Info.cfg"):
        found.extend(root.glob(pattern))
    return sorted(found)


def read_acdc_info(path: str | Path) -> dict[str, str]:
    """The ``KEY: value`` lines of an ACDC ``Info.cfg``."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable ({error})") from error
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def read_acdc(root: str | Path, *, phase: str = "ED", label_mapping: LabelMapping | None = None) -> Dataset:
    """ACDC layout: one ``patientNNN/`` folder per subject, the ED or ES frame from ``Info.cfg``."""
    root = Path(root)
    phase = phase.upper()
    if phase not in PHASES:
        raise ValueError(f"phase must be ED or ES, got {phase!r}")
    mapping = dict(label_mapping if label_mapping is not None else ACDC_LABELS)
    subjects: list[SubjectFiles] = []
    for info_path in _acdc_info_files(root):
        folder = info_path.parent
        patient = folder.name
        info = read_acdc_info(info_path)
        value = info.get(phase, "")
        if not re.fullmatch(r"\d+", value):
            raise ValueError(f"{info_path}: expected a line '{phase}: <frame number>', got {value!r}")
        frame = int(value)
        paths = {}
        for kind, suffix in (("image", ""), ("labels", "_gt")):
            candidates = [folder / f"{patient}_frame{frame:02d}{suffix}{ending}" for ending in NIFTI_SUFFIXES]
            paths[kind] = next((path for path in candidates if path.is_file()), None)
            if paths[kind] is None:
                raise FileNotFoundError(
                    f"{candidates[0]}: no such file ({phase} is frame {frame} in {info_path})"
                )
        subjects.append(
            SubjectFiles(f"{patient}_{phase}", paths["image"], paths["labels"], mapping, "acdc", phase)
        )
    if not subjects:
        raise ValueError(f"{root}: no patient folder with an Info.cfg (the acdc layout)")
    ids = [subject.id for subject in subjects]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"{root}: patient folder names repeat ({sorted(i for i in ids if ids.count(i) > 1)})"
        )
    return Dataset(root, "acdc", mapping, sorted(subjects, key=lambda subject: subject.id))
