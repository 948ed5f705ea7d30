"""svfnet.training.augment: intensity augmentation and in-plane rotation of pairs with their target SVF.

References are independent of the module: SciPy resampling in float64 with the rotation written
out here, np.rot90 for quarter turns, and the registration identity f ≈ warp(m, exp(v)) itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates

from svfnet.ops import fields
from svfnet.training.augment import augment_intensity, rotate_in_plane

ZERO = {"bias": 0.0, "gamma": 0.0, "noise": 0.0, "contrast": 0.0}


def smooth_image(rng: np.random.Generator, grid, sigma=(2.0, 2.0, 1.0), low=0.0, high=1.0) -> np.ndarray:
    """A smooth random image on ``grid`` spanning exactly [low, high], float32."""
    image = gaussian_filter(rng.standard_normal(grid), sigma=sigma, mode="wrap")
    image = (image - image.min()) / (image.max() - image.min())
    return (low + (high - low) * image).astype(np.float32)


def smooth_svf(
    rng: np.random.Generator, grid, rms_vox: float, sigma_vox: float, slice_scale: float
) -> np.ndarray:
    """A smooth random SVF (3, *grid): in-plane RMS ``rms_vox``, the slice component scaled down."""
    v = gaussian_filter(rng.standard_normal((3, *grid)), sigma=(0, sigma_vox, sigma_vox, 1.0), mode="wrap")
    v *= rms_vox / np.sqrt(np.mean(v[:2] ** 2))
    v[2] *= slice_scale
    return v.astype(np.float32)


# ============================================================================ intensity
def test_zero_parameters_return_the_input():
    rng = np.random.default_rng(0)
    images = rng.random((3, 9, 8, 5)).astype(np.float32)
    images[0, :2] = 0.0
    images[1, 3] = 1.0
    out = augment_intensity(images, rng, **ZERO)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.array_equal(out, images)
    assert out is not images
    # one image, and an integer-valued float64 image outside [0, 1]
    assert np.array_equal(augment_intensity(images[2], rng, **ZERO), images[2])
    wide = rng.integers(-50, 300, size=(2, 9, 8, 5)).astype(np.float64)
    assert np.array_equal(augment_intensity(wide, rng, **ZERO), wide.astype(np.float32))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"bias": 2.0, "gamma": 2.0, "noise": 0.5, "contrast": 0.9},
        {"bias": 0.3, "gamma": 0.0, "noise": 0.0, "contrast": 0.0},
    ],
    ids=["defaults", "strong", "bias-only"],
)
def test_outputs_are_finite_float32_in_the_prepared_range(params):
    rng = np.random.default_rng(1)
    grid = (9, 8, 5)
    images = np.stack(
        [
            rng.random(grid),
            np.full(grid, 0.4),  # constant: min == max
            np.zeros(grid),  # all background
            np.ones(grid),
            np.clip(smooth_image(rng, grid, low=-0.2, high=1.2), 0, 1),  # clipped like a prepared image
        ]
    ).astype(np.float32)
    for _ in range(5):
        out = augment_intensity(images, rng, **params)
        assert out.dtype == np.float32 and out.shape == images.shape
        assert np.all(np.isfinite(out))
        assert out.min() >= 0.0 and out.max() <= 1.0  # prepared images are in [0, 1]
        assert np.all(out[2] == 0.0)  # zeros (outside the field of view) stay 0
        zeros = images[4] == 0
        assert zeros.any() and np.all(out[4][zeros] == 0.0)


def test_images_outside_the_prepared_range_stay_finite_and_within_their_range():
    rng = np.random.default_rng(2)
    images = np.stack([smooth_image(rng, (9, 8, 5), low=-3.0, high=5.0), np.full((9, 8, 5), -2.0)])
    out = augment_intensity(images, rng, bias=1.0, gamma=1.0, noise=0.2, contrast=0.5)
    assert np.all(np.isfinite(out))
    assert out[0].min() >= -3.0 and out[0].max() <= 5.0
    assert out[1].min() >= -2.0 and out[1].max() <= 1.0


def test_draws_differ_between_images_and_a_seed_reproduces():
    rng = np.random.default_rng(3)
    image = smooth_image(rng, (9, 8, 5), low=0.1, high=0.9)
    pair = np.stack([image, image])
    moving = augment_intensity(pair, np.random.default_rng(7))
    fixed = augment_intensity(pair, np.random.default_rng(7))
    assert np.array_equal(moving, fixed)  # a seed reproduces
    # two images of one batch, and two calls on one generator (moving then fixed), get other draws
    assert np.abs(moving[0] - moving[1]).max() > 1e-3
    generator = np.random.default_rng(7)
    first, second = augment_intensity(pair, generator), augment_intensity(pair, generator)
    assert np.array_equal(first, moving)
    assert np.abs(first - second).max() > 1e-3
    # the same bias field is drawn whether or not the other steps run: with contrast on too, the
    # result is an affine function of the bias-only one (kept below 1, so nothing is clipped)
    low = smooth_image(rng, (9, 8, 5), low=0.1, high=0.5)
    pair = np.stack([low, low])
    biased = augment_intensity(pair, np.random.default_rng(7), bias=0.3, gamma=0.0, noise=0.0, contrast=0.0)
    again = augment_intensity(pair, np.random.default_rng(7), bias=0.3, gamma=0.0, noise=0.0, contrast=0.2)
    for n in range(2):
        fit = np.polyfit(biased[n].ravel(), again[n].ravel(), 1)
        assert np.abs(np.polyval(fit, biased[n]) - again[n]).max() < 1e-5
        assert np.abs(biased[n] - low).max() > 1e-3


def test_bias_field_is_a_smooth_bounded_log_field():
    """On a constant image, out / c is the bias field exp(b): |b| <= bias, b quadratic (smooth)."""
    rng = np.random.default_rng(4)
    grid, c, bias = (17, 16, 5), 0.5, 0.3
    image = np.full((40, *grid), c, dtype=np.float32)
    out = augment_intensity(image, rng, bias=bias, gamma=0.0, noise=0.0, contrast=0.0)
    log_field = np.log(out.astype(np.float64) / c)
    peaks = np.abs(log_field).reshape(40, -1).max(axis=1)
    assert peaks.max() <= bias + 1e-6
    assert peaks.max() > 0.8 * bias and peaks.min() < 0.3 * bias  # amplitudes spread over U(0, bias)
    for axis, n in zip((1, 2, 3), grid, strict=True):
        # a quadratic with max|b| <= A on [-1, 1] has |b''| <= 4A (Markov): second differences
        # over steps of 2/(n-1) are at most 16A/(n-1)^2; third differences vanish
        second = np.abs(np.diff(log_field, n=2, axis=axis)).reshape(len(peaks), -1).max(axis=1)
        assert np.all(second <= 16 * peaks / (n - 1) ** 2 + 1e-6)
        assert np.abs(np.diff(log_field, n=3, axis=axis)).max() < 1e-5
        # the field varies along every axis, slices included
        assert np.abs(np.diff(log_field, axis=axis)).max() > 0.01
    # nearly zero mean: a bias field, not a global brightness change (that is the contrast step)
    assert np.abs(log_field.mean(axis=(1, 2, 3))).max() < bias


def test_gamma_is_a_power_law_between_the_images_min_and_max():
    rng = np.random.default_rng(5)
    image = smooth_image(rng, (9, 8, 5), low=0.2, high=0.9)
    draws = 400
    out = augment_intensity(np.stack([image] * draws), rng, bias=0.0, gamma=0.3, noise=0.0, contrast=0.0)
    t = (image.astype(np.float64) - 0.2) / 0.7
    inner = (t > 0.05) & (t < 0.95)
    exponents = []
    for o in out:
        assert abs(o.min() - 0.2) < 1e-6 and abs(o.max() - 0.9) < 1e-6  # min and max stay
        t_out = (o.astype(np.float64) - 0.2) / 0.7
        g = np.log(t_out[inner]) / np.log(t[inner])
        assert g.max() - g.min() < 1e-3 * g.mean()  # one exponent for the whole image
        exponents.append(np.median(g))
    log_g = np.log(exponents)
    assert abs(np.std(log_g) - 0.3) < 0.05 and abs(np.mean(log_g)) < 0.05  # exp(N(0, 0.3))


def test_contrast_scale_and_offset_stay_within_their_bounds():
    rng = np.random.default_rng(6)
    image = smooth_image(rng, (9, 8, 5), low=0.3, high=0.7)
    span = np.subtract(*np.percentile(image.astype(np.float64), (99.5, 0.5)))
    draws = 300
    out = augment_intensity(np.stack([image] * draws), rng, bias=0.0, gamma=0.0, noise=0.0, contrast=0.2)
    x = image.astype(np.float64).ravel()
    scales, offsets = [], []
    for o in out:
        slope, intercept = np.polyfit(x, o.astype(np.float64).ravel(), 1)
        assert np.abs(slope * x + intercept - o.ravel()).max() < 1e-6  # affine
        scales.append(slope)
        offsets.append((intercept - 0.3 * (1 - slope)) / span)  # o = lo + s (x - lo) + offset * span
    scales, offsets = np.array(scales), np.array(offsets)
    assert scales.min() >= 0.8 - 1e-6 and scales.max() <= 1.2 + 1e-6
    assert scales.min() < 0.83 and scales.max() > 1.17  # the whole range is used
    assert np.abs(offsets).max() <= 0.1 + 1e-5 and np.abs(offsets).max() > 0.09


def test_noise_level_is_a_fraction_of_the_robust_range():
    rng = np.random.default_rng(8)
    grid = (33, 32, 9)
    image = smooth_image(rng, grid, low=0.4, high=0.8)
    span = np.subtract(*np.percentile(image.astype(np.float64), (99.5, 0.5)))
    out = augment_intensity(np.stack([image] * 3), rng, bias=0.0, gamma=0.0, noise=0.03, contrast=0.0)
    residual = out.astype(np.float64) - image
    for r in residual:
        # at this signal-to-noise ratio (>= 30) Rician noise is Gaussian to within 0.1 %
        assert abs(r.std() / (0.03 * span) - 1) < 0.05
        assert abs(r.mean()) < 0.1 * 0.03 * span
    assert np.abs(residual[0] - residual[1]).max() > 0.01  # independent draws


def test_intensity_argument_errors():
    rng = np.random.default_rng(9)
    images = rng.random((2, 9, 8, 5)).astype(np.float32)
    for name in ("bias", "gamma", "noise", "contrast"):
        with pytest.raises(ValueError, match=name):
            augment_intensity(images, rng, **{name: -0.1})
        with pytest.raises(ValueError, match=name):
            augment_intensity(images, rng, **{name: float("nan")})
    with pytest.raises(ValueError, match="images"):
        augment_intensity(images[0, 0], rng)
    bad = images.copy()
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(ValueError, match="images"):
        augment_intensity(bad, rng)
    with pytest.raises(TypeError, match="rng"):
        augment_intensity(images, 3)


# ============================================================================ rotation
def rotation_positions(grid, angle: float, spacing) -> np.ndarray:
    """R y for every voxel y, float64 (3, *grid): positions turned by ``angle`` about the in-plane
    centre in millimetres, written out independently of the module."""
    y = np.indices(grid, dtype=np.float64)
    centre = np.array([(grid[0] - 1) / 2, (grid[1] - 1) / 2])
    mm = [(y[a] - centre[a]) * spacing[a] for a in (0, 1)]
    c, s = math.cos(angle), math.sin(angle)
    return np.stack(
        [
            centre[0] + (c * mm[0] - s * mm[1]) / spacing[0],
            centre[1] + (s * mm[0] + c * mm[1]) / spacing[1],
            y[2],
        ]
    )


def turn_vectors(field: np.ndarray, angle: float, spacing) -> np.ndarray:
    """L⁻¹ applied to each vector of (3, *grid): in-plane part turned by −angle in mm."""
    c, s = math.cos(angle), math.sin(angle)
    wi, wj = field[0] * spacing[0], field[1] * spacing[1]
    return np.stack([(c * wi + s * wj) / spacing[0], (-s * wi + c * wj) / spacing[1], field[2]])


def empty_labels(batch: int, grid) -> np.ndarray:
    return np.zeros((batch, *grid), dtype=np.uint8)


def interior_disc(grid, spacing, radius_mm: float) -> np.ndarray:
    ii, jj = np.meshgrid(
        (np.arange(grid[0]) - (grid[0] - 1) / 2) * spacing[0],
        (np.arange(grid[1]) - (grid[1] - 1) / 2) * spacing[1],
        indexing="ij",
    )
    return np.broadcast_to((ii**2 + jj**2 <= radius_mm**2)[:, :, None], grid)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 8.0), (1.2, 1.6, 8.0)], ids=["equal", "unequal"])
def test_rotated_pair_is_registered_by_the_rotated_target(spacing):
    """f = warp(m, exp(v)) ⇒ f' ≈ warp(m', exp(v')) for the rotated pair and target."""
    rng = np.random.default_rng(10)
    grid, angle = (32, 32, 6), 0.3
    v = np.stack([smooth_svf(rng, grid, 2.0, 4.0, spacing[0] / spacing[2]) for _ in range(2)])
    m = np.stack([smooth_image(rng, grid, sigma=(3.0, 3.0, 1.0)) for _ in range(2)])
    f = fields.warp(m[:, None], fields.exp(v))[:, 0]
    labels = empty_labels(2, grid)
    m_r, f_r, v_r, _, _ = rotate_in_plane(m, f, v, labels, labels, np.array([angle, -angle]), spacing)

    # against independent float64 references: images read 0 outside, the SVF clamps, vectors turn
    for n, a in enumerate((angle, -angle)):
        where = rotation_positions(grid, a, spacing)
        expected_m = map_coordinates(m[n].astype(np.float64), where, order=1, mode="grid-constant", cval=0.0)
        assert np.abs(m_r[n] - expected_m).max() < 1e-5
        resampled = np.stack(
            [map_coordinates(c.astype(np.float64), where, order=1, mode="nearest") for c in v[n]]
        )
        assert np.abs(v_r[n] - turn_vectors(resampled, a, spacing)).max() < 1e-4
        # the vector turn matters: a mere resampling of v differs from v' by about sin(0.3) |v|
        assert np.abs(v_r[n] - resampled)[:2].max() > 0.2 * np.abs(v[n][:2]).max()

        # in the central disc (mm; |exp v| <= ~6 voxels keeps its trajectories inside the grid)
        disc = interior_disc(grid, spacing, 10.0)

        def error(svf: np.ndarray, n: int = n, disc: np.ndarray = disc) -> np.ndarray:
            return np.abs(fields.warp(m_r[n], fields.exp(svf.astype(np.float32))) - f_r[n])[disc]

        rotated, unrotated, unturned = error(v_r[n]), error(v[n]), error(resampled)
        # images span [0, 1]; what is left is interpolation (twice, along different paths)
        assert rotated.max() < 0.06 and rotated.mean() < 0.003
        assert rotated.mean() < 0.1 * unrotated.mean()
        assert rotated.mean() < 0.2 * unturned.mean()


@pytest.mark.parametrize("grid", [(12, 12, 4), (11, 11, 5)])
def test_quarter_turns_are_rot90_with_the_vector_components_permuted(grid):
    """θ = π/2, equal spacing: R(i, j) = c + Q (y − c) = (N−1−j, i), so m'[i, j] = m[N−1−j, i],
    i.e. np.rot90(m, k=-1); v' = Qᵀ v(R y) with Qᵀ = [[0, 1], [−1, 0]]: v'_i = v_j, v'_j = −v_i.
    θ = −π/2: m'[i, j] = m[j, N−1−i] = np.rot90(m, k=1); v'_i = −v_j, v'_j = v_i."""
    rng = np.random.default_rng(11)
    spacing = (1.3, 1.3, 7.0)
    m = rng.random((2, *grid)).astype(np.float32)
    f = rng.random((2, *grid)).astype(np.float32)
    v = rng.standard_normal((2, 3, *grid)).astype(np.float32)
    lm = rng.integers(0, 5, size=(2, *grid)).astype(np.uint8)
    lf = rng.integers(0, 5, size=(2, *grid)).astype(np.uint8)
    out = rotate_in_plane(m, f, v, lm, lf, np.array([math.pi / 2, -math.pi / 2]), spacing)
    m_r, f_r, v_r, lm_r, lf_r = out

    def rot(a: np.ndarray, k: int) -> np.ndarray:
        return np.rot90(a, k=k, axes=(-3, -2))

    for n, k, sign in ((0, -1, 1.0), (1, 1, -1.0)):
        assert np.abs(m_r[n] - rot(m[n], k)).max() < 1e-5
        assert np.abs(f_r[n] - rot(f[n], k)).max() < 1e-5
        assert np.array_equal(lm_r[n], rot(lm[n], k)) and np.array_equal(lf_r[n], rot(lf[n], k))
        expected = np.stack([sign * rot(v[n, 1], k), -sign * rot(v[n, 0], k), rot(v[n, 2], k)])
        assert np.abs(v_r[n] - expected).max() < 1e-4


def test_angle_zero_returns_the_inputs_and_pairs_rotate_independently():
    rng = np.random.default_rng(12)
    grid, spacing = (9, 8, 5), (1.2, 1.6, 8.0)
    m = rng.random((3, *grid)).astype(np.float32)
    f = rng.random((3, *grid)).astype(np.float32)
    v = rng.standard_normal((3, 3, *grid)).astype(np.float32)
    lm = rng.integers(0, 5, size=(3, *grid)).astype(np.uint8)
    lf = rng.integers(0, 5, size=(3, *grid)).astype(np.uint8)
    inputs = (m, f, v, lm, lf)
    same = rotate_in_plane(*inputs, np.zeros(3), spacing)
    for a, b in zip(same, inputs, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b) and a is not b
    angles = np.array([0.4, 0.0, -1.1])
    mixed = rotate_in_plane(*inputs, angles, spacing)
    for a, b in zip(mixed, inputs, strict=True):
        assert np.array_equal(a[1], b[1])  # the pair with angle 0 is copied
        assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[2], b[2])
    for n in (0, 2):  # each pair is rotated by its own angle, as if alone
        alone = rotate_in_plane(*(x[n : n + 1] for x in inputs), angles[n : n + 1], spacing)
        for a, b in zip(mixed, alone, strict=True):
            assert np.array_equal(a[n], b[0])


def test_labels_stay_integers_from_the_input_set():
    rng = np.random.default_rng(13)
    grid, spacing, angle = (9, 8, 5), (1.2, 1.6, 8.0), 0.7
    values = np.array([0, 1, 2, 4], dtype=np.uint8)
    labels = values[rng.integers(0, 4, size=(2, *grid))]
    images = rng.random((2, *grid)).astype(np.float32)
    v = np.zeros((2, 3, *grid), dtype=np.float32)
    other = labels[::-1].copy()
    _, _, _, lm_r, lf_r = rotate_in_plane(images, images, v, labels, other, np.full(2, angle), spacing)
    for rotated in (lm_r, lf_r):
        assert rotated.dtype == np.uint8
        assert set(np.unique(rotated)) <= {0, 1, 2, 4}
    assert not np.array_equal(lm_r, labels)
    # one-hot trilinear and argmax (ties to the smaller label), background outside the grid
    where = rotation_positions(grid, angle, spacing)
    for n in range(2):
        scores = np.stack(
            [
                map_coordinates(
                    (labels[n] == value).astype(np.float64),
                    where,
                    order=1,
                    mode="grid-constant",
                    cval=1.0 if value == 0 else 0.0,  # background outside
                )
                for value in values
            ]
        )
        expected = values[np.argmax(scores, axis=0)]
        assert np.mean(lm_r[n] == expected) > 0.98  # float32 against float64 may break near-ties


def test_rotation_turns_content_in_millimetres():
    """A blob at mm offset p from the centre ends up at Q(θ)ᵀ p, also with unequal spacing."""
    grid, spacing, angle = (41, 37, 3), (1.0, 1.5, 5.0), 0.5
    centre = np.array([(grid[0] - 1) / 2, (grid[1] - 1) / 2])
    p = np.array([6.0, -4.0])  # mm
    y = np.indices(grid, dtype=np.float64)
    mm = [(y[a] - centre[a]) * spacing[a] for a in (0, 1)]
    blob = np.exp(-((mm[0] - p[0]) ** 2 + (mm[1] - p[1]) ** 2) / (2 * 3.0**2))[None].astype(np.float32)
    v = np.zeros((1, 3, *grid), dtype=np.float32)
    labels = empty_labels(1, grid)
    rotated = rotate_in_plane(blob, blob, v, labels, labels, np.array([angle]), spacing)[0][0]
    rotated = rotated.astype(np.float64)
    centroid = np.array([np.sum(rotated * mm[a]) / rotated.sum() for a in (0, 1)])
    c, s = math.cos(angle), math.sin(angle)
    assert np.abs(centroid - np.array([c * p[0] + s * p[1], -s * p[0] + c * p[1]])).max() < 0.05


def test_rotation_argument_errors():
    rng = np.random.default_rng(14)
    grid, spacing = (9, 8, 5), (1.2, 1.6, 8.0)
    m = rng.random((2, *grid)).astype(np.float32)
    v = np.zeros((2, 3, *grid), dtype=np.float32)
    lab = empty_labels(2, grid)
    angles = np.array([0.1, 0.2])
    with pytest.raises(ValueError, match="'fixed'"):
        rotate_in_plane(m, m[:1], v, lab, lab, angles, spacing)
    with pytest.raises(ValueError, match="'target'"):
        rotate_in_plane(m, m, v[:, :2], lab, lab, angles, spacing)
    with pytest.raises(ValueError, match="'fixed_labels'"):
        rotate_in_plane(m, m, v, lab, lab[:, :-1], angles, spacing)
    with pytest.raises(ValueError, match="'moving_labels'"):
        rotate_in_plane(m, m, v, lab.astype(np.float32), lab, angles, spacing)
    with pytest.raises(ValueError, match="'angles_rad'"):
        rotate_in_plane(m, m, v, lab, lab, angles[:1], spacing)
    with pytest.raises(ValueError, match="'angles_rad'"):
        rotate_in_plane(m, m, v, lab, lab, np.array([0.1, np.nan]), spacing)
    with pytest.raises(ValueError, match="'spacing_mm'"):
        rotate_in_plane(m, m, v, lab, lab, angles, (1.2, 1.6))
    with pytest.raises(ValueError, match="'spacing_mm'"):
        rotate_in_plane(m, m, v, lab, lab, angles, (1.2, 0.0, 8.0))
    bad = m.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="'moving'"):
        rotate_in_plane(bad, m, v, lab, lab, angles, spacing)
