"""Training augmentations that keep the target SVF exact (or exact up to interpolation).

Two kinds, both on NumPy batches as the training loop draws them (``moving``, ``fixed``
``(B, I, J, K)`` float32, ``target`` ``(B, 3, I, J, K)`` float32 in voxels, labels ``(B, I, J, K)``
integers):

- :func:`augment_intensity` changes intensities only (bias field, gamma, contrast and brightness,
  noise): the geometry is untouched, so targets and labels are too. Each image gets its own draws,
  as two scans would.
- :func:`rotate_in_plane` turns each pair about the grid's in-plane centre, in millimetres, and
  conjugates the target by the rotation, which keeps ``fixed ≈ warp(moving, exp(target))``.

Prepared images (:mod:`svfnet.data.prepare`) are normalised to ``[0, 1]`` between the 0.5th and
99.5th percentiles of the voxels inside the original field of view, then clipped; outside that
field of view they are exactly 0. :func:`augment_intensity` keeps its output in the same range and
keeps exact zeros at zero, so that the network sees what a prepared image can look like.

Conventions (DESIGN.md): arrays ``[i, j, k]`` with ``k`` the slice axis; vector fields in voxels,
components ``(u_i, u_j, u_k)``; fields pull back, ``warp(moving, u)(x) = moving(x + u(x))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from svfnet.common.arrays import checked_real_array
from svfnet.data.prepare import PERCENTILES
from svfnet.ops import fields

__all__ = ["augment_intensity", "rotate_in_plane"]

# The "robust range" of an image lies between the percentiles preparation normalises by.
_ROBUST_PERCENTILES = PERCENTILES


# -------------------------------------------------------------------------------- argument checks
def _parameter(func: str, name: str, value: Any) -> float:
    """A finite, non-negative real number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{func}(): '{name}' must be a real number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{func}(): '{name}' must be finite and >= 0, got {value!r}")
    return number


# -------------------------------------------------------------------------------- intensities
def _unit_coordinates(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates mapped to [-1, 1] along each axis (0 along an axis of one voxel), broadcastable."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _bias_monomials(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The nine non-constant monomials of degree <= 2 in (i, j, k) scaled to [-1, 1], each ``shape``."""
    x, y, z = _unit_coordinates(shape)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    return [np.broadcast_to(t, shape) for t in terms]


def augment_intensity(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    bias: float = 0.3,
    gamma: float = 0.3,
    noise: float = 0.03,
    contrast: float = 0.2,
) -> np.ndarray:
    """Random intensity changes, drawn independently for each image (geometry unchanged).

    Each image ``x`` goes through, in this order (a step whose parameter is 0 is skipped):

    1. **Bias field**: ``x · exp(b)``, ``b`` a random quadratic polynomial in the voxel coordinates
       scaled to ``[-1, 1]`` along each axis (in plane and along the slices; no constant term), scaled
       so that ``max |b| = U(0, bias)``: a smooth multiplicative field, at most ``bias`` in log units.
    2. **Gamma**: normalised to ``[0, 1]`` by the image's own min/max, raised to ``exp(N(0, gamma))``,
       mapped back (skipped on a constant image).
    3. **Contrast and brightness**: ``lo + s (x − lo) + o · span`` with ``s = 1 + U(−contrast,
       contrast)``, ``o = U(−contrast/2, contrast/2)``, ``lo`` the image's minimum (the background of
       a prepared image) and ``span`` the input's robust range (99.5th − 0.5th percentile, the
       percentiles :mod:`svfnet.data.prepare` normalises by; the min–max range when that is 0).
    4. **Noise**, Rician like an MR magnitude image: ``floor + |x − floor + σ (n₁ + i n₂)|``, ``n₁, n₂``
       standard normal, ``σ = noise · span`` (no noise when ``span`` is 0).

    The result is clipped to ``[min(0, min x), max(1, max x)]`` — ``[0, 1]`` for prepared images,
    whose normalisation clips there too (``floor`` above is that range's low end) — and voxels that
    are exactly 0 in the input stay 0: in a prepared image they are outside the original field of
    view (or the darkest voxels, clipped to 0 by the normalisation), where the network always sees 0.

    Note that the test-time percentile normalisation removes any global linear change; step 3
    stands for the remaining spread (percentiles that fall on other tissue in another scan).

    The random numbers are drawn in the same order whatever parameters are 0, so a seed gives the
    same bias field with or without noise, say.

    Args:
        images: ``(B, I, J, K)`` (or one ``(I, J, K)`` image), real, finite; prepared images lie in
            ``[0, 1]``.
        rng: the generator to draw from (advanced by the call).
        bias: largest amplitude of the log bias field (log units, ``>= 0``).
        gamma: standard deviation of the log of the gamma exponent (``>= 0``).
        noise: noise standard deviation, as a fraction of each image's robust range (``>= 0``).
        contrast: half-width of the contrast scale's range around 1; the brightness offset's
            half-width is ``contrast / 2`` of the robust range (``>= 0``).

    Returns:
        float32 array of ``images``' shape, finite. With every parameter 0, equal to ``images``.

    Raises:
        ValueError: a parameter negative or not finite, ``images`` not 3-D or 4-D, empty or not finite.
        TypeError: ``rng`` not a ``numpy.random.Generator``.
    """
    func = "augment_intensity"
    images = checked_real_array(func, "images", images, (3, 4))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{func}(): 'rng' must be a numpy.random.Generator, got {type(rng).__name__}")
    bias = _parameter(func, "bias", bias)
    gamma = _parameter(func, "gamma", gamma)
    noise = _parameter(func, "noise", noise)
    contrast = _parameter(func, "contrast", contrast)
    batch = images if images.ndim == 4 else images[None]
    shape = tuple(int(s) for s in batch.shape[1:])
    monomials = _bias_monomials(shape) if bias > 0 else []
    out = np.empty(batch.shape, dtype=np.float32)
    for n in range(batch.shape[0]):
        out[n] = _augment_one(batch[n], rng, monomials, bias, gamma, noise, contrast)
    return out if images.ndim == 4 else out[0]


def _augment_one(
    image: np.ndarray,
    rng: np.random.Generator,
    monomials: list[np.ndarray],
    bias: float,
    gamma: float,
    noise: float,
    contrast: float,
) -> np.ndarray:
    """One image of :func:`augment_intensity`, float32."""
    # every draw, in a fixed order, whether or not its step runs (see the docstring)
    coefficients = rng.standard_normal(9)
    amplitude = rng.uniform(0.0, bias)
    exponent = math.exp(rng.normal(0.0, gamma))
    scale = 1.0 + rng.uniform(-contrast, contrast)
    offset = rng.uniform(-contrast / 2, contrast / 2)
    gaussian = rng.standard_normal((2, *image.shape))

    x = image.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    floor, ceiling = min(lo, 0.0), max(hi, 1.0)
    p_low, p_high = np.percentile(x, _ROBUST_PERCENTILES)
    span = float(p_high - p_low) if p_high > p_low else hi - lo

    y = x
    if bias > 0:
        log_field = sum(c * m for c, m in zip(coefficients, monomials, strict=True))
        peak = float(np.abs(log_field).max())
        if peak > 0:  # 0 only on a 1×1×1 grid
            y = y * np.exp(log_field * (amplitude / peak))
    if gamma > 0:
        y_lo, y_hi = float(y.min()), float(y.max())
        if y_hi > y_lo:  # a constant image has no range to bend
            y = y_lo + (y_hi - y_lo) * np.clip((y - y_lo) / (y_hi - y_lo), 0.0, 1.0) ** exponent
    if contrast > 0:
        y_lo = float(y.min())
        y = y_lo + scale * (y - y_lo) + offset * span
    if noise > 0 and span > 0:
        # Rician: the magnitude of a complex signal with Gaussian noise on both parts; clipped
        # first so that a value below the floor is not reflected upwards by the magnitude
        sigma = noise * span
        y = np.clip(y, floor, ceiling) - floor
        y = floor + np.hypot(y + sigma * gaussian[0], sigma * gaussian[1])
    y = np.clip(y, floor, ceiling)
    # where is NaN-free: the original zeros are kept bit for bit
    return np.where(x == 0, image, y).astype(np.float32)


# -------------------------------------------------------------------------------- rotation
def _rotation_displacement(
    angle: float, shape: tuple[int, int, int], spacing_i: float, spacing_j: float
) -> np.ndarray:
    """``R(y) − y`` in voxels, ``(3, I, J, K)`` float64: the in-plane rotation by ``angle`` about
    ``((I−1)/2, (J−1)/2)``, through millimetres."""
    ni, nj, nk = shape
    ci, cj = (ni - 1) / 2.0, (nj - 1) / 2.0
    ii, jj = np.meshgrid(np.arange(ni, dtype=np.float64), np.arange(nj, dtype=np.float64), indexing="ij")
    pi, pj = spacing_i * (ii - ci), spacing_j * (jj - cj)  # mm from the centre
    c, s = math.cos(angle), math.sin(angle)
    di = ci + (c * pi - s * pj) / spacing_i - ii
    dj = cj + (s * pi + c * pj) / spacing_j - jj
    disp = np.zeros((3, ni, nj, nk), dtype=np.float64)
    disp[0], disp[1] = di[:, :, None], dj[:, :, None]
    return disp


def rotate_in_plane(
    moving: np.ndarray,
    fixed: np.ndarray,
    target: np.ndarray,
    moving_labels: np.ndarray,
    fixed_labels: np.ndarray,
    angles_rad: np.ndarray,
    spacing_mm,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rotates each pair and its target SVF in the ``(i, j)`` plane, in millimetres.

    Let ``S = diag(spacing_mm[0], spacing_mm[1])``, ``c = ((I−1)/2, (J−1)/2)`` and ``Q(θ)`` the 2-D
    rotation ``[[cos θ, −sin θ], [sin θ, cos θ]]``. On voxel positions ``y = (i, j, k)``, the
    rotation is

        ``R y = c + L (y − c)`` in plane, ``k`` unchanged, with ``L = S⁻¹ Q(θ) S``

    (a rotation of the millimetre positions; in voxels ``L`` is not orthogonal when the in-plane
    spacings differ). Pair ``n`` is resampled as ``m'(y) = m(R y)``, ``f'(y) = f(R y)`` with
    ``θ = angles_rad[n]``: what was at ``x`` is now at ``R⁻¹ x``, so the content turns by ``−θ``
    (from ``j`` towards ``i`` for ``θ > 0``). With equal spacings and ``θ = π/2`` on a square grid,
    ``m'[i, j] = m[I−1−j, i]`` (``np.rot90(m, k=-1)``).

    The target follows. If ``f(x) ≈ m(φ(x))`` with ``φ = id + exp(v)``, then
    ``f'(y) = f(R y) ≈ m(φ(R y)) = m'(R⁻¹ φ(R y))``: the new map is ``φ' = R⁻¹ ∘ φ ∘ R``. Conjugation by
    an affine map commutes with the flow of a stationary field — if ``∂ₜφₜ = v ∘ φₜ`` then
    ``φ'ₜ = R⁻¹ φₜ R`` obeys ``∂ₜφ'ₜ = L⁻¹ v(φₜ R) = v' ∘ φ'ₜ`` — so ``φ' = exp(v')`` with

        ``v'(y) = L⁻¹ v(R y)``, ``L⁻¹ = S⁻¹ Q(θ)ᵀ S``:

    each vector is read at ``R y`` and its in-plane components ``(v_i, v_j)`` are turned by
    ``−θ`` in millimetres, then brought back to voxels; ``v_k`` is unchanged. The discrete
    exponential (scaling and squaring) commutes with it up to interpolation.

    Images are resampled trilinearly (outside the grid reads 0, blended in over the last half
    voxel as :func:`svfnet.ops.fields.warp` does), labels by one-hot trilinear interpolation and argmax
    (background outside the grid; as the preparation resamples labels), the target trilinearly with
    border clamping (:func:`svfnet.ops.fields.compose`). Pairs with angle 0 are copied, not resampled.

    Args:
        moving, fixed: ``(B, I, J, K)`` images, real, finite.
        target: ``(B, 3, I, J, K)`` SVFs in voxels, on the fixed grid (the same grid).
        moving_labels, fixed_labels: ``(B, I, J, K)`` integer label maps.
        angles_rad: ``(B,)`` finite angles in radians, one per pair.
        spacing_mm: the voxel size ``(i, j, k)`` in mm (three positive numbers; ``k`` is not used).

    Returns:
        ``(moving, fixed, target, moving_labels, fixed_labels)`` rotated: new arrays, images and
        target float32, labels of their input dtype.

    Raises:
        ValueError: an argument of the wrong shape or dtype, not finite, or the wrong length of
            ``angles_rad`` or ``spacing_mm``.
    """
    moving, fixed, target, angles, spacing = _checked_rotation(
        moving, fixed, target, moving_labels, fixed_labels, angles_rad, spacing_mm
    )
    return _rotated(moving, fixed, target, moving_labels, fixed_labels, angles, spacing)


def _checked_rotation(
    moving: np.ndarray,
    fixed: np.ndarray,
    target: np.ndarray,
    moving_labels: np.ndarray,
    fixed_labels: np.ndarray,
    angles_rad: np.ndarray,
    spacing_mm,  # noqa: ANN001
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """:func:`rotate_in_plane`'s arguments checked: the arrays, the angles as float64 and the spacing."""
    func = "rotate_in_plane"
    moving = checked_real_array(func, "moving", moving, 4)
    grid = tuple(int(s) for s in moving.shape[1:])
    batch = int(moving.shape[0])
    fixed = checked_real_array(func, "fixed", fixed, 4)
    target = checked_real_array(func, "target", target, 5)
    labels = {"moving_labels": moving_labels, "fixed_labels": fixed_labels}
    for name, value in labels.items():
        checked_real_array(func, name, value, 4)
        if value.dtype.kind not in "iu":
            raise ValueError(f"{func}(): '{name}' must hold integers, got dtype {value.dtype}")
    for name, value in (("fixed", fixed), *labels.items()):
        if value.shape != moving.shape:
            raise ValueError(
                f"{func}(): '{name}' has shape {value.shape}, expected {moving.shape} like 'moving'"
            )
    if target.shape != (batch, 3, *grid):
        raise ValueError(f"{func}(): 'target' has shape {target.shape}, expected {(batch, 3, *grid)}")
    angles = np.asarray(angles_rad)
    if angles.dtype.kind not in "fiu" or angles.shape != (batch,):
        raise ValueError(
            f"{func}(): 'angles_rad' must be {batch} real numbers (one per pair), got shape {angles.shape}"
        )
    angles = angles.astype(np.float64)
    if not np.all(np.isfinite(angles)):
        raise ValueError(f"{func}(): 'angles_rad' must be finite, got {angles_rad!r}")
    spacing_message = f"{func}(): 'spacing_mm' must be three positive numbers (i, j, k), got {spacing_mm!r}"
    try:
        spacing = [float(s) for s in spacing_mm]
    except (TypeError, ValueError):
        raise ValueError(spacing_message) from None
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(spacing_message)
    return moving, fixed, target, angles, spacing


def _rotated(
    moving: np.ndarray,
    fixed: np.ndarray,
    target: np.ndarray,
    moving_labels: np.ndarray,
    fixed_labels: np.ndarray,
    angles: np.ndarray,
    spacing: list[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rotate_in_plane`'s work on checked arguments."""
    grid = tuple(int(s) for s in moving.shape[1:])
    out_moving = moving.astype(np.float32, copy=True)
    out_fixed = fixed.astype(np.float32, copy=True)
    out_target = target.astype(np.float32, copy=True)
    out_moving_labels, out_fixed_labels = moving_labels.copy(), fixed_labels.copy()
    turned = np.flatnonzero(angles != 0)  # angle 0 keeps the pair exactly: no resampling
    if not turned.size:
        return out_moving, out_fixed, out_target, out_moving_labels, out_fixed_labels

    si, sj = spacing[0], spacing[1]
    disp = np.stack([_rotation_displacement(float(angles[n]), grid, si, sj) for n in turned])
    disp32 = disp.astype(np.float32)
    out_moving[turned] = fields.warp(out_moving[turned][:, None], disp32)[:, 0]
    out_fixed[turned] = fields.warp(out_fixed[turned][:, None], disp32)[:, 0]
    out_moving_labels[turned] = fields.warp_labels(moving_labels[turned], disp32, mode="onehot")
    out_fixed_labels[turned] = fields.warp_labels(fixed_labels[turned], disp32, mode="onehot")
    # v(R y): compose gives d(y) + v(y + d(y)) with v clamped at the border; d is removed in float64
    sampled = fields.compose(out_target[turned], disp32).astype(np.float64) - disp32
    cos, sin = np.cos(angles[turned]), np.sin(angles[turned])
    cos, sin = cos[:, None, None, None], sin[:, None, None, None]
    wi, wj = si * sampled[:, 0], sj * sampled[:, 1]  # mm
    sampled[:, 0] = (cos * wi + sin * wj) / si  # Q(θ)ᵀ, then back to voxels
    sampled[:, 1] = (-sin * wi + cos * wj) / sj
    out_target[turned] = sampled.astype(np.float32)
    return out_moving, out_fixed, out_target, out_moving_labels, out_fixed_labels
