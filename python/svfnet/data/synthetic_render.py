"""The synthetic cohort's images: a subject's parameters rendered into a short-axis stack and its
label map (chest surroundings, slice-thickness averaging, bias, noise; clinical shading)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from svfnet.data.synthetic_anatomy import HeartAnatomy, ScanGeometry


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
    x, y, z, x_heart, y_heart, x_chest, y_chest, shift_mm = _stack_positions(geometry, n_sub)

    texture = _smooth_noise(rng, (n_i, n_j, n_k), (dx, dx, dz), 12.0)[..., None]
    fine_texture = _smooth_noise(rng, (n_i, n_j, n_k), (dx, dx, dz), 4.0)[..., None]
    image = _draw_chest(anatomy, geometry, appearance, x_chest, y_chest, z, n_sub, texture, fine_texture)
    volume, labels = _draw_heart(
        image, anatomy, geometry, appearance, x_heart, y_heart, z, n_sub, shift_mm, texture, fine_texture
    )
    return _acquire(rng, volume, appearance, geometry), labels


def _stack_positions(geometry: ScanGeometry, n_sub: int):
    """Stack positions (mm) ``x, y, z`` laid out ``(I, J, K, n_sub)``, the in-plane ones of the heart
    and of the chest (shifted per slice in the clinical cohort), and the largest shift (mm)."""
    n_i, n_j, n_k = geometry.shape
    dx, dz = geometry.in_plane_mm, geometry.slice_mm
    # the last axis is averaged into the slice
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

    return x, y, z, x_heart, y_heart, x_chest, y_chest, shift_mm


def _draw_chest(anatomy, geometry, look, x_chest, y_chest, z, n_sub, texture, fine_texture) -> np.ndarray:
    """The chest around the heart (body, fat, muscle, lungs with vessels, liver, spine, aorta),
    ``(I, J, K, 1)`` float32, textured."""
    n_i, n_j, n_k = geometry.shape
    heart_to_stack = np.array(geometry.heart_to_stack)
    heart_origin = np.array(geometry.heart_origin_stack_mm)
    stack_to_patient = np.array(geometry.stack_to_patient)
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
    return image


def _draw_heart(image, anatomy, geometry, look, x_heart, y_heart, z, n_sub, shift_mm, texture, fine_texture):
    """The heart drawn into ``image`` (in a box around it only, averaged over the sub-slices):
    returns the volume ``(I, J, K)`` (a view of ``image``) and the labels at slice centres."""
    n_i, n_j, n_k = geometry.shape
    dx = geometry.in_plane_mm
    heart_to_stack = np.array(geometry.heart_to_stack)
    heart_origin = np.array(geometry.heart_origin_stack_mm)
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
    return volume, labels


def _acquire(rng: np.random.Generator, volume: np.ndarray, look: dict[str, Any], geometry: ScanGeometry):
    """Acquisition: bias field (and the clinical shading), Rician noise, scanner gain; float32."""
    n_i, n_j, n_k = geometry.shape
    dx = geometry.in_plane_mm
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
    return magnitude.astype(np.float32)


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
