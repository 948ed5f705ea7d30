"""svfnet.evaluation.metrics against hand-computed cases, brute-force float64 references and SimpleITK."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, generate_binary_structure
from scipy.spatial.distance import cdist

from svfnet.evaluation import metrics
from svfnet.ops import fields

SPACING = (1.5, 1.2, 4.0)  # anisotropic, unequal in every axis: catches axis mix-ups


def box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def ball(shape, centre, radius_mm, spacing) -> np.ndarray:
    offsets = np.indices(shape, dtype=np.float64) - np.asarray(centre, dtype=np.float64)[:, None, None, None]
    r2 = sum((offsets[a] * spacing[a]) ** 2 for a in range(3))
    return r2 <= radius_mm**2


def brute_force_hausdorff(a: np.ndarray, b: np.ndarray, spacing, percentile=100.0) -> float:
    """All pairwise distances between surface voxel centres, float64 (independent of the EDT)."""
    structure = generate_binary_structure(3, 1)
    surface = [m & ~binary_erosion(m, structure, border_value=0) for m in (a, b)]
    points = [np.argwhere(s) * np.asarray(spacing, dtype=np.float64) for s in surface]
    distances = cdist(points[0], points[1])
    a_to_b, b_to_a = distances.min(axis=1), distances.min(axis=0)
    return max(np.percentile(a_to_b, percentile), np.percentile(b_to_a, percentile))


# ----------------------------------------------------------------------------- Dice
def test_dice_of_shifted_cubes():
    shape = (20, 18, 12)
    a = box(shape, (2, 2, 2), (12, 12, 8))  # 10 × 10 × 6
    b = box(shape, (5, 2, 2), (15, 12, 8))  # shifted by 3 along i: overlap 7 × 10 × 6
    assert metrics.dice(a, b) == pytest.approx(2 * 7 / 20)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, box(shape, (13, 2, 2), (15, 12, 8))) == 0.0


def test_dice_is_nan_when_a_region_is_absent():
    a = box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    empty = np.zeros_like(a)
    assert math.isnan(metrics.dice(a, empty))
    assert math.isnan(metrics.dice(empty, a))
    assert math.isnan(metrics.hausdorff(empty, a, SPACING))


# ----------------------------------------------------------------------------- Hausdorff
@pytest.mark.parametrize("shift", [(3, 0, 0), (0, 2, 0), (0, 0, 1), (2, 1, 1)])
def test_hausdorff_of_shifted_cubes_is_the_shift_in_mm(shift):
    shape = (24, 22, 14)
    a = box(shape, (4, 4, 3), (14, 13, 9))
    b = box(shape, np.add((4, 4, 3), shift), np.add((14, 13, 9), shift))
    expected = math.sqrt(sum((s * h) ** 2 for s, h in zip(shift, SPACING, strict=True)))
    assert metrics.hausdorff(a, b, SPACING) == pytest.approx(expected)
    assert metrics.hausdorff(b, a, SPACING) == pytest.approx(expected)


def test_hausdorff_of_concentric_spheres_is_the_difference_of_radii():
    spacing = (1.0, 1.0, 2.0)
    shape = (40, 40, 22)
    centre = (19.5, 19.5, 10.5)  # between voxels: the discrete balls are symmetric
    inner, outer = ball(shape, centre, 8.0, spacing), ball(shape, centre, 14.0, spacing)
    distance = metrics.hausdorff(inner, outer, spacing)
    # voxel surfaces are within about one voxel of the true spheres
    assert distance == pytest.approx(6.0, abs=2.0)
    assert distance == pytest.approx(brute_force_hausdorff(inner, outer, spacing), abs=1e-9)


@pytest.mark.parametrize("percentile", [100.0, 95.0, 50.0])
def test_hausdorff_matches_brute_force_on_random_blobs(rng, percentile):
    from scipy.ndimage import gaussian_filter

    shape = (21, 17, 9)
    field = gaussian_filter(rng.standard_normal((2, *shape)), (0, 2.0, 2.0, 1.0))
    a, b = field[0] > 0.05, field[1] > 0.05
    assert a.any() and b.any()
    expected = brute_force_hausdorff(a, b, SPACING, percentile)
    assert metrics.hausdorff(a, b, SPACING, percentile=percentile) == pytest.approx(expected, abs=1e-9)


def test_hausdorff95_ignores_a_small_outlier():
    shape = (40, 40, 10)
    a = box(shape, (5, 5, 2), (30, 30, 8))
    b = a.copy()
    b[37, 37, 5] = True  # one stray voxel far away
    assert metrics.hausdorff(a, b, SPACING) > 8.0
    assert metrics.hausdorff(a, b, SPACING, percentile=95) == 0.0


class TestAgainstSimpleITK:
    """SimpleITK's HausdorffDistanceImageFilter measures between the voxel sets; on these shapes the
    largest set distance is reached between surface voxels, so it equals ours."""

    import SimpleITK as sitk

    def sitk_hausdorff(self, a: np.ndarray, b: np.ndarray, spacing) -> float:
        images = []
        for mask in (a, b):
            image = self.sitk.GetImageFromArray(
                mask.astype(np.uint8).transpose(2, 1, 0)
            )  # SimpleITK is (k, j, i)
            image.SetSpacing(tuple(float(s) for s in spacing))
            images.append(image)
        hausdorff = self.sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(*images)
        return hausdorff.GetHausdorffDistance()

    @pytest.mark.parametrize("shift", [(3, 0, 0), (0, 0, 2), (2, 3, 1)])
    def test_shifted_boxes(self, shift):
        shape = (26, 24, 16)
        a = box(shape, (4, 5, 3), (15, 13, 10))
        b = box(shape, np.add((4, 5, 3), shift), np.add((15, 13, 10), shift))
        assert metrics.hausdorff(a, b, SPACING) == pytest.approx(self.sitk_hausdorff(a, b, SPACING), rel=1e-5)

    def test_nested_boxes(self):
        shape = (30, 30, 16)
        a = box(shape, (5, 5, 3), (25, 22, 13))
        b = box(shape, (9, 8, 5), (18, 17, 10))
        assert metrics.hausdorff(a, b, SPACING) == pytest.approx(self.sitk_hausdorff(a, b, SPACING), rel=1e-5)

    def test_concentric_spheres(self):
        spacing = (1.0, 1.0, 2.0)
        shape = (40, 40, 22)
        centre = (19.5, 19.5, 10.5)
        inner, outer = ball(shape, centre, 8.0, spacing), ball(shape, centre, 14.0, spacing)
        assert metrics.hausdorff(inner, outer, spacing) == pytest.approx(
            self.sitk_hausdorff(inner, outer, spacing), abs=0.5 * min(spacing)
        )


# ----------------------------------------------------------------------------- local correlation
def smooth_image(rng, shape, sigma=(2.0, 2.0, 1.0)):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), sigma).astype(np.float32)


def test_lcc_is_one_for_affine_intensity_changes_and_minus_one_for_a_negative(rng):
    image = smooth_image(rng, (24, 20, 10))
    lcc = metrics.local_correlation(image, 3.0 * image + 7.0, spacing=SPACING, sigma_mm=4.0)
    assert lcc.shape == image.shape and lcc.dtype == np.float32
    # the variance floors (1e-4 of the global variance) keep Λ a little below 1 in quiet patches
    np.testing.assert_allclose(lcc, 1.0, atol=5e-3)
    assert float(np.median(lcc)) > 0.999
    np.testing.assert_allclose(
        metrics.local_correlation(image, -image, spacing=SPACING, sigma_mm=4.0), -1.0, atol=5e-3
    )


def test_lcc_of_independent_images_is_near_zero_and_of_flat_patches_zero(rng):
    a, b = smooth_image(rng, (40, 40, 16), (1, 1, 1)), smooth_image(rng, (40, 40, 16), (1, 1, 1))
    assert abs(float(metrics.local_correlation(a, b, spacing=(1, 1, 1), sigma_mm=3.0).mean())) < 0.05
    flat = np.zeros((12, 12, 6), dtype=np.float32)
    flat[6:, :, :] = 1.0  # two flat halves: no local variance away from the edge
    lcc = metrics.local_correlation(flat, flat, spacing=(1, 1, 1), sigma_mm=1.0)
    assert np.all(np.abs(lcc[:, :, :]) <= 1.0)
    assert abs(float(lcc[0, 0, 0])) < 1e-6


def test_lcc_matches_a_brute_force_window_in_float64(rng):
    shape = (30, 28, 14)
    a, b = smooth_image(rng, shape), smooth_image(rng, shape)
    b = b + 0.7 * a
    sigma_mm = 3.0
    lcc = metrics.local_correlation(a, b, spacing=SPACING, sigma_mm=sigma_mm)
    sigma_vox = [sigma_mm / s for s in SPACING]
    # scipy's separable kernel: exp(-x²/2σ²) on |x| ≤ round(truncate σ), normalised per axis
    radii = [int(metrics.GAUSSIAN_TRUNCATE * s + 0.5) for s in sigma_vox]
    kernels = [np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2) for r, s in zip(radii, sigma_vox, strict=True)]
    kernels = [k / k.sum() for k in kernels]
    weights = np.einsum("i,j,k->ijk", *kernels)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    floors = [metrics.LCC_VARIANCE_FLOOR * float(np.var(x)) for x in (a64, b64)]
    for centre in [(15, 14, 7), (12, 10, 6), (18, 17, 8)]:
        window = tuple(slice(c - r, c + r + 1) for c, r in zip(centre, radii, strict=True))
        pa, pb = a64[window], b64[window]
        mean_a, mean_b = (weights * pa).sum(), (weights * pb).sum()
        var_a = (weights * pa * pa).sum() - mean_a**2 + floors[0]
        var_b = (weights * pb * pb).sum() - mean_b**2 + floors[1]
        cov = (weights * pa * pb).sum() - mean_a * mean_b
        assert lcc[centre] == pytest.approx(cov / math.sqrt(var_a * var_b), abs=2e-4)


# ----------------------------------------------------------------------------- Jacobian
def affine_field(shape, matrix, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    """u(x) = (A − I) x + t in voxels."""
    positions = np.indices(shape, dtype=np.float64)
    disp = np.einsum("ab,b...->a...", np.asarray(matrix) - np.eye(3), positions)
    return (disp + np.asarray(translation)[:, None, None, None]).astype(np.float32)


def test_affine_field_jacobian_is_its_determinant_everywhere():
    matrix = np.array([[1.1, 0.2, 0.0], [-0.1, 0.9, 0.05], [0.0, 0.1, 1.2]])
    det = np.asarray(fields.jacobian_det(affine_field((9, 8, 7), matrix, (1.0, -2.0, 0.5)), SPACING))
    np.testing.assert_allclose(det, np.linalg.det(matrix), rtol=1e-5)
    variance, normalised = metrics.log_jacobian_spread(det)
    assert variance == pytest.approx(0.0, abs=1e-10)  # a uniform volume change has no spread
    assert normalised == pytest.approx(0.0, abs=1e-8)
    assert metrics.folding_fraction(det) == 0.0


def test_log_jacobian_spread_of_a_known_nonuniform_stretch():
    # u_i = a i² stretches along i by det J = 1 + 2 a i (central differences are exact for quadratics)
    shape, a = (12, 5, 4), 0.02
    disp = np.zeros((3, *shape), dtype=np.float32)
    disp[0] = a * np.arange(shape[0], dtype=np.float32)[:, None, None] ** 2
    det = np.asarray(fields.jacobian_det(disp))
    mask = np.zeros(shape, dtype=bool)
    mask[2:10] = True  # away from the one-sided borders
    log_det = np.log(1.0 + 2.0 * a * np.arange(2, 10))
    variance, normalised = metrics.log_jacobian_spread(det, mask)
    assert variance == pytest.approx(np.var(log_det), rel=1e-4)
    assert normalised == pytest.approx(np.var(log_det) / np.mean(log_det**2), rel=1e-4)


def test_folding_fraction_counts_the_voxels_where_det_is_not_positive():
    det = np.ones((4, 5, 6))
    det[0] = -0.5
    det[1, 0, 0] = 0.0
    mask = np.zeros(det.shape, dtype=bool)
    mask[:2] = True
    assert metrics.folding_fraction(det) == pytest.approx((30 + 1) / 120)
    assert metrics.folding_fraction(det, mask) == pytest.approx(31 / 60)
    variance, _ = metrics.log_jacobian_spread(det, mask)  # folded voxels are left out of the logarithm
    assert variance == pytest.approx(0.0)
    assert math.isnan(metrics.folding_fraction(det, np.zeros(det.shape, dtype=bool)))
    assert all(math.isnan(x) for x in metrics.log_jacobian_spread(np.full(det.shape, -1.0)))  # no logarithm
    flipped = affine_field((6, 6, 6), np.diag([-1.0, 1.0, 1.0]))  # a mirror folds everywhere
    assert metrics.folding_fraction(np.asarray(fields.jacobian_det(flipped))) == 1.0


# ----------------------------------------------------------------------------- one pair
def heart_labels(shape=(32, 30, 8)) -> np.ndarray:
    i, j, k = np.indices(shape)
    r = np.hypot(i - 14.0, j - 15.0)
    labels = np.zeros(shape, dtype=np.uint8)
    inside = (k >= 1) & (k <= shape[2] - 2)
    labels[(r <= 7) & inside] = 2
    labels[(r <= 4.5) & inside] = 1
    rv = np.hypot(i - 22.0, j - 15.0)
    labels[(rv <= 5) & (labels == 0) & inside] = 3
    labels[(rv > 5) & (rv <= 6.2) & (labels == 0) & inside] = 4
    return labels


def image_of(labels: np.ndarray, rng) -> np.ndarray:
    return (np.array([0.2, 1.0, 0.3, 0.9, 0.35])[labels] + 0.02 * rng.standard_normal(labels.shape)).astype(
        np.float32
    )


def test_evaluate_pair_of_a_translation_recovered_exactly(rng):
    fixed_labels = heart_labels()
    fixed = image_of(fixed_labels, rng)
    # the moving image is the fixed one moved by 2 voxels along j; disp = −2 brings it back
    moving_labels = np.roll(fixed_labels, 2, axis=1)
    moving = np.roll(fixed, 2, axis=1)
    disp = np.zeros((3, *fixed.shape), dtype=np.float32)
    disp[1] = 2.0
    rows = metrics.evaluate_pair(moving, fixed, moving_labels, fixed_labels, spacing=SPACING, disp=disp)
    assert [row["region"] for row in rows] == [1, 2, 3, 4, 0]
    for row in rows[:4]:
        assert row["status"] == "ok"
        assert row["dice"] == 1.0 and row["hausdorff_mm"] == 0.0 and row["hausdorff95_mm"] == 0.0
        assert row["lcc"] > 0.99 and row["folding_fraction"] == 0.0
        assert row["log_jacobian_var"] == 0.0 and math.isnan(row["log_jacobian_normvar"])  # no volume change
        assert set(metrics.METRIC_KEYS) <= set(row)
    # without registration, the myocardium is off by 2 voxels of 1.2 mm
    identity = metrics.evaluate_pair(
        moving, fixed, moving_labels, fixed_labels, spacing=SPACING, svf=np.zeros_like(disp)
    )
    assert identity[1]["dice"] < 0.8 and identity[1]["hausdorff_mm"] == pytest.approx(2 * 1.2)


def test_evaluate_pair_reports_missing_and_lost_regions(rng):
    fixed_labels = heart_labels()
    moving_labels = fixed_labels.copy()
    moving_labels[moving_labels == 4] = 0  # a dataset without RV myocardium
    fixed = image_of(fixed_labels, rng)
    moving = image_of(moving_labels, rng)
    zero = np.zeros((3, *fixed.shape), dtype=np.float32)
    rows = {
        row["region"]: row
        for row in metrics.evaluate_pair(
            moving, fixed, moving_labels, fixed_labels, spacing=SPACING, disp=zero
        )
    }
    assert rows[4]["status"] == "missing in moving" and math.isnan(rows[4]["dice"])
    assert math.isnan(rows[4]["hausdorff_mm"]) and not math.isnan(rows[4]["lcc"])  # the fixed region is there
    assert rows[1]["status"] == "ok" and rows[1]["dice"] == 1.0

    away = zero.copy()
    away[0] = 100.0  # every voxel reads outside the grid: background everywhere
    rows = {
        row["region"]: row
        for row in metrics.evaluate_pair(
            moving, fixed, moving_labels, fixed_labels, spacing=SPACING, disp=away
        )
    }
    assert rows[1]["status"] == "lost" and rows[1]["dice"] == 0.0 and math.isnan(rows[1]["hausdorff_mm"])


def test_evaluate_pair_accepts_torch_and_svf(rng):
    labels = heart_labels()
    image = image_of(labels, rng)
    svf = torch.zeros((3, *image.shape))
    rows = metrics.evaluate_pair(
        torch.from_numpy(image),
        image,
        torch.from_numpy(labels.astype(np.int64)),
        labels,
        spacing=SPACING,
        svf=svf,
        label_interpolation="onehot",
    )
    assert rows[1]["dice"] == 1.0 and rows[-1]["name"] == "whole grid"


def test_bad_inputs_name_the_argument(rng):
    labels = heart_labels()
    image = image_of(labels, rng)
    zero = np.zeros((3, *image.shape), dtype=np.float32)
    with pytest.raises(ValueError, match="'moving_image'.*same grid"):
        metrics.evaluate_pair(image[:-1], image, labels, labels, spacing=SPACING, disp=zero)
    with pytest.raises(ValueError, match="'fixed_labels'"):
        metrics.evaluate_pair(image, image, labels, labels[:, :, :-1], spacing=SPACING, disp=zero)
    with pytest.raises(ValueError, match="'svf'"):
        metrics.evaluate_pair(image, image, labels, labels, spacing=SPACING, svf=zero[:, :-1])
    with pytest.raises(ValueError, match="exactly one"):
        metrics.evaluate_pair(image, image, labels, labels, spacing=SPACING, svf=zero, disp=zero)
    with pytest.raises(ValueError, match="'spacing'"):
        metrics.evaluate_pair(image, image, labels, labels, spacing=(1.0, 0.0, 1.0), disp=zero)
    with pytest.raises(ValueError, match="'moving_labels'.*integer"):
        metrics.evaluate_pair(image, image, labels.astype(np.float32), labels, spacing=SPACING, disp=zero)
    with pytest.raises(ValueError, match="'mask_b'.*same grid"):
        metrics.dice(labels > 0, (labels > 0)[1:])
    with pytest.raises(ValueError, match="'mask_a'.*boolean"):
        metrics.hausdorff(labels, labels > 0, SPACING)
    with pytest.raises(ValueError, match="'image_b'.*NaN"):
        metrics.local_correlation(image, np.full_like(image, np.nan))
    with pytest.raises(ValueError, match="'sigma_mm'"):
        metrics.local_correlation(image, image, sigma_mm=-1.0)
