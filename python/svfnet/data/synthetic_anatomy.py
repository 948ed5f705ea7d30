"""The synthetic cohort's subjects as parameters: the heart's anatomy, the scan's geometry and the
image's appearance, sampled per subject (standard and clinical cohorts, ACDC's groups)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Directions in patient space (RAS+: x to the patient's right, y anterior, z superior).
_APEX_DIRECTION_RAS = np.array([-0.55, 0.45, -0.70])  # base → apex: left, anterior, inferior
_RV_DIRECTION_RAS = np.array([0.70, 0.70, 0.0])  # LV → RV: right and anterior

OUTLIER_KINDS = ("dilated_lv", "small_rv")

#: ACDC's five groups, by ACDC's codes (``RV`` is "abnormal right ventricle").
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
GROUP_NAMES = {
    "NOR": "normal",
    "MINF": "previous myocardial infarction",
    "DCM": "dilated cardiomyopathy",
    "HCM": "hypertrophic cardiomyopathy",
    "RV": "abnormal right ventricle",
}
#: Upper bound on a clinical subject's voxel count (the field of view shrinks, then pixels grow).
CLINICAL_MAX_VOXELS = 3_000_000


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


def matrix_tuple(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """A matrix as nested tuples of floats (hashable, for frozen dataclasses)."""
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


def axis_angle_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
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
    tilt = axis_angle_rotation(
        [math.cos(tilt_axis_angle), math.sin(tilt_axis_angle), 0.0], math.radians(rng.uniform(0, 6))
    )
    heart_to_stack = tilt @ axis_angle_rotation([0.0, 0.0, 1.0], in_plane_rad)

    centre_in_plane = (n_in_plane - 1) * in_plane_mm / 2.0 + rng.uniform(-15.0, 15.0, size=2)
    heart_origin = (float(centre_in_plane[0]), float(centre_in_plane[1]), float(above_mm - slice_mm / 2.0))

    # the patient's pose in the scanner varies by up to ~10 degrees
    wobble = axis_angle_rotation(rng.normal(size=3), math.radians(rng.uniform(0.0, 10.0)))
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
    tilt = axis_angle_rotation([math.cos(tilt_axis_angle), math.sin(tilt_axis_angle), 0.0], tilt_rad)
    heart_to_stack = tilt @ axis_angle_rotation([0.0, 0.0, 1.0], in_plane_rad)
    wobble = axis_angle_rotation(rng.normal(size=3), math.radians(rng.uniform(0.0, 10.0)))
    stack_to_patient = wobble @ _anatomical_heart_to_patient() @ heart_to_stack.T

    lateral_mm = _heart_lateral_reach_mm(anatomy)
    first_mm, n_slices = _clinical_slices(
        rng, anatomy, slice_mm, tilt_rad, lateral_mm, covers_base, covers_apex
    )

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
        heart_to_stack=matrix_tuple(heart_to_stack),
        heart_origin_stack_mm=heart_origin,
        stack_to_patient=matrix_tuple(stack_to_patient),
        apex_first=bool(rng.random() < 0.5),
        slice_offsets_mm=tuple((float(a), float(b)) for a, b in offsets),
        covers_base=covers_base,
        covers_apex=covers_apex,
    )


def _clinical_slices(rng, anatomy, slice_mm, tilt_rad, lateral_mm, covers_base, covers_apex):
    """Where the clinical stack's first slice lies (mm along the stack from the LV base centre,
    positive towards the apex) and how many slices it has, for the coverage drawn."""
    # along the stack, from the LV base centre (positive towards the apex): the tilted base plane
    # and stack move the base rim by up to `slope_mm`
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
    return first_mm, n_slices


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
