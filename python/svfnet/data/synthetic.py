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
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject: a scanner-like image, its label map and the voxel-to-RAS affine.

    Attributes:
        image: ``(I, J, K)`` int16 scanner values.
        labels: ``(I, J, K)`` uint8, svfnet's label convention.
        affine: ``(4, 4)`` voxel → RAS+ millimetres.
        anatomy: the shape parameters.
        geometry: the pose and acquisition.
        appearance: intensities, noise and bias parameters (JSON-ready).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    anatomy: HeartAnatomy
    geometry: ScanGeometry
    appearance: dict[str, Any]

    def parameters(self) -> dict[str, Any]:
        """The subject's parameters as JSON-ready data."""
        return {
            "anatomy": dataclasses.asdict(self.anatomy),
            "geometry": dataclasses.asdict(self.geometry),
            "appearance": self.appearance,
        }


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
        term = ((c - np.float32(m)) * np.float32(1.0 / a)) ** 2
        total = term if total is None else total + term
    return total


def _inside_ellipsoid(coords: tuple[np.ndarray, ...], centre, semi_axes) -> np.ndarray:
    """Boolean mask of points inside the axis-aligned ellipsoid."""
    return _ellipsoid_level(coords, centre, semi_axes) <= 1.0


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
    rng: np.random.Generator, anatomy: HeartAnatomy, geometry: ScanGeometry, appearance: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Renders the image and labels of one subject (stack order base first).

    Returns:
        ``(image, labels)``: ``(I, J, K)`` float32 intensities (blood ≈ ``gain``, before int16
        rounding) and uint8 labels sampled at slice centres.
    """
    n_i, n_j, n_k = geometry.shape
    dx, dz = geometry.in_plane_mm, geometry.slice_mm
    n_sub = int(math.ceil(dz / 2.0)) | 1  # odd, so that one sub-slice sits at the slice centre
    heart_to_stack = np.array(geometry.heart_to_stack)
    heart_origin = np.array(geometry.heart_origin_stack_mm)
    stack_to_patient = np.array(geometry.stack_to_patient)
    look = appearance

    # stack positions (mm), laid out (I, J, K, n_sub): the last axis is averaged into the slice
    x = (np.arange(n_i, dtype=np.float32) * dx)[:, None, None, None]
    y = (np.arange(n_j, dtype=np.float32) * dx)[None, :, None, None]
    sub = (np.arange(n_sub, dtype=np.float32) + 0.5) / n_sub - 0.5
    z = ((np.arange(n_k, dtype=np.float32)[:, None] + sub[None, :]) * dz)[None, None, :, :]

    texture = _smooth_noise(rng, (n_i, n_j, n_k), (dx, dx, dz), 12.0)[..., None]
    fine_texture = _smooth_noise(rng, (n_i, n_j, n_k), (dx, dx, dz), 4.0)[..., None]

    # --- the chest, in patient-aligned coordinates centred on the heart (R, A, S)
    lv_centre_stack = heart_origin + heart_to_stack @ np.array([0.0, 0.0, 0.4 * anatomy.lv_length_mm])
    # the chest is smooth across a slice: it is drawn at slice centres only (the heart gets sub-slices)
    right, anterior, superior = _to_frame(
        stack_to_patient.T, lv_centre_stack, x, y, z[..., n_sub // 2 : n_sub // 2 + 1]
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
    reach_mm += look["epicardial_fat_mm"] + 2 * dx
    centre_i, centre_j = heart_origin[:2]
    i0, i1 = max(0, int((centre_i - reach_mm) / dx)), min(n_i, int((centre_i + reach_mm) / dx) + 2)
    j0, j1 = max(0, int((centre_j - reach_mm) / dx)), min(n_j, int((centre_j + reach_mm) / dx) + 2)
    box = (slice(i0, i1), slice(j0, j1))
    hx, hy, hz = _to_frame(heart_to_stack, heart_origin, x[i0:i1], y[:, j0:j1], z)
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
    sigma = look["noise_sigma"] * look["blood"]
    real = volume * bias + rng.normal(0.0, sigma, size=volume.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, size=volume.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary) * look["gain"]
    return magnitude.astype(np.float32), labels


def stack_affine(geometry: ScanGeometry) -> np.ndarray:
    """The voxel → RAS+ mm affine of a stack stored base first; ``(4, 4)``."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(geometry.stack_to_patient) @ np.diag(
        [geometry.in_plane_mm, geometry.in_plane_mm, geometry.slice_mm]
    )
    # patient origin: put the LV base centre near the scanner isocentre, as a planned scan would
    affine[:3, 3] = -np.array(geometry.stack_to_patient) @ np.array(geometry.heart_origin_stack_mm)
    return affine


def generate_subject(
    seed: int,
    index: int = 0,
    *,
    outlier_fraction: float = 0.1,
    outlier: str | None = None,
    spacing_mm: tuple[float, float] | None = None,
) -> SyntheticSubject:
    """Generates subject ``index`` of the cohort ``seed``.

    Args:
        seed: cohort seed.
        index: subject number in the cohort.
        outlier_fraction: probability that the heart is an outlier (dilated LV or small RV).
        outlier: force the kind of heart (``""`` typical, or one of ``OUTLIER_KINDS``) instead of
            drawing it; everything else stays as drawn.
        spacing_mm: ``(in_plane, slice)`` voxel size replacing the drawn one (e.g. an isotropic
            volume for tests); ``None`` draws 1.5–2.5 mm pixels and 6–10 mm slices.

    Returns:
        The subject: int16 image, uint8 labels, affine and parameters.
    """
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


def generate_cohort(
    n_subjects: int, seed: int = 0, *, outlier_fraction: float = 0.1
) -> Iterator[SyntheticSubject]:
    """Yields the subjects ``0 .. n_subjects - 1`` of the cohort ``seed``."""
    for index in range(n_subjects):
        yield generate_subject(seed, index, outlier_fraction=outlier_fraction)


def subject_name(index: int) -> str:
    """File stem of synthetic subject ``index``: ``synth_000``..."""
    return f"synth_{index:03d}"


def write_synthetic_dataset(
    out: str | Path,
    n_subjects: int,
    seed: int = 0,
    *,
    outlier_fraction: float = 0.1,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Writes a synthetic cohort as a plain-layout dataset (``NAME.nii.gz`` + ``NAME_gt.nii.gz``).

    Also writes ``synth.json`` (seed and every subject's parameters). Files are written atomically.

    Args:
        out: dataset folder (created).
        n_subjects: number of subjects (≥ 1).
        seed: cohort seed.
        outlier_fraction: probability of an outlier heart.
        overwrite: allow writing into a folder that already holds files.
        progress: show a tqdm progress bar.

    Returns:
        The image paths written.

    Raises:
        ValueError: bad ``n_subjects`` or ``outlier_fraction``.
        FileExistsError: ``out`` holds files and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    from svfnet._io import write_json
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
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty: choose an empty folder, or overwrite (--force)")
    out.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    subjects_meta: dict[str, Any] = {}
    for index in tqdm(range(n_subjects), desc="synth", unit="subject", disable=not progress):
        subject = generate_subject(seed, index, outlier_fraction=outlier_fraction)
        name = subject_name(index)
        write_nifti(out / f"{name}.nii.gz", subject.image, subject.affine)
        write_nifti(out / f"{name}_gt.nii.gz", subject.labels, subject.affine)
        subjects_meta[name] = subject.parameters()
        written.append(out / f"{name}.nii.gz")
    write_json(
        out / "synth.json",
        {
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
        },
    )
    logger.info("wrote %d synthetic subjects to %s", n_subjects, out)
    return written
