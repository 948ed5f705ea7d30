"""svfnet.ops.smoothing: the compiled Gaussian smoothing against scipy.ndimage.gaussian_filter, and the
local moments against a float64 NumPy/SciPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from svfnet import _core
from svfnet.evaluation import metrics
from svfnet.ops import smoothing
from tests.conftest import requires_cuda

TRUNCATE = smoothing.GAUSSIAN_TRUNCATE


def scipy_smooth(x: np.ndarray, sigma, truncate: float = TRUNCATE) -> np.ndarray:
    """SciPy on the last three axes, in float32 as our kernels (SciPy's float32 passes)."""
    sigma = (0.0,) * (x.ndim - 3) + tuple(sigma)
    return gaussian_filter(np.asarray(x, np.float32), sigma, mode="nearest", truncate=truncate)


def assert_matches_scipy(got, x, sigma, truncate=TRUNCATE) -> None:
    want = scipy_smooth(x, sigma, truncate)
    assert got.dtype == np.float32 and got.shape == want.shape
    # float32 accumulation: a few units in the last place of the data's range (SciPy sums in float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(x).max()))


def test_taps_are_scipys_kernel_halved_and_folded_at_the_axis_ends():
    sigma = 2.3
    radius = int(TRUNCATE * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    np.testing.assert_allclose(_core.smooth_taps(sigma, TRUNCATE, 100), kernel[radius:], rtol=1e-15)
    # an axis of 4 voxels: offsets beyond 3 all read the end voxel, so their weights join tap 3
    folded = _core.smooth_taps(sigma, TRUNCATE, 4)
    np.testing.assert_allclose(folded[:3], kernel[radius : radius + 3], rtol=1e-15)
    assert folded[3] == pytest.approx(kernel[radius + 3 :].sum(), rel=1e-14)
    # no pass: sigma 0, a radius of 0, or a single voxel
    for args in [(0.0, TRUNCATE, 9), (0.1, TRUNCATE, 9), (5.0, TRUNCATE, 1)]:
        assert _core.smooth_taps(*args).tolist() == [1.0]


@pytest.mark.parametrize(
    "shape, sigma",
    [
        ((7, 11, 5), (1.3, 0.8, 2.1)),  # odd grid, anisotropic
        ((7, 11, 5), (2.0, 0.0, 1.0)),  # sigma 0 on an axis
        ((3, 2, 4), (5.0, 7.5, 9.0)),  # kernels much wider than every axis: replicated borders
        ((9, 1, 6), (1.5, 3.0, 0.7)),  # a 1-voxel axis
        ((1, 1, 1), (2.0, 2.0, 2.0)),
        ((6, 5, 1), (0.1, 1.0, 4.0)),  # a sigma whose radius is 0, a flat slice axis
        ((64, 64, 16), (2.59, 2.59, 0.73)),  # LCC Log-Demons' window on the evaluation grid
    ],
)
def test_smooth_matches_scipy_gaussian_filter(rng, shape, sigma):
    x = rng.standard_normal(shape).astype(np.float32)
    assert_matches_scipy(smoothing.smooth(x, sigma), x, sigma)


def test_smooth_with_another_truncation_matches_scipy(rng):
    x = rng.standard_normal((10, 9, 8)).astype(np.float32)
    assert_matches_scipy(smoothing.smooth(x, (1.7, 1.1, 2.4), truncate=1.5), x, (1.7, 1.1, 2.4), truncate=1.5)


def test_smooth_of_a_constant_is_the_constant_and_mass_is_kept_inside(rng):
    x = np.full((8, 5, 3), 2.5, np.float32)
    np.testing.assert_allclose(smoothing.smooth(x, (3.0, 3.0, 3.0)), 2.5, rtol=1e-6)
    spike = np.zeros((21, 21, 21), np.float32)
    spike[10, 10, 10] = 1.0
    assert float(smoothing.smooth(spike, 1.5).sum()) == pytest.approx(1.0, rel=1e-5)


def test_smooth_stacks_batches_float64_and_non_contiguous_inputs(rng):
    sigma = (1.2, 2.0, 0.9)
    stack = rng.standard_normal((2, 3, 7, 6, 5))
    got = smoothing.smooth(stack, sigma)  # float64, 5 dimensions: each volume on its own
    assert_matches_scipy(got, stack, sigma)
    base = rng.standard_normal((9, 12, 10)).astype(np.float32)
    view = base.transpose(2, 0, 1)[:, ::2, 1:]  # strided, not contiguous
    assert not view.flags.c_contiguous
    assert_matches_scipy(smoothing.smooth(view, sigma), np.ascontiguousarray(view), sigma)
    ints = rng.integers(0, 5, size=(6, 7, 4))
    assert_matches_scipy(smoothing.smooth(ints, sigma), ints.astype(np.float32), sigma)


def test_smooth_keeps_torch_tensors_torch(rng):
    x = rng.standard_normal((3, 6, 7, 5)).astype(np.float32)
    got = smoothing.smooth(torch.from_numpy(x).double(), (1.0, 1.5, 0.5))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert_matches_scipy(got.numpy(), x, (1.0, 1.5, 0.5))


def test_metrics_smooth_is_the_compiled_one(rng):
    x = rng.standard_normal((8, 9, 4)).astype(np.float32)
    got = metrics.smooth(x, (1.0, 2.0, 1.0))
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, smoothing.smooth(x, (1.0, 2.0, 1.0)))
    assert_matches_scipy(got, x, (1.0, 2.0, 1.0))


# ----------------------------------------------------------------------------- local moments
def reference_moments(a, b, sigma, floor_a, floor_b):
    """The moments from SciPy's float64 smoothing of float64 products."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def g(x):
        return gaussian_filter(x, sigma, mode="nearest", truncate=TRUNCATE)

    mean_a, mean_b = g(a64), g(b64)
    var_a = np.maximum(g(a64 * a64) - mean_a**2, 0) + floor_a
    var_b = np.maximum(g(b64 * b64) - mean_b**2, 0) + floor_b
    cov = g(a64 * b64) - mean_a * mean_b
    return mean_a, mean_b, var_a, var_b, cov, np.clip(cov / np.sqrt(var_a * var_b), -1, 1)


@pytest.mark.parametrize(
    "shape, sigma",
    [
        ((7, 11, 5), (1.3, 0.8, 2.1)),
        ((12, 10, 6), (2.0, 0.0, 1.0)),
        ((3, 2, 4), (5.0, 7.5, 9.0)),
        ((9, 1, 6), (1.5, 3.0, 0.7)),
        ((5, 4, 3), (0.0, 0.0, 0.0)),  # no pass: the products themselves
        ((64, 64, 16), (2.59, 2.59, 0.73)),
    ],
)
def test_local_moments_match_a_float64_reference(rng, shape, sigma):
    a = rng.standard_normal(shape).astype(np.float32)
    b = (0.6 * a + 0.8 * rng.standard_normal(shape)).astype(np.float32)
    floors = (1e-4, 2e-4)
    got = smoothing.local_moments(a, b, sigma, floor_a=floors[0], floor_b=floors[1])
    assert got.shape == (6, *shape) and got.dtype == np.float32
    for name, value, want in zip(
        smoothing.LOCAL_MOMENT_NAMES, got, reference_moments(a, b, sigma, *floors), strict=True
    ):
        # float32 sums of unit-variance data: the second moments lose ~1e-6 to the squared means
        np.testing.assert_allclose(value, want, rtol=0, atol=2e-6, err_msg=name)


def test_local_moments_of_stacks_and_the_metric_views(rng):
    a = rng.standard_normal((2, 8, 7, 5)).astype(np.float32)
    b = rng.standard_normal((2, 8, 7, 5)).astype(np.float32)
    sigma = (1.5, 1.0, 0.8)
    got = smoothing.local_moments(a, b, sigma, floor_a=1e-3, floor_b=1e-3)
    assert got.shape == (2, 6, 8, 7, 5)
    np.testing.assert_array_equal(
        got[1], smoothing.local_moments(a[1], b[1], sigma, floor_a=1e-3, floor_b=1e-3)
    )
    m = metrics.local_moments(a[0], b[0], sigma, floor_a=1e-3, floor_b=1e-3)
    for name in smoothing.LOCAL_MOMENT_NAMES:
        np.testing.assert_array_equal(getattr(m, name), got[0, smoothing.LOCAL_MOMENT_NAMES.index(name)])


def test_local_moments_of_flat_patches_have_exactly_the_floor_as_variance():
    """The sums accumulate in float64: a window over one value gives G*a² − (G*a)² = 0 exactly, so
    Λ is 0 there, not the ~1e-3 that float32 rounding divided by a small floor would give."""
    a = np.zeros((12, 12, 6), np.float32)
    a[6:] = 1.7
    b = np.where(np.arange(12)[:, None, None] < 6, -0.3, 2.9).astype(np.float32) * np.ones_like(a)
    got = smoothing.local_moments(a, b, (1.0, 1.0, 1.0), floor_a=1e-4, floor_b=2e-4)
    flat = (slice(0, 2), slice(None), slice(None))  # windows (radius 3) that see one value only
    assert np.all(got[2][flat] == np.float32(1e-4)) and np.all(got[3][flat] == np.float32(2e-4))
    assert np.all(got[4][flat] == 0.0) and np.all(got[5][flat] == 0.0)


def test_local_moments_of_one_image_with_itself_correlate_to_one(rng):
    a = gaussian_filter(rng.standard_normal((16, 14, 8)), 1.0).astype(np.float32)
    a /= a.std()
    got = smoothing.local_moments(a, a, (2.0, 2.0, 1.0), floor_a=0.0, floor_b=0.0)
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_allclose(got[5], 1.0, atol=1e-4)


# ----------------------------------------------------------------------------- refused inputs
def test_smoothing_refuses_bad_arguments_naming_them(rng):
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="'sigma_vox'"):
        smoothing.smooth(x, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="'sigma_vox'"):
        smoothing.smooth(x, (1.0, 1.0))
    with pytest.raises(ValueError, match="'sigma_vox'"):
        smoothing.smooth(x, (1.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match="'truncate'"):
        smoothing.smooth(x, 1.0, truncate=0.0)
    with pytest.raises(ValueError, match="'x'.*3 dimensions"):
        smoothing.smooth(x[0], 1.0)
    with pytest.raises(ValueError, match="'x'.*empty"):
        smoothing.smooth(x[:0], 1.0)
    with pytest.raises(TypeError, match="'x'"):
        smoothing.smooth(x.tolist(), 1.0)
    with pytest.raises(TypeError, match="'x'"):
        smoothing.smooth(x.astype(np.complex64), 1.0)
    with pytest.raises(ValueError, match="'a'.*'b'"):
        smoothing.local_moments(x, x[:4], 1.0, floor_a=0.0, floor_b=0.0)
    with pytest.raises(ValueError, match="'floor_b'"):
        smoothing.local_moments(x, x, 1.0, floor_a=0.0, floor_b=-1.0)
    with pytest.raises(TypeError, match="'b'"):
        smoothing.local_moments(x, torch.from_numpy(x), 1.0, floor_a=0.0, floor_b=0.0)


def test_the_extension_guards_its_own_arguments():
    x = np.zeros((1, 1, 4, 3, 2), np.float32)
    taps = np.concatenate([_core.smooth_taps(1.0, TRUNCATE, n) for n in (4, 3, 2)])
    radii = [3, 2, 1]
    with pytest.raises(ValueError, match="'taps'"):
        _core.smooth_cpu(x, np.empty_like(x), np.empty_like(x), taps[:-1], radii, 1)
    with pytest.raises(ValueError, match="'out'"):
        _core.smooth_cpu(x, np.empty((1, 1, 4, 3, 3), np.float32), np.empty_like(x), taps, radii, 1)
    with pytest.raises(ValueError, match="'scratch'"):
        _core.local_moments_cpu(
            x, x, np.empty((1, 6, 4, 3, 2), np.float32), np.empty_like(x), taps, radii, 0.0, 0.0, 1
        )
    with pytest.raises(ValueError, match="'sigma'"):
        _core.smooth_taps(-1.0, TRUNCATE, 5)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.cuda
@requires_cuda
def test_cuda_smoothing_matches_the_cpu(rng):
    for shape, sigma in [
        ((7, 11, 5), (1.3, 0.0, 2.1)),
        ((3, 2, 4), (5.0, 7.5, 9.0)),
        ((64, 64, 16), (2.59, 2.59, 0.73)),
    ]:
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        y = rng.standard_normal((2, *shape)).astype(np.float32)
        gpu = smoothing.smooth(torch.from_numpy(x).cuda(), sigma)
        assert gpu.is_cuda
        np.testing.assert_allclose(gpu.cpu().numpy(), smoothing.smooth(x, sigma), rtol=0, atol=2e-6)
        moments = smoothing.local_moments(
            torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), sigma, floor_a=1e-4, floor_b=1e-4
        )
        np.testing.assert_allclose(
            moments.cpu().numpy(),
            smoothing.local_moments(x, y, sigma, floor_a=1e-4, floor_b=1e-4),
            rtol=0,
            atol=1e-5,
        )
    none = np.ones((1, 3, 4, 5), np.float32)
    for sigma in [(0.0, 0.0, 0.0), (0.0, 0.0, 1.0)]:  # no pass, one pass
        np.testing.assert_allclose(
            smoothing.smooth(torch.from_numpy(none).cuda(), sigma).cpu().numpy(),
            smoothing.smooth(none, sigma),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            smoothing.local_moments(
                torch.from_numpy(none).cuda(), torch.from_numpy(none).cuda(), sigma, floor_a=1.0, floor_b=1.0
            )
            .cpu()
            .numpy(),
            smoothing.local_moments(none, none, sigma, floor_a=1.0, floor_b=1.0),
            atol=1e-6,
        )
