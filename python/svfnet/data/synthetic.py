"""The built-in synthetic cohort: end-diastolic short-axis "cine SSFP" volumes with label maps.

Each subject is a heart drawn from a parametric anatomy (LV as a truncated ellipsoid of varying
length, radius and wall thickness; RV as a crescent wrapped on the septum with its own depth,
width, extent and thin free wall; papillary muscles; atria above the base), placed in a chest
whose surroundings change from subject to subject (body outline, subcutaneous fat, chest-wall
muscle, lungs with vessels, liver, spine, descending aorta, epicardial fat). The scan is a
short-axis stack planned on the long axis with a few degrees of error: every slice is rendered
on several thin sub-slices and averaged over the slice thickness (6–10 mm; in-plane pixels of
1.5–2.5 mm), then a smooth bias field, Rician noise and a scanner gain are applied.

Labels follow svfnet's convention (0 background, 1 LV blood pool with the papillary muscles,
2 LV myocardium including the septum, 3 RV blood pool, 4 RV myocardium) and are sampled at the
centre of every slice. Volumes are indexed ``[i, j, k]`` with ``k`` the slice axis; the affine
maps voxels to patient (RAS+) millimetres, with the heart in an anatomically plausible pose (apex
left-anterior-inferior, RV right-anterior of the LV), so readers can also use anatomical
directions. Half of the subjects have their slices stored apex first, half base first.

Everything is drawn from one :class:`numpy.random.Generator` per subject, itself spawned from the
cohort seed and the subject's index: subject ``n`` is the same whatever the cohort size.

``realism="clinical"`` draws another cohort, one that meets real cine-MRI data's problems (the
default ``"standard"`` cohort is unchanged by it, file for file):

- the five groups of ACDC (:data:`GROUPS`): normal, previous myocardial infarction (a thin wall
  segment reaching the apex), dilated cardiomyopathy (big, thin-walled LV), hypertrophic
  cardiomyopathy (thick wall, thicker septum, small cavity), abnormal RV (dilated RV);
- in-plane pixels of 0.7–2 mm on a rectangular field of view of varied size, 5–10 mm slices,
  at most :data:`CLINICAL_MAX_VOXELS` voxels;
- partial coverage: the stack may start below the base or stop short of the apex;
- breath-hold misregistration: every slice shifted by a few millimetres in plane (the heart fully,
  its surroundings by half), image and labels alike;
- stronger and coil-like bias, per-slice gain, lower SNR, wider contrasts, bSSFP banding;
- NIfTI headers in the styles met in public data (:data:`HEADER_STYLES`), each an encoding of the
  subject's true geometry; the metadata records the voxel → RAS+ affine that ITK reads.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import write_json
from svfnet.data.nifti import write_nifti
from svfnet.data.synthetic_anatomy import (
    CLINICAL_MAX_VOXELS,
    GROUP_NAMES,
    GROUPS,
    OUTLIER_KINDS,
    HeartAnatomy,
    ScanGeometry,
    sample_anatomy,
    sample_appearance,
    sample_clinical_appearance,
    sample_clinical_geometry,
    sample_geometry,
    sample_group_anatomy,
    subject_rng,
)
from svfnet.data.synthetic_headers import (
    HEADER_STYLES,
    HeaderEncoding,
    encode_header,
    nibabel_affine,
    stack_affine,
    true_affine,
    write_nifti_encoded,
)
from svfnet.data.synthetic_render import render_subject

logger = logging.getLogger(__name__)

REALISM_LEVELS = ("standard", "clinical")

_CLINICAL_ANATOMY_FIELDS = ("group", "septal_extra_mm", "infarct")
_CLINICAL_GEOMETRY_FIELDS = ("slice_offsets_mm", "covers_base", "covers_apex")


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject: a scanner-like image, its label map and the voxel-to-RAS affine.

    Attributes:
        image: ``(I, J, K)`` int16 scanner values.
        labels: ``(I, J, K)`` uint8, svfnet's label convention.
        affine: ``(4, 4)`` voxel → RAS+ millimetres: the true geometry (what ITK reads from the
            files written, whatever their header style).
        anatomy: the shape parameters.
        geometry: the pose and acquisition.
        appearance: intensities, noise and bias parameters (JSON-ready).
        realism: ``"standard"`` or ``"clinical"``.
        header: how the files encode ``affine`` (clinical cohort); ``None``: qform = sform, codes 1.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    anatomy: HeartAnatomy
    geometry: ScanGeometry
    appearance: dict[str, Any]
    realism: str = "standard"
    header: HeaderEncoding | None = None

    @property
    def slice_offsets_mm(self) -> np.ndarray:
        """``(K, 2)``: how far each stored slice's content is shifted along ``i`` and ``j`` (mm).

        In storage order; zeros for the standard cohort.
        """
        offsets = np.zeros((self.image.shape[2], 2))
        if self.geometry.slice_offsets_mm:
            offsets[:] = np.array(self.geometry.slice_offsets_mm)
            if self.geometry.apex_first:
                offsets = offsets[::-1]
        return offsets

    def parameters(self) -> dict[str, Any]:
        """The subject's parameters as JSON-ready data.

        The clinical cohort adds ``realism``, ``group``, ``header`` (style, codes, the qform and
        sform written, where ITK reads the geometry from), ``true_affine`` (voxel → RAS+ as ITK
        reads it), ``nibabel_affine`` (what ``nibabel.load(path).affine`` returns), ``shape``,
        ``spacing_mm``, ``coverage`` and ``slice_offsets_mm`` (storage order).
        """
        anatomy = dataclasses.asdict(self.anatomy)
        geometry = dataclasses.asdict(self.geometry)
        if self.realism == "standard":
            for name in _CLINICAL_ANATOMY_FIELDS:
                del anatomy[name]
            for name in _CLINICAL_GEOMETRY_FIELDS:
                del geometry[name]
            return {"anatomy": anatomy, "geometry": geometry, "appearance": self.appearance}
        header = self.header if self.header is not None else encode_header(self.affine, "itk")
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        return {
            "anatomy": anatomy,
            "geometry": geometry,
            "appearance": self.appearance,
            "realism": self.realism,
            "group": self.anatomy.group,
            "header": dataclasses.asdict(header),
            "true_affine": _matrix_list(self.affine),
            "nibabel_affine": _matrix_list(nibabel_affine(header)),
            "shape": [int(n) for n in self.image.shape],
            "spacing_mm": [float(v) for v in spacing],
            "coverage": {"base": self.geometry.covers_base, "apex": self.geometry.covers_apex},
            "slice_offsets_mm": self.slice_offsets_mm.tolist(),
        }


def _matrix_list(matrix: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(matrix)]


def generate_subject(
    seed: int,
    index: int = 0,
    *,
    outlier_fraction: float = 0.1,
    outlier: str | None = None,
    spacing_mm: tuple[float, float] | None = None,
    realism: str = "standard",
    group: str | None = None,
    header_style: str | None = None,
    max_voxels: int = CLINICAL_MAX_VOXELS,
) -> SyntheticSubject:
    """Generates subject ``index`` of the cohort ``seed``.

    Args:
        seed: cohort seed.
        index: subject number in the cohort.
        outlier_fraction: probability that the heart is an outlier (dilated LV or small RV);
            standard cohort only (the clinical cohort draws its groups instead).
        outlier: force the kind of heart (``""`` typical, or one of ``OUTLIER_KINDS``) instead of
            drawing it; everything else stays as drawn. Standard cohort only.
        spacing_mm: ``(in_plane, slice)`` voxel size replacing the drawn one (e.g. an isotropic
            volume for tests); ``None`` draws 1.5–2.5 mm pixels and 6–10 mm slices (clinical:
            0.7–2 mm and 5–10 mm).
        realism: ``"standard"`` (the default cohort) or ``"clinical"`` (the problems of real cine
            MRI: groups, partial coverage, slice offsets, artefacts, header styles; see the module).
        group: clinical cohort: force the ACDC group (one of :data:`GROUPS`) instead of drawing it
            (uniformly); the acquisition and appearance stay as drawn.
        header_style: clinical cohort: force the header style (one of :data:`HEADER_STYLES`)
            instead of drawing it (uniformly); only the affine and header change.
        max_voxels: clinical cohort: the most voxels a volume may have.

    Returns:
        The subject: int16 image, uint8 labels, affine (the true geometry) and parameters.
    """
    if realism not in REALISM_LEVELS:
        raise ValueError(f"generate_subject(): 'realism' must be one of {REALISM_LEVELS}, got {realism!r}")
    if not 0.0 <= outlier_fraction <= 1.0:
        raise ValueError(f"generate_subject(): 'outlier_fraction' must be in [0, 1], got {outlier_fraction}")
    if outlier is not None and outlier not in ("", *OUTLIER_KINDS):
        raise ValueError(
            f"generate_subject(): 'outlier' must be '', one of {OUTLIER_KINDS} or None, got {outlier!r}"
        )
    if spacing_mm is not None and (
        len(spacing_mm) != 2 or not all(0.5 <= float(v) <= 20.0 for v in spacing_mm)
    ):
        raise ValueError(
            f"generate_subject(): 'spacing_mm' must be (in_plane, slice) in [0.5, 20] mm, got {spacing_mm}"
        )
    if realism == "clinical":
        if outlier is not None:
            raise ValueError(
                "generate_subject(): 'outlier' is for the standard cohort; the clinical one takes 'group'"
            )
        return _generate_clinical_subject(seed, index, spacing_mm, group, header_style, max_voxels)
    if group is not None or header_style is not None:
        raise ValueError("generate_subject(): 'group' and 'header_style' need realism='clinical'")
    rng = subject_rng(seed, index)
    is_outlier = rng.random() < outlier_fraction
    drawn_kind = str(rng.choice(OUTLIER_KINDS))  # drawn always, so that forcing changes nothing else
    if outlier is None:
        outlier = drawn_kind if is_outlier else ""
    anatomy = sample_anatomy(rng, outlier)
    geometry = sample_geometry(rng, anatomy, spacing_mm)
    appearance = sample_appearance(rng)
    image, labels = render_subject(rng, anatomy, geometry, appearance)
    affine = stack_affine(geometry)
    if geometry.apex_first:
        # store the slices in the other order; the affine keeps every voxel at the same place
        image, labels = image[:, :, ::-1], labels[:, :, ::-1]
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, geometry.shape[2] - 1
        affine = affine @ flip
    image_int16 = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    return SyntheticSubject(
        np.ascontiguousarray(image_int16), np.ascontiguousarray(labels), affine, anatomy, geometry, appearance
    )


def _generate_clinical_subject(
    seed: int,
    index: int,
    spacing_mm: tuple[float, float] | None,
    group: str | None,
    header_style: str | None,
    max_voxels: int,
) -> SyntheticSubject:
    """The clinical cohort's subject ``index``: one independent random stream per part of it."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"generate_subject(): 'group' must be one of {GROUPS} or None, got {group!r}")
    if header_style is not None and header_style not in HEADER_STYLES:
        raise ValueError(
            f"generate_subject(): 'header_style' must be one of {HEADER_STYLES} or None, got {header_style!r}"
        )
    if int(max_voxels) != max_voxels or max_voxels < 100_000:
        raise ValueError(f"generate_subject(): 'max_voxels' must be an integer ≥ 100000, got {max_voxels}")
    # separate streams (children of the subject's own), so that forcing the group or the header
    # style changes nothing that does not depend on it
    streams = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).spawn(5)
    anatomy_rng, geometry_rng, appearance_rng, render_rng, header_rng = (
        np.random.default_rng(s) for s in streams
    )
    drawn_group = GROUPS[int(anatomy_rng.integers(len(GROUPS)))]
    anatomy = sample_group_anatomy(anatomy_rng, group or drawn_group)
    geometry = sample_clinical_geometry(geometry_rng, anatomy, spacing_mm, int(max_voxels))
    appearance = sample_clinical_appearance(appearance_rng, geometry.shape[2])
    image, labels = render_subject(render_rng, anatomy, geometry, appearance, sub_slice_mm=3.5)
    drawn_style = HEADER_STYLES[int(header_rng.integers(len(HEADER_STYLES)))]
    style = header_style or drawn_style
    affine = true_affine(geometry, style)
    if geometry.apex_first:
        image, labels = image[:, :, ::-1], labels[:, :, ::-1]
    header = encode_header(affine, style, header_rng, geometry.shape)
    image_int16 = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    return SyntheticSubject(
        np.ascontiguousarray(image_int16),
        np.ascontiguousarray(labels),
        affine,
        anatomy,
        geometry,
        appearance,
        realism="clinical",
        header=header,
    )


def generate_cohort(
    n_subjects: int,
    seed: int = 0,
    *,
    outlier_fraction: float = 0.1,
    realism: str = "standard",
    header_style: str | None = None,
    max_voxels: int = CLINICAL_MAX_VOXELS,
) -> Iterator[SyntheticSubject]:
    """Yields the subjects ``0 .. n_subjects - 1`` of the cohort ``seed`` (see :func:`generate_subject`)."""
    for index in range(n_subjects):
        yield generate_subject(
            seed,
            index,
            outlier_fraction=outlier_fraction,
            realism=realism,
            header_style=header_style,
            max_voxels=max_voxels,
        )


def subject_name(index: int) -> str:
    """File stem of synthetic subject ``index``: ``synth_000``..."""
    return f"synth_{index:03d}"


def write_synthetic_dataset(
    out: str | Path,
    n_subjects: int,
    seed: int = 0,
    *,
    outlier_fraction: float = 0.1,
    realism: str = "standard",
    header_style: str | None = None,
    max_voxels: int = CLINICAL_MAX_VOXELS,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Writes a synthetic cohort as a plain-layout dataset (``NAME.nii.gz`` + ``NAME_gt.nii.gz``).

    Also writes ``synth.json`` (seed and every subject's parameters; for the clinical cohort also
    its group, header encoding, true affine, coverage and slice offsets: see
    :meth:`SyntheticSubject.parameters`). Files are written atomically. The image and its label
    map carry the same header.

    Args:
        out: dataset folder (created).
        n_subjects: number of subjects (≥ 1).
        seed: cohort seed.
        outlier_fraction: probability of an outlier heart (standard cohort).
        realism: ``"standard"`` or ``"clinical"`` (see :func:`generate_subject`).
        header_style: clinical cohort: one of :data:`HEADER_STYLES` for every subject; ``None``
            draws one per subject.
        max_voxels: clinical cohort: the most voxels a volume may have (≥ 100,000).
        overwrite: allow writing into a folder that already holds files.
        progress: show a tqdm progress bar.

    Returns:
        The image paths written.

    Raises:
        ValueError: bad ``n_subjects``, ``outlier_fraction``, ``realism``, ``header_style`` or
            ``max_voxels``.
        FileExistsError: ``out`` holds files and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    _check_dataset_arguments(out, n_subjects, outlier_fraction, realism, header_style, max_voxels, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    subjects_meta: dict[str, Any] = {}
    cohort = generate_cohort(
        n_subjects,
        seed,
        outlier_fraction=outlier_fraction,
        realism=realism,
        header_style=header_style,
        max_voxels=max_voxels,
    )
    for index, subject in enumerate(
        tqdm(cohort, total=n_subjects, desc="synth", unit="subject", disable=not progress)
    ):
        name = subject_name(index)
        if subject.header is None:
            write_nifti(out / f"{name}.nii.gz", subject.image, subject.affine)
            write_nifti(out / f"{name}_gt.nii.gz", subject.labels, subject.affine)
        else:
            write_nifti_encoded(out / f"{name}.nii.gz", subject.image, subject.header)
            write_nifti_encoded(out / f"{name}_gt.nii.gz", subject.labels, subject.header)
        subjects_meta[name] = subject.parameters()
        written.append(out / f"{name}.nii.gz")
    record = _dataset_record(seed, outlier_fraction, realism, header_style, max_voxels, subjects_meta)
    write_json(out / "synth.json", record)
    logger.info("wrote %d synthetic subjects to %s", n_subjects, out)
    return written


def _check_dataset_arguments(out, n_subjects, outlier_fraction, realism, header_style, max_voxels, overwrite):
    """Raises on a bad argument of :func:`write_synthetic_dataset`, or an ``out`` it may not write into."""
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise ValueError(
            f"the number of subjects (n_subjects, --subjects) must be a positive integer, got {n_subjects}"
        )
    if not 0.0 <= outlier_fraction <= 1.0:
        raise ValueError(
            f"the outlier fraction (outlier_fraction, --outliers) must be in [0, 1], got {outlier_fraction}"
        )
    if realism not in REALISM_LEVELS:
        raise ValueError(
            f"the realism (realism, --realistic) must be one of {REALISM_LEVELS}, got {realism!r}"
        )
    if header_style is not None and (realism != "clinical" or header_style not in HEADER_STYLES):
        raise ValueError(
            f"the header style (header_style, --header-style) must be one of {HEADER_STYLES}, with the "
            f"clinical cohort (realism='clinical', --realistic); got {header_style!r} with realism "
            f"{realism!r}"
        )
    if realism == "clinical" and (int(max_voxels) != max_voxels or max_voxels < 100_000):
        raise ValueError(
            f"the voxel budget (max_voxels, --max-voxels) must be an integer ≥ 100000, got {max_voxels}"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty: choose an empty folder, or overwrite (--force)")


def _dataset_record(
    seed, outlier_fraction, realism, header_style, max_voxels, subjects_meta
) -> dict[str, Any]:
    """``synth.json``'s content: the seed, the label names and every subject's parameters."""
    record: dict[str, Any] = {
        "generator": "svfnet.data.synthetic",
        "seed": int(seed),
        "outlier_fraction": float(outlier_fraction),
        "labels": {
            "0": "background",
            "1": "LV blood pool",
            "2": "LV myocardium",
            "3": "RV blood pool",
            "4": "RV myocardium",
        },
        "subjects": subjects_meta,
    }
    if realism == "clinical":  # the standard cohort's record stays as it always was
        del record["outlier_fraction"]
        record["realism"] = realism
        record["header_style"] = header_style or "drawn per subject"
        record["groups"] = GROUP_NAMES
        record["max_voxels"] = int(max_voxels)
    return record
