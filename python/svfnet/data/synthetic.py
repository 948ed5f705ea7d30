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
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Directions in patient space (RAS+: x to the patient's right, y anterior, z superior).
_APEX_DIRECTION_RAS = np.array([-0.55, 0.45, -0.70])  # base → apex: left, anterior, inferior
_RV_DIRECTION_RAS = np.array([0.70, 0.70, 0.0])  # LV → RV: right and anterior

OUTLIER_KINDS = ("dilated_lv", "small_rv")

REALISM_LEVELS = ("standard", "clinical")
#: ACDC's five groups, by ACDC's codes (``RV`` is "abnormal right ventricle").
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
GROUP_NAMES = {
    "NOR": "normal",
    "MINF": "previous myocardial infarction",
    "DCM": "dilated cardiomyopathy",
    "HCM": "hypertrophic cardiomyopathy",
    "RV": "abnormal right ventricle",
}
#: How the clinical cohort's NIfTI headers encode each subject's geometry (see :func:`encode_header`).
HEADER_STYLES = ("itk", "acdc", "qform-only", "sform-only", "disagree", "oblique")
#: Upper bound on a clinical subject's voxel count (the field of view shrinks, then pixels grow).
CLINICAL_MAX_VOXELS = 3_000_000
_NIFTI_XFORM_SCANNER_ANAT, _NIFTI_XFORM_ALIGNED_ANAT = 1, 2


@dataclass(frozen=True)
class Infarct:
    """A previous myocardial infarction: a thinned wall segment from some depth down to the apex.

    Angles turn about the long axis from the heart's ``x`` axis (the mid-septum) towards ``y``.
    """

    centre_deg: float  # centre of the segment
    half_width_deg: float  # half its angular extent (plus a 15° taper)
    wall_mm: float  # wall thickness of the scar
    from_fraction: float  # the segment starts this fraction of the LV length below the base


@dataclass(frozen=True)
class HeartAnatomy:
    """Shape parameters of one synthetic heart, in millimetres, in the heart frame.

    The heart frame has its origin at the centre of the LV base plane, ``z`` along the long axis
    from base to apex, ``x`` from the LV towards the RV, ``y = z × x``.
    """

    lv_radius_mm: float  # endocardial short-axis radius at the equator
    lv_ellipticity: float  # endocardial radius along y over radius along x
    lv_length_mm: float  # endocardial length, base plane to apex
    lv_wall_mm: float  # myocardial thickness at the equator
    rv_depth_mm: float  # crescent thickness at its widest, septum to free wall
    rv_width_mm: float  # half-width of the RV ellipsoid across the septum (along y)
    rv_length_fraction: float  # RV extent towards the apex, as a fraction of the LV length
    rv_wall_mm: float  # RV free-wall thickness
    base_tilt: tuple[float, float]  # slope of the base plane along x and y (dimensionless)
    papillary_radius_mm: float
    outlier: str  # "" for a typical heart, else one of OUTLIER_KINDS
    # the clinical cohort only (the standard cohort keeps these defaults and leaves them out of its metadata)
    group: str = ""  # one of GROUPS
    septal_extra_mm: float = 0.0  # septal thickening (asymmetric hypertrophy), mid-basal
    infarct: Infarct | None = None


_CLINICAL_ANATOMY_FIELDS = ("group", "septal_extra_mm", "infarct")


@dataclass(frozen=True)
class ScanGeometry:
    """How the heart sits in the chest and how the short-axis stack is planned."""

    in_plane_mm: float  # pixel size
    slice_mm: float  # slice thickness = slice spacing
    shape: tuple[int, int, int]  # (I, J, K)
    heart_to_stack: tuple[tuple[float, ...], ...]  # 3×3 rotation: columns are the heart axes in stack mm
    heart_origin_stack_mm: tuple[float, float, float]  # LV base centre in stack mm (voxel (0,0,0) at 0)
    stack_to_patient: tuple[tuple[float, ...], ...]  # 3×3 rotation from stack mm to RAS+ mm
    apex_first: bool  # slices stored from apex to base
    # the clinical cohort only (left out of the standard cohort's metadata)
    slice_offsets_mm: tuple[tuple[float, float], ...] = ()  # per slice, base first: content shift along i, j
    covers_base: bool = True  # the first (basal) slice lies above the base: the whole base is in view
    covers_apex: bool = True  # the last slice lies beyond the apex


_CLINICAL_GEOMETRY_FIELDS = ("slice_offsets_mm", "covers_base", "covers_apex")


@dataclass(frozen=True)
class HeaderEncoding:
    """How a NIfTI header encodes a subject's geometry (see :func:`encode_header`).

    ``qform`` and ``sform`` are the ``(4, 4)`` matrices written (``None`` where the code is 0);
    ``pixdim`` the voxel size written; ``geometry_from`` the part ITK takes the orientation and
    origin from (``"qform"`` or ``"sform"``; the spacing always comes from ``pixdim``).
    """

    style: str
    qform: tuple[tuple[float, ...], ...] | None
    qform_code: int
    sform: tuple[tuple[float, ...], ...] | None
    sform_code: int
    pixdim: tuple[float, float, float]
    geometry_from: str


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


def _matrix_tuple(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(matrix))


# ----------------------------------------------------------------------------- sampling
def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of subject ``index`` in the cohort of ``seed`` (independent of cohort size)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)))


def sample_anatomy(rng: np.random.Generator, outlier: str = "") -> HeartAnatomy:
    """Draws the shape of one heart; ``outlier`` makes a dilated LV or a small RV.

    Typical ranges are end-diastolic adult values: LV cavity diameter 42–58 mm, length 68–88 mm,
    wall 7–11 mm (LV blood pool ≈ 90–190 ml); RV crescent 14–24 mm deep with a 3–4.5 mm wall.
    """
    if outlier not in ("", *OUTLIER_KINDS):
        raise ValueError(f"sample_anatomy(): 'outlier' must be '' or one of {OUTLIER_KINDS}, got {outlier!r}")
    radius = rng.uniform(22.0, 30.0)
    length = rng.uniform(68.0, 88.0)
    wall = rng.uniform(7.0, 11.0)
    rv_depth = rng.uniform(18.0, 28.0)
    rv_width = rng.uniform(1.05, 1.25)  # times the LV epicardial radius, scaled below
    rv_length = rng.uniform(0.75, 0.92)
    if outlier == "dilated_lv":
        radius *= rng.uniform(1.3, 1.45)
        length *= rng.uniform(1.1, 1.2)
        wall *= rng.uniform(0.7, 0.85)
    elif outlier == "small_rv":
        rv_depth *= rng.uniform(0.4, 0.55)
        rv_width *= rng.uniform(0.75, 0.85)
        rv_length *= rng.uniform(0.7, 0.8)
    return HeartAnatomy(
        lv_radius_mm=float(radius),
        lv_ellipticity=float(rng.uniform(0.9, 1.1)),
        lv_length_mm=float(length),
        lv_wall_mm=float(wall),
        rv_depth_mm=float(rv_depth),
        rv_width_mm=float(rv_width * (radius + wall)),
        rv_length_fraction=float(rv_length),
        rv_wall_mm=float(rng.uniform(3.0, 4.5)),
        base_tilt=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
        papillary_radius_mm=float(rng.uniform(2.5, 4.5)),
        outlier=outlier,
    )


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """3×3 rotation by ``angle_rad`` about the unit vector ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle_rad) * cross + (1.0 - math.cos(angle_rad)) * cross @ cross


def _anatomical_heart_to_patient() -> np.ndarray:
    """Columns: heart x (towards the RV), y, z (base → apex) in RAS+ for a textbook heart."""
    apex = _APEX_DIRECTION_RAS / np.linalg.norm(_APEX_DIRECTION_RAS)
    towards_rv = _RV_DIRECTION_RAS - (_RV_DIRECTION_RAS @ apex) * apex
    towards_rv /= np.linalg.norm(towards_rv)
    return np.stack([towards_rv, np.cross(apex, towards_rv), apex], axis=1)


def sample_geometry(
    rng: np.random.Generator, anatomy: HeartAnatomy, spacing_mm: tuple[float, float] | None = None
) -> ScanGeometry:
    """Draws the pose of the heart and the short-axis acquisition for ``anatomy``.

    ``spacing_mm = (in_plane, slice)`` replaces the drawn pixel size and slice thickness.
    """
    in_plane_mm = float(rng.uniform(1.5, 2.5))
    slice_mm = float(rng.uniform(6.0, 10.0))
    if spacing_mm is not None:
        in_plane_mm, slice_mm = (float(s) for s in spacing_mm)
    fov_mm = rng.uniform(250.0, 300.0)
    n_in_plane = int(round(fov_mm / in_plane_mm))
    # the stack starts 0.5–1.5 slices above the base, plus room for the tilted base plane and stack
    # (≤ 0.15 × 60 mm and 6° over 60 mm), and ends 0.5–1.5 slices beyond the apex: the whole heart is in view
    above_mm = rng.uniform(0.5, 1.5) * slice_mm + 22.0
    heart_length_mm = anatomy.lv_length_mm + anatomy.lv_wall_mm
    below_mm = rng.uniform(0.5, 1.5) * slice_mm + 5.0
    n_slices = int(math.ceil((above_mm + heart_length_mm + below_mm) / slice_mm))

    # planning error: a few degrees of tilt of the stack, and the heart turned in the plane
    in_plane_rad = math.radians(200.0 + rng.uniform(-12.0, 12.0))  # RV towards image -i, -j
    tilt_axis_angle = rng.uniform(0.0, 2.0 * math.pi)
    tilt = _rotation(
        [math.cos(tilt_axis_angle), math.sin(tilt_axis_angle), 0.0], math.radians(rng.uniform(0, 6))
    )
    heart_to_stack = tilt @ _rotation([0.0, 0.0, 1.0], in_plane_rad)

    centre_in_plane = (n_in_plane - 1) * in_plane_mm / 2.0 + rng.uniform(-15.0, 15.0, size=2)
    heart_origin = (float(centre_in_plane[0]), float(centre_in_plane[1]), float(above_mm - slice_mm / 2.0))

    # the patient's pose in the scanner varies by up to ~10 degrees
    wobble = _rotation(rng.normal(size=3), math.radians(rng.uniform(0.0, 10.0)))
    stack_to_patient = wobble @ _anatomical_heart_to_patient() @ heart_to_stack.T
    return ScanGeometry(
        in_plane_mm=in_plane_mm,
        slice_mm=slice_mm,
        shape=(n_in_plane, n_in_plane, n_slices),
        heart_to_stack=tuple(tuple(float(v) for v in row) for row in heart_to_stack),
        heart_origin_stack_mm=heart_origin,
        stack_to_patient=tuple(tuple(float(v) for v in row) for row in stack_to_patient),
        apex_first=bool(rng.random() < 0.5),
    )


def sample_appearance(rng: np.random.Generator) -> dict[str, Any]:
    """Draws tissue intensities (blood ≈ 1), texture strength, noise, bias and scanner gain."""
    return {
        "blood": float(rng.uniform(0.85, 1.0)),
        "myocardium": float(rng.uniform(0.2, 0.33)),
        "fat": float(rng.uniform(0.65, 0.85)),
        "soft_tissue": float(rng.uniform(0.25, 0.4)),
        "muscle": float(rng.uniform(0.18, 0.3)),
        "liver": float(rng.uniform(0.3, 0.45)),
        "lung": float(rng.uniform(0.02, 0.07)),
        "bone": float(rng.uniform(0.12, 0.25)),
        "texture": float(rng.uniform(0.08, 0.2)),
        "noise_sigma": float(rng.uniform(0.025, 0.06)),  # relative to blood; SNR ≈ 15–40
        "bias_coefficients": [float(c) for c in rng.uniform(-0.12, 0.12, size=9)],
        "gain": float(rng.uniform(250.0, 1500.0)),
        # the body's own layout: sizes and offsets (mm) that differ between subjects
        "body_semi_axes_mm": [float(rng.uniform(140.0, 175.0)), float(rng.uniform(105.0, 130.0))],
        "body_offset_mm": [float(rng.uniform(15.0, 40.0)), float(rng.uniform(-55.0, -30.0))],
        "subcutaneous_fat_mm": float(rng.uniform(5.0, 22.0)),
        "chest_muscle_mm": float(rng.uniform(6.0, 14.0)),
        "lung_scale": float(rng.uniform(0.85, 1.15)),
        "liver_offset_mm": [
            float(rng.uniform(40.0, 80.0)),
            float(rng.uniform(-20.0, 10.0)),
            float(rng.uniform(-120.0, -80.0)),
        ],
        "epicardial_fat_mm": float(rng.uniform(1.5, 4.5)),
    }


def sample_group_anatomy(rng: np.random.Generator, group: str) -> HeartAnatomy:
    """Draws the shape of one heart of an ACDC group (one of :data:`GROUPS`).

    ``NOR`` is the standard cohort's typical heart. ``MINF``: a mildly dilated LV with a thinned
    segment (2.5–4.5 mm, 50–110° wide) from 15–50% of the LV length down to the apex. ``DCM``: LV
    radius ×1.3–1.5, length ×1.05–1.15, wall ×0.6–0.8. ``HCM``: LV radius ×0.7–0.85, wall 13–18 mm
    with 2–8 mm more at the mid-basal septum. ``RV`` (abnormal RV): RV depth ×1.4–1.8, width
    ×1.15–1.35, reaching 90–100% of the LV length, wall 2.5–4 mm.
    """
    if group not in GROUPS:
        raise ValueError(f"sample_group_anatomy(): 'group' must be one of {GROUPS}, got {group!r}")
    base = sample_anatomy(rng, "")
    radius, length, wall = base.lv_radius_mm, base.lv_length_mm, base.lv_wall_mm
    rv_depth, rv_length, rv_wall = base.rv_depth_mm, base.rv_length_fraction, base.rv_wall_mm
    rv_width_factor = base.rv_width_mm / (base.lv_radius_mm + base.lv_wall_mm)  # of the LV epicardial radius
    septal_extra, infarct = 0.0, None
    if group == "MINF":
        radius *= rng.uniform(1.0, 1.2)
        infarct = Infarct(
            centre_deg=float(rng.uniform(0.0, 360.0)),
            half_width_deg=float(rng.uniform(25.0, 55.0)),
            wall_mm=float(rng.uniform(2.5, 4.5)),
            from_fraction=float(rng.uniform(0.15, 0.5)),
        )
    elif group == "DCM":
        radius *= rng.uniform(1.3, 1.5)
        length *= rng.uniform(1.05, 1.15)
        wall *= rng.uniform(0.6, 0.8)
    elif group == "HCM":
        radius *= rng.uniform(0.7, 0.85)
        length *= rng.uniform(0.9, 1.0)
        wall = rng.uniform(13.0, 18.0)
        septal_extra = rng.uniform(2.0, 8.0)
    elif group == "RV":
        rv_depth *= rng.uniform(1.4, 1.8)
        rv_width_factor *= rng.uniform(1.15, 1.35)
        rv_length = rng.uniform(0.9, 1.0)
        rv_wall = rng.uniform(2.5, 4.0)
    return dataclasses.replace(
        base,
        lv_radius_mm=float(radius),
        lv_length_mm=float(length),
        lv_wall_mm=float(wall),
        rv_depth_mm=float(rv_depth),
        rv_width_mm=float(rv_width_factor * (radius + wall)),
        rv_length_fraction=float(rv_length),
        rv_wall_mm=float(rv_wall),
        group=group,
        septal_extra_mm=float(septal_extra),
        infarct=infarct,
    )


def _heart_lateral_reach_mm(anatomy: HeartAnatomy) -> float:
    """How far the ventricles reach from the LV long axis (mm)."""
    epicardial = anatomy.lv_radius_mm + anatomy.lv_wall_mm + anatomy.septal_extra_mm
    return max(
        epicardial + anatomy.rv_depth_mm + anatomy.rv_wall_mm, anatomy.rv_width_mm + anatomy.rv_wall_mm
    )


def sample_clinical_geometry(
    rng: np.random.Generator,
    anatomy: HeartAnatomy,
    spacing_mm: tuple[float, float] | None = None,
    max_voxels: int = CLINICAL_MAX_VOXELS,
) -> ScanGeometry:
    """Draws the pose and a clinical short-axis acquisition for ``anatomy``.

    In-plane pixels of 0.7–2 mm, 5–10 mm slices; a rectangular field of view (300–400 mm, the
    phase direction 70–100% of it, along ``i`` or ``j``), shrunk (never below the heart's extent
    plus margins), then coarser pixels, until at most ``max_voxels`` voxels; the heart turned
    200 ± 30° in plane, the stack tilted up to 8° off the long axis. Coverage: one stack in four
    starts below the base, three in ten stop short of the apex. Breath-hold misregistration: each
    slice's content shifted in plane by a normal offset (σ 0.5–2.5 mm a subject, at most 6 mm).

    ``spacing_mm = (in_plane, slice)`` replaces the drawn pixel size and slice thickness (the
    pixel size then stays, and ``max_voxels`` may be exceeded).
    """
    in_plane_mm = float(rng.uniform(0.7, 2.0))
    slice_mm = float(rng.uniform(5.0, 10.0))
    if spacing_mm is not None:
        in_plane_mm, slice_mm = (float(v) for v in spacing_mm)
    covers_base = bool(rng.random() >= 0.25)
    covers_apex = bool(rng.random() >= 0.3)

    in_plane_rad = math.radians(200.0 + rng.uniform(-30.0, 30.0))
    tilt_axis_angle = rng.uniform(0.0, 2.0 * math.pi)
    tilt_rad = math.radians(rng.uniform(0.0, 8.0))
    tilt = _rotation([math.cos(tilt_axis_angle), math.sin(tilt_axis_angle), 0.0], tilt_rad)
    heart_to_stack = tilt @ _rotation([0.0, 0.0, 1.0], in_plane_rad)
    wobble = _rotation(rng.normal(size=3), math.radians(rng.uniform(0.0, 10.0)))
    stack_to_patient = wobble @ _anatomical_heart_to_patient() @ heart_to_stack.T

    # along the stack, from the LV base centre (positive towards the apex): the tilted base plane
    # and stack move the base rim by up to `slope_mm`
    lateral_mm = _heart_lateral_reach_mm(anatomy)
    epicardial_mm = anatomy.lv_radius_mm + anatomy.lv_wall_mm
    slope_mm = math.tan(tilt_rad) * lateral_mm + max(abs(t) for t in anatomy.base_tilt) * epicardial_mm
    thinnest_apex_mm = min(anatomy.lv_wall_mm, anatomy.infarct.wall_mm if anatomy.infarct else math.inf)
    if covers_base:
        first_mm = -(rng.uniform(0.5, 1.5) * slice_mm + 5.0 + slope_mm)
    else:  # the first slice already cuts the ventricles
        first_mm = rng.uniform(0.2, 0.8) * slice_mm
    if covers_apex:  # the last slice lies at least this far: beyond the epicardial apex
        last_mm = anatomy.lv_length_mm + 0.8 * anatomy.lv_wall_mm + rng.uniform(0.3, 1.2) * slice_mm
        n_slices = int(math.ceil((last_mm - first_mm) / slice_mm)) + 1
    else:  # the last slice lies at most this far: it still cuts the apical myocardium
        last_mm = anatomy.lv_length_mm + 0.8 * thinnest_apex_mm - rng.uniform(0.6, 1.5) * slice_mm
        n_slices = int(math.floor((last_mm - first_mm) / slice_mm)) + 1

    # field of view: rectangular, the heart (and its misplacement) always inside
    min_fov_mm = 2.0 * (lateral_mm + 35.0)
    fov_read = rng.uniform(300.0, 400.0)
    fov_phase = fov_read * rng.uniform(0.7, 1.0)
    fov_mm = [fov_read, fov_phase] if rng.random() < 0.5 else [fov_phase, fov_read]
    fov_mm = [max(f, min_fov_mm) for f in fov_mm]
    shrink = math.sqrt(max_voxels / (fov_mm[0] / in_plane_mm * fov_mm[1] / in_plane_mm * n_slices))
    if shrink < 1.0:
        fov_mm = [max(f * shrink, min_fov_mm) for f in fov_mm]
        if spacing_mm is None:  # still too many: coarser pixels
            in_plane_mm = max(in_plane_mm, math.sqrt(fov_mm[0] * fov_mm[1] * n_slices / max_voxels))
    n_i, n_j = (int(math.floor(f / in_plane_mm)) for f in fov_mm)
    centre_offset = rng.uniform(-15.0, 15.0, size=2)
    heart_origin = (
        float((n_i - 1) * in_plane_mm / 2.0 + centre_offset[0]),
        float((n_j - 1) * in_plane_mm / 2.0 + centre_offset[1]),
        float(-first_mm),
    )
    sigma_mm = rng.uniform(0.5, 2.5)
    offsets = np.clip(rng.normal(0.0, sigma_mm, size=(n_slices, 2)), -6.0, 6.0)
    return ScanGeometry(
        in_plane_mm=float(in_plane_mm),
        slice_mm=slice_mm,
        shape=(n_i, n_j, n_slices),
        heart_to_stack=_matrix_tuple(heart_to_stack),
        heart_origin_stack_mm=heart_origin,
        stack_to_patient=_matrix_tuple(stack_to_patient),
        apex_first=bool(rng.random() < 0.5),
        slice_offsets_mm=tuple((float(a), float(b)) for a, b in offsets),
        covers_base=covers_base,
        covers_apex=covers_apex,
    )


def sample_clinical_appearance(rng: np.random.Generator, n_slices: int) -> dict[str, Any]:
    """Draws a cine bSSFP look: :func:`sample_appearance`, then wider contrasts and harder artefacts.

    Blood 0.75–1, myocardium 0.15–0.35, fat 0.55–0.95; noise σ 2–10% of blood (SNR ≈ 10–50);
    a stronger smooth bias (coefficients ±0.3) times a surface-coil hot spot; a gain per slice
    (breath-holds; σ up to 6%); in about one subject in three, dark bSSFP off-resonance bands.
    """
    look = sample_appearance(rng)
    look["blood"] = float(rng.uniform(0.75, 1.0))
    look["myocardium"] = float(rng.uniform(0.15, 0.35))
    look["fat"] = float(rng.uniform(0.55, 0.95))
    look["noise_sigma"] = float(rng.uniform(0.02, 0.1))
    look["bias_coefficients"] = [float(c) for c in rng.uniform(-0.3, 0.3, size=9)]
    angle = rng.uniform(0.0, 2.0 * math.pi)
    look["coil"] = {  # in-plane position on the [-1, 1]² field of view, near its border
        "centre": [float(1.1 * math.cos(angle)), float(1.1 * math.sin(angle))],
        "width": float(rng.uniform(0.4, 0.8)),
        "strength": float(rng.uniform(0.2, 0.9)),
    }
    look["slice_gains"] = [float(g) for g in np.exp(rng.normal(0.0, rng.uniform(0.0, 0.06), size=n_slices))]
    look["banding"] = None
    if rng.random() < 0.35:
        look["banding"] = {
            "angle_deg": float(rng.uniform(0.0, 360.0)),
            "period_mm": float(rng.uniform(60.0, 160.0)),
            "phase": float(rng.uniform(0.0, 1.0)),
            "curvature_per_mm": float(rng.uniform(-0.004, 0.004)),
            "width": float(rng.uniform(0.015, 0.04)),  # of a period
            "depth": float(rng.uniform(0.5, 0.9)),
        }
    return look


# ----------------------------------------------------------------------------- rendering
def _linear_upsampling(n_fine: int, n_coarse: int) -> np.ndarray:
    """``(n_fine, n_coarse)`` linear interpolation from a coarse to a fine 1D grid of the same length."""
    positions = np.linspace(0.0, n_coarse - 1.0, n_fine)
    lower = np.minimum(np.floor(positions).astype(int), n_coarse - 2)
    weight = (positions - lower).astype(np.float32)
    matrix = np.zeros((n_fine, n_coarse), dtype=np.float32)
    matrix[np.arange(n_fine), lower] = 1.0 - weight
    matrix[np.arange(n_fine), lower + 1] = weight
    return matrix


def _smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, ...],
    correlation_mm: float,
) -> np.ndarray:
    """Smooth noise on ``shape``: white noise on a grid ``correlation_mm`` apart, trilinearly upsampled.

    The upsampling is separable (three small matrix products), far cheaper than a general resampler.
    """
    coarse_shape = [
        max(2, int(math.ceil(n * s / correlation_mm)) + 1) for n, s in zip(shape, spacing_mm, strict=True)
    ]
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, (n_fine, n_coarse) in enumerate(zip(shape, coarse_shape, strict=True)):
        field = np.moveaxis(
            np.tensordot(_linear_upsampling(n_fine, n_coarse), field, axes=([1], [axis])), 0, axis
        )
    return np.ascontiguousarray(field)


def _ellipsoid_level(coords: tuple[np.ndarray, ...], centre, semi_axes) -> np.ndarray:
    """``Σ ((c - m) / a)²``: ≤ 1 inside the axis-aligned ellipsoid (in the frame of ``coords``)."""
    total = None
    for c, m, a in zip(coords, centre, semi_axes, strict=True):
        term = c - np.float32(m)
        scale = np.float32(1.0 / a) if np.ndim(a) == 0 else (1.0 / a).astype(np.float32)
        if np.broadcast_shapes(term.shape, np.shape(scale)) == term.shape:  # in place: large volumes
            term *= scale
            np.square(term, out=term)
        else:
            term = (term * scale) ** 2
        if total is None:
            total = term
        elif np.broadcast_shapes(total.shape, term.shape) == total.shape:
            total += term
        else:
            total = total + term
    return total


def _inside_ellipsoid(coords: tuple[np.ndarray, ...], centre, semi_axes) -> np.ndarray:
    """Boolean mask of points inside the axis-aligned ellipsoid."""
    return _ellipsoid_level(coords, centre, semi_axes) <= 1.0


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _angular_window(
    cos_angle: np.ndarray, sin_angle: np.ndarray, centre_deg: float, half_width_deg: float, taper_deg: float
) -> np.ndarray:
    """1 within ``half_width_deg`` of ``centre_deg``, 0 beyond ``half_width_deg + taper_deg``; smooth."""
    centre = math.radians(centre_deg)
    cos_distance = cos_angle * np.float32(math.cos(centre)) + sin_angle * np.float32(math.sin(centre))
    inner = math.cos(math.radians(min(half_width_deg, 180.0)))
    outer = math.cos(math.radians(min(half_width_deg + taper_deg, 180.0)))
    return _smoothstep((cos_distance - np.float32(outer)) * np.float32(1.0 / max(inner - outer, 1e-6)))


def _lv_wall_mm(hx: np.ndarray, hy: np.ndarray, hz: np.ndarray, a: HeartAnatomy) -> np.ndarray:
    """LV wall thickness (mm) at heart-frame positions: septal thickening and infarct thinning."""
    radial = np.sqrt(hx * hx + hy * hy) + np.float32(1e-3)
    cos_angle, sin_angle = hx / radial, hy / radial
    wall = np.full(np.broadcast_shapes(hx.shape, hy.shape, hz.shape), a.lv_wall_mm, dtype=np.float32)
    length = a.lv_length_mm
    if a.septal_extra_mm:  # the septum faces the RV (angle 0); thickest from the base to mid-cavity
        along = _smoothstep((np.float32(0.75 * length) - hz) * np.float32(1.0 / (0.2 * length)))
        wall += np.float32(a.septal_extra_mm) * _angular_window(cos_angle, sin_angle, 0.0, 40.0, 30.0) * along
    if a.infarct is not None:
        infarct = a.infarct
        start = infarct.from_fraction * length
        along = _smoothstep((hz - np.float32(start - 0.05 * length)) * np.float32(1.0 / (0.1 * length)))
        weight = (
            _angular_window(cos_angle, sin_angle, infarct.centre_deg, infarct.half_width_deg, 15.0) * along
        )
        wall -= (wall - np.float32(infarct.wall_mm)) * weight
    return wall


def _heart_regions(
    hx: np.ndarray, hy: np.ndarray, hz: np.ndarray, anatomy: HeartAnatomy, fat_mm: float = 0.0
) -> dict[str, np.ndarray]:
    """Boolean masks of the heart's structures at heart-frame positions (mm).

    ``fat_mm`` is the thickness of the epicardial fat layer (mask ``"fat"``) around the ventricles.
    """
    a = anatomy
    equator_z = -0.1 * a.lv_length_mm  # the ellipsoids' equator lies a little above the base plane
    endo_axes = (a.lv_radius_mm, a.lv_radius_mm * a.lv_ellipticity, a.lv_length_mm - equator_z)
    epi_axes = (endo_axes[0] + a.lv_wall_mm, endo_axes[1] + a.lv_wall_mm, endo_axes[2] + 0.8 * a.lv_wall_mm)
    centre = (0.0, 0.0, equator_z)
    coords = (hx, hy, hz)
    below_base = hz >= a.base_tilt[0] * hx + a.base_tilt[1] * hy  # the heart side of the base plane

    endo = _inside_ellipsoid(coords, centre, endo_axes)
    if a.septal_extra_mm or a.infarct is not None:  # the clinical groups: a wall that varies around the LV
        wall = _lv_wall_mm(hx, hy, hz, a)
        epi_level = _ellipsoid_level(
            coords, centre, (endo_axes[0] + wall, endo_axes[1] + wall, endo_axes[2] + 0.8 * wall)
        )
    else:
        epi_level = _ellipsoid_level(coords, centre, epi_axes)
    epi = epi_level <= 1.0
    lv_blood = endo & below_base
    lv_myo = epi & ~endo & below_base

    # RV: an ellipsoid straddling the septum; the part outside the LV epicardium is the crescent
    epi_radius = epi_axes[0]
    rv_centre = (0.5 * epi_radius, 0.0, equator_z)
    rv_axes = (
        0.5 * epi_radius + a.rv_depth_mm,
        a.rv_width_mm,
        a.rv_length_fraction * a.lv_length_mm - equator_z,
    )
    rv_cavity = _inside_ellipsoid(coords, rv_centre, rv_axes) & ~epi
    rv_outer_axes = tuple(s + a.rv_wall_mm for s in rv_axes)
    rv_outer_level = _ellipsoid_level(coords, rv_centre, rv_outer_axes)
    rv_outer = (rv_outer_level <= 1.0) & ~epi
    rv_blood = rv_cavity & below_base
    rv_myo = rv_outer & ~rv_cavity & below_base

    # papillary muscles on the LV free wall (away from the septum), labelled as blood pool
    papillary = np.zeros_like(lv_blood)
    for angle_deg in (135.0, 225.0):
        angle = math.radians(angle_deg)
        radial = a.lv_radius_mm - 1.2 * a.papillary_radius_mm
        papillary |= _inside_ellipsoid(
            coords,
            (radial * math.cos(angle), radial * math.sin(angle), 0.5 * a.lv_length_mm),
            (a.papillary_radius_mm, a.papillary_radius_mm, 0.25 * a.lv_length_mm),
        )
    papillary &= lv_blood

    # atria and aortic root above the base (bright blood, not labelled)
    atria = (
        _inside_ellipsoid(coords, (-10.0, 15.0, -30.0), (30.0, 25.0, 25.0))
        | _inside_ellipsoid(coords, (45.0, 20.0, -25.0), (25.0, 25.0, 25.0))
        | _inside_ellipsoid(coords, (10.0, -12.0, -25.0), (13.0, 13.0, 30.0))
    ) & ~below_base
    heart = (epi | rv_outer) & below_base
    # epicardial fat: the ellipsoids grown by fat_mm (level ≤ (1 + t/a)² ≈ a shell t thick)
    fat = (
        (
            (epi_level <= (1.0 + fat_mm / epi_radius) ** 2)
            | (rv_outer_level <= (1.0 + fat_mm / min(rv_outer_axes[:2])) ** 2)
        )
        & below_base
        & ~heart
    )
    return {
        "lv_blood": lv_blood,
        "lv_myo": lv_myo,
        "rv_blood": rv_blood,
        "rv_myo": rv_myo,
        "papillary": papillary,
        "atria": atria,
        "heart": heart,
        "fat": fat,
    }


def _to_frame(rotation: np.ndarray, origin: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray):
    """Coordinates of stack positions in a frame whose axes are the columns of ``rotation``."""
    dx, dy, dz = x - origin[0], y - origin[1], z - origin[2]
    return tuple(
        (rotation[0, a] * dx + rotation[1, a] * dy + rotation[2, a] * dz).astype(np.float32) for a in range(3)
    )


def render_subject(
    rng: np.random.Generator,
    anatomy: HeartAnatomy,
    geometry: ScanGeometry,
    appearance: dict[str, Any],
    sub_slice_mm: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Renders the image and labels of one subject (stack order base first).

    Each slice averages an odd number of sub-slices at most about ``sub_slice_mm`` apart (the
    clinical cohort takes 3.5 mm: its finer pixels cost more per sub-slice).

    Returns:
        ``(image, labels)``: ``(I, J, K)`` float32 intensities (blood ≈ ``gain``, before int16
        rounding) and uint8 labels sampled at slice centres.
    """
    n_i, n_j, n_k = geometry.shape
    dx, dz = geometry.in_plane_mm, geometry.slice_mm
    n_sub = int(math.ceil(dz / sub_slice_mm)) | 1  # odd, so that one sub-slice sits at the slice centre
    heart_to_stack = np.array(geometry.heart_to_stack)
    heart_origin = np.array(geometry.heart_origin_stack_mm)
    stack_to_patient = np.array(geometry.stack_to_patient)
    look = appearance

    # stack positions (mm), laid out (I, J, K, n_sub): the last axis is averaged into the slice
    x = (np.arange(n_i, dtype=np.float32) * dx)[:, None, None, None]
    y = (np.arange(n_j, dtype=np.float32) * dx)[None, :, None, None]
    sub = (np.arange(n_sub, dtype=np.float32) + 0.5) / n_sub - 0.5
    z = ((np.arange(n_k, dtype=np.float32)[:, None] + sub[None, :]) * dz)[None, None, :, :]
    # breath-hold misregistration (clinical cohort): each slice's heart shifted in plane, its
    # surroundings half as much
    x_heart, y_heart, x_chest, y_chest, shift_mm = x, y, x, y, 0.0
    if geometry.slice_offsets_mm:
        offsets = np.array(geometry.slice_offsets_mm, dtype=np.float32)
        shift_i, shift_j = offsets[:, 0][None, None, :, None], offsets[:, 1][None, None, :, None]
        x_heart, y_heart = x - shift_i, y - shift_j
        x_chest, y_chest = x - np.float32(0.5) * shift_i, y - np.float32(0.5) * shift_j
        shift_mm = float(np.abs(offsets).max())

    texture = _smooth_noise(rng, (n_i, n_j, n_k), (dx, dx, dz), 12.0)[..., None]
    fine_texture = _smooth_noise(rng, (n_i, n_j, n_k), (dx, dx, dz), 4.0)[..., None]

    # --- the chest, in patient-aligned coordinates centred on the heart (R, A, S)
    lv_centre_stack = heart_origin + heart_to_stack @ np.array([0.0, 0.0, 0.4 * anatomy.lv_length_mm])
    # the chest is smooth across a slice: it is drawn at slice centres only (the heart gets sub-slices)
    right, anterior, superior = _to_frame(
        stack_to_patient.T, lv_centre_stack, x_chest, y_chest, z[..., n_sub // 2 : n_sub // 2 + 1]
    )
    body_a, body_b = look["body_semi_axes_mm"]
    body_r, body_ant = look["body_offset_mm"]
    fat_mm, muscle_mm = look["subcutaneous_fat_mm"], look["chest_muscle_mm"]
    body_r2 = ((right - body_r) / body_a) ** 2 + ((anterior - body_ant) / body_b) ** 2
    inner_r2 = ((right - body_r) / (body_a - fat_mm)) ** 2 + ((anterior - body_ant) / (body_b - fat_mm)) ** 2
    core_r2 = ((right - body_r) / (body_a - fat_mm - muscle_mm)) ** 2 + (
        (anterior - body_ant) / (body_b - fat_mm - muscle_mm)
    ) ** 2
    image = np.zeros((n_i, n_j, n_k, 1), dtype=np.float32)
    image = np.where(body_r2 <= 1.0, look["fat"], image)
    image = np.where(inner_r2 <= 1.0, look["muscle"], image)
    image = np.where(core_r2 <= 1.0, look["soft_tissue"], image)
    scale = look["lung_scale"]
    lungs = _inside_ellipsoid(
        (right, anterior, superior), (85.0, -25.0, 30.0), (60 * scale, 75 * scale, 140.0)
    )
    lungs |= _inside_ellipsoid(
        (right, anterior, superior), (-75.0, -35.0, 30.0), (50 * scale, 70 * scale, 130.0)
    )
    lungs &= core_r2 <= 1.0
    vessels = fine_texture > 1.5
    image = np.where(lungs, np.where(vessels, 0.35 * look["blood"], look["lung"]), image)
    liver = _inside_ellipsoid((right, anterior, superior), look["liver_offset_mm"], (110.0, 90.0, 70.0)) & (
        core_r2 <= 1
    )
    image = np.where(liver, look["liver"], image)
    spine = ((right - 20.0) ** 2 + (anterior + 95.0) ** 2 <= 18.0**2) & (core_r2 <= 1.0)
    image = np.where(spine, look["bone"], image)
    aorta = (right + 5.0) ** 2 + (anterior + 68.0) ** 2 <= 11.0**2
    image = np.where(aorta, look["blood"], image)
    image *= 1.0 + look["texture"] * texture  # organ textures, different in every subject
    del right, anterior, superior, body_r2, inner_r2, lungs, vessels, liver, spine, aorta

    # --- the heart, evaluated in a box around it only
    epicardial = anatomy.lv_radius_mm + anatomy.lv_wall_mm
    crescent = epicardial + anatomy.rv_depth_mm + anatomy.rv_wall_mm
    atria_mm = 70.0  # the atria and the aortic root reach this far from the LV base centre
    tilt_mm = 0.11 * (anatomy.lv_length_mm + anatomy.lv_wall_mm)  # stack tilt (≤ 6°) over the heart's length
    reach_mm = max(crescent, anatomy.rv_width_mm + anatomy.rv_wall_mm, atria_mm) + tilt_mm
    reach_mm += look["epicardial_fat_mm"] + 2 * dx + shift_mm + anatomy.septal_extra_mm
    centre_i, centre_j = heart_origin[:2]
    i0, i1 = max(0, int((centre_i - reach_mm) / dx)), min(n_i, int((centre_i + reach_mm) / dx) + 2)
    j0, j1 = max(0, int((centre_j - reach_mm) / dx)), min(n_j, int((centre_j + reach_mm) / dx) + 2)
    box = (slice(i0, i1), slice(j0, j1))
    hx, hy, hz = _to_frame(heart_to_stack, heart_origin, x_heart[i0:i1], y_heart[:, j0:j1], z)
    regions = _heart_regions(hx, hy, hz, anatomy, look["epicardial_fat_mm"])
    del hx, hy, hz
    # epicardial fat is patchy: thickest where the texture is high
    epicardial_fat = regions["fat"] & (fine_texture[box] > -0.3)

    heart_image = np.broadcast_to(image[box], regions["heart"].shape)
    heart_image = np.where(epicardial_fat, look["fat"], heart_image)
    myocardium = regions["lv_myo"] | regions["rv_myo"] | regions["papillary"]
    blood = regions["lv_blood"] | regions["rv_blood"] | regions["atria"]
    # trabeculations: small dark spots in the blood pools, denser in the RV
    trabeculae = (regions["rv_blood"] & (fine_texture[box] > 1.2)) | (
        regions["lv_blood"] & (fine_texture[box] > 2.2)
    )
    blood_texture = 1.0 + 0.3 * look["texture"] * texture[box]
    heart_image = np.where(blood & ~myocardium, look["blood"] * blood_texture, heart_image)
    heart_image = np.where(myocardium | trabeculae, look["myocardium"] * blood_texture, heart_image)
    volume = image[..., 0]
    volume[box] = heart_image.mean(axis=3)  # thick slices: partial volume across the slice

    centre_sub = n_sub // 2
    labels = np.zeros((n_i, n_j, n_k), dtype=np.uint8)
    heart_labels = np.zeros(heart_image.shape[:3], dtype=np.uint8)
    for value, name in ((1, "lv_blood"), (2, "lv_myo"), (3, "rv_blood"), (4, "rv_myo")):
        heart_labels[regions[name][..., centre_sub]] = value
    labels[box] = heart_labels

    # --- acquisition: bias field, Rician noise, scanner gain
    u, v, w = np.meshgrid(
        np.linspace(-1, 1, n_i, dtype=np.float32),
        np.linspace(-1, 1, n_j, dtype=np.float32),
        np.linspace(-1, 1, n_k, dtype=np.float32),
        indexing="ij",
        sparse=True,
    )
    c = look["bias_coefficients"]
    bias = np.exp(
        c[0] * u
        + c[1] * v
        + c[2] * w
        + c[3] * u * u
        + c[4] * v * v
        + c[5] * w * w
        + c[6] * u * v
        + c[7] * u * w
        + c[8] * v * w
    )
    if "coil" in look:  # clinical cohort
        bias = bias * _clinical_shading(look, (n_i, n_j, n_k), dx)
    sigma = look["noise_sigma"] * look["blood"]
    real = volume * bias + rng.normal(0.0, sigma, size=volume.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, size=volume.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary) * look["gain"]
    return magnitude.astype(np.float32), labels


def _clinical_shading(look: dict[str, Any], shape: tuple[int, int, int], in_plane_mm: float) -> np.ndarray:
    """The clinical cohort's multiplicative shading ``(I, J, K)``: coil hot spot, slice gains, bands."""
    n_i, n_j, n_k = shape
    u = np.linspace(-1, 1, n_i, dtype=np.float32)[:, None, None]
    v = np.linspace(-1, 1, n_j, dtype=np.float32)[None, :, None]
    coil = look["coil"]
    distance2 = (u - np.float32(coil["centre"][0])) ** 2 + (v - np.float32(coil["centre"][1])) ** 2
    shading = np.exp(np.float32(coil["strength"]) * np.exp(distance2 * np.float32(-0.5 / coil["width"] ** 2)))
    shading = shading / shading.mean()
    shading = shading * np.array(look["slice_gains"], dtype=np.float32)[None, None, :]
    band = look.get("banding")
    if band:  # dark lines where the off-resonance phase wraps: along a gently curved, smooth field
        x_mm = (np.arange(n_i, dtype=np.float32) - (n_i - 1) / 2.0)[:, None, None] * np.float32(in_plane_mm)
        y_mm = (np.arange(n_j, dtype=np.float32) - (n_j - 1) / 2.0)[None, :, None] * np.float32(in_plane_mm)
        angle = math.radians(band["angle_deg"])
        across = x_mm * np.float32(math.cos(angle)) + y_mm * np.float32(math.sin(angle))
        along = -x_mm * np.float32(math.sin(angle)) + y_mm * np.float32(math.cos(angle))
        phase = (across + np.float32(band["curvature_per_mm"]) * along * along) / np.float32(
            band["period_mm"]
        )
        wrapped = (phase + np.float32(band["phase"])) % np.float32(1.0) - np.float32(0.5)
        shading = shading * (
            1.0 - np.float32(band["depth"]) * np.exp(-((wrapped / np.float32(band["width"])) ** 2))
        )
    return shading.astype(np.float32)


def stack_affine(geometry: ScanGeometry) -> np.ndarray:
    """The voxel → RAS+ mm affine of a stack stored base first; ``(4, 4)``."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(geometry.stack_to_patient) @ np.diag(
        [geometry.in_plane_mm, geometry.in_plane_mm, geometry.slice_mm]
    )
    # patient origin: put the LV base centre near the scanner isocentre, as a planned scan would
    affine[:3, 3] = -np.array(geometry.stack_to_patient) @ np.array(geometry.heart_origin_stack_mm)
    return affine


# ----------------------------------------------------------------------------- geometry and NIfTI headers
def _nearest_axis_aligned(rotation: np.ndarray) -> np.ndarray:
    """The signed permutation matrix nearest ``rotation`` (same determinant)."""
    best = max(
        itertools.permutations(range(3)),
        key=lambda rows: sum(abs(rotation[r, c]) for c, r in enumerate(rows)),
    )
    aligned = np.zeros((3, 3))
    for column, row in enumerate(best):
        aligned[row, column] = 1.0 if rotation[row, column] >= 0 else -1.0
    if np.linalg.det(aligned) * np.linalg.det(rotation) < 0:  # keep the handedness: flip the weakest axis
        weakest = min(range(3), key=lambda c: abs(rotation[best[c], c]))
        aligned[:, weakest] *= -1.0
    return aligned


def true_affine(geometry: ScanGeometry, header_style: str) -> np.ndarray:
    """The voxel → RAS+ affine of the stored clinical volume, ``(4, 4)``: the geometry its header encodes.

    The orientation depends on the style: ``"acdc"`` is stored with the rotation
    ``diag(-1, -1, 1)`` (ACDC's; the world frame then has no anatomical meaning), ``"itk"`` with the
    axis-aligned frame nearest the patient's pose, the others with the patient's double-oblique pose.
    The image content does not depend on it: only where the world puts the voxels.
    """
    if header_style not in HEADER_STYLES:
        raise ValueError(
            f"true_affine(): 'header_style' must be one of {HEADER_STYLES}, got {header_style!r}"
        )
    stack_to_patient = np.array(geometry.stack_to_patient)
    flip = np.diag([1.0, 1.0, -1.0 if geometry.apex_first else 1.0])  # stored frame ← base-first frame
    if header_style == "acdc":
        rotation = np.diag([-1.0, -1.0, 1.0]) @ flip
    elif header_style == "itk":
        rotation = _nearest_axis_aligned(stack_to_patient)
    else:
        rotation = stack_to_patient
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([geometry.in_plane_mm, geometry.in_plane_mm, geometry.slice_mm])
    affine[:3, 3] = -rotation @ np.array(geometry.heart_origin_stack_mm)
    if geometry.apex_first:
        reverse = np.eye(4)
        reverse[2, 2], reverse[2, 3] = -1.0, geometry.shape[2] - 1
        affine = affine @ reverse
    return affine


def _misplaced(affine: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """``affine`` turned 8–25° about the volume centre and moved 15–50 mm: a header part gone stale."""
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3]
    turn = _rotation(rng.normal(size=3), math.radians(rng.uniform(8.0, 25.0)))
    direction = rng.normal(size=3)
    shift = direction / np.linalg.norm(direction) * rng.uniform(15.0, 50.0)
    moved = np.eye(4)
    moved[:3, :3] = turn @ affine[:3, :3]
    moved[:3, 3] = turn @ (affine[:3, 3] - centre) + centre + shift
    return moved


def encode_header(
    affine: np.ndarray,
    header_style: str,
    rng: np.random.Generator | None = None,
    shape: tuple[int, int, int] = (1, 1, 1),
) -> HeaderEncoding:
    """How a header of style ``header_style`` encodes the true voxel → RAS+ ``affine``.

    ITK (and SimpleITK) read the spacing from ``pixdim``, and the orientation and origin from the
    sform when its code is 1 (scanner), else from the qform when its code is set, else from the
    sform (its columns normalised). Every style below makes ITK read ``affine``:

    - ``"itk"``, ``"oblique"``: qform = sform = ``affine``, codes 1 (what ITK and svfnet write);
    - ``"acdc"``: qform code 0; sform code 2 holding the rotation *without* the voxel size (the
      ACDC release); the voxel size only in ``pixdim``;
    - ``"qform-only"``: qform code 1, sform code 0;
    - ``"sform-only"``: qform code 0, sform code 2 (as the Sunnybrook conversions);
    - ``"disagree"``: both set and different (drawn with ``rng``): either qform code 1 true and a
      stale sform of code 2 (ITK reads the qform; nibabel's ``affine`` the wrong sform), or a stale
      qform and the true sform of code 1 (ITK and nibabel read the sform). The stale part is
      turned 8–25° and moved 15–50 mm about the centre of a volume of ``shape``.
    """
    if header_style not in HEADER_STYLES:
        raise ValueError(
            f"encode_header(): 'header_style' must be one of {HEADER_STYLES}, got {header_style!r}"
        )
    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    true = _matrix_tuple(affine)
    scanner, aligned = _NIFTI_XFORM_SCANNER_ANAT, _NIFTI_XFORM_ALIGNED_ANAT
    if header_style in ("itk", "oblique"):
        return HeaderEncoding(header_style, true, scanner, true, scanner, spacing, "sform")
    if header_style == "acdc":
        unscaled = affine.copy()
        unscaled[:3, :3] = affine[:3, :3] / np.array(spacing)
        return HeaderEncoding(header_style, None, 0, _matrix_tuple(unscaled), aligned, spacing, "sform")
    if header_style == "qform-only":
        return HeaderEncoding(header_style, true, scanner, None, 0, spacing, "qform")
    if header_style == "sform-only":
        return HeaderEncoding(header_style, None, 0, true, aligned, spacing, "sform")
    if rng is None:
        raise ValueError("encode_header(): the 'disagree' style draws its stale part: give 'rng'")
    stale = _matrix_tuple(_misplaced(affine, shape, rng))
    if rng.random() < 0.5:
        return HeaderEncoding(header_style, true, scanner, stale, aligned, spacing, "qform")
    return HeaderEncoding(header_style, stale, scanner, true, scanner, spacing, "sform")


def nifti_header(encoding: HeaderEncoding, shape: tuple[int, ...], dtype: Any) -> Any:
    """A ``nibabel.Nifti1Header`` written as ``encoding`` says (codes, qform, sform and ``pixdim``)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(None if encoding.qform is None else np.array(encoding.qform), code=encoding.qform_code)
    header.set_sform(None if encoding.sform is None else np.array(encoding.sform), code=encoding.sform_code)
    header["pixdim"][1:4] = encoding.pixdim
    header.set_xyzt_units("mm")
    return header


def nibabel_affine(encoding: HeaderEncoding) -> np.ndarray:
    """What ``nibabel.load(path).affine`` returns for a file written with ``encoding``: sform, else qform."""
    return np.asarray(nifti_header(encoding, (2, 2, 2), np.int16).get_best_affine(), dtype=np.float64)


def write_nifti_encoded(path: str | Path, data: np.ndarray, encoding: HeaderEncoding) -> None:
    """Writes a 3D volume atomically with the header ``encoding`` describes (not svfnet's own)."""
    import nibabel as nib

    from svfnet.common.atomic import atomic_path

    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"write_nifti_encoded(): 'data' must be (I, J, K), got shape {data.shape}")
    image = nib.Nifti1Image(data, None, header=nifti_header(encoding, data.shape, data.dtype))
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))


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

    from svfnet.common.atomic import write_json
    from svfnet.data.nifti import write_nifti

    out = Path(out)
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
    out.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    subjects_meta: dict[str, Any] = {}
    for index in tqdm(range(n_subjects), desc="synth", unit="subject", disable=not progress):
        subject = generate_subject(
            seed,
            index,
            outlier_fraction=outlier_fraction,
            realism=realism,
            header_style=header_style,
            max_voxels=max_voxels,
        )
        name = subject_name(index)
        if subject.header is None:
            write_nifti(out / f"{name}.nii.gz", subject.image, subject.affine)
            write_nifti(out / f"{name}_gt.nii.gz", subject.labels, subject.affine)
        else:
            write_nifti_encoded(out / f"{name}.nii.gz", subject.image, subject.header)
            write_nifti_encoded(out / f"{name}_gt.nii.gz", subject.labels, subject.header)
        subjects_meta[name] = subject.parameters()
        written.append(out / f"{name}.nii.gz")
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
    write_json(out / "synth.json", record)
    logger.info("wrote %d synthetic subjects to %s", n_subjects, out)
    return written
