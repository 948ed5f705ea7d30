"""svfnet.ops.ebs against a dense float64 NumPy EBS written from the formula, and analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from svfnet.ops import ebs


def reference_ebs(source, displacement, points, nu=0.25, smoothing_mm=0.0):
    """Dense EBS in millimetres, no normalisation: solve [[G + λI, P], [Pᵀ, 0]] directly."""
    alpha = 12 * (1 - nu) - 1

    def kernel(a, b):
        r = a[:, None, :] - b[None, :, :]
        norm = np.linalg.norm(r, axis=-1)
        g = (
            alpha * (norm**3)[..., None, None] * np.eye(3)
            - 3 * norm[..., None, None] * r[..., :, None] * r[..., None, :]
        )
        return g.transpose(0, 2, 1, 3).reshape(3 * len(a), 3 * len(b))

    def affine_rows(x):
        rows = np.zeros((3 * len(x), 12))
        for c in range(3):
            rows[c::3, [c, 3 + c, 6 + c]] = x
            rows[c::3, 9 + c] = 1
        return rows

    k = len(source)
    system = np.zeros((3 * k + 12, 3 * k + 12))
    system[: 3 * k, : 3 * k] = kernel(source, source) + smoothing_mm * np.eye(3 * k)
    system[: 3 * k, 3 * k :] = affine_rows(source)
    system[3 * k :, : 3 * k] = affine_rows(source).T
    rhs = np.concatenate([displacement.reshape(-1), np.zeros(12)])
    solution = np.linalg.solve(system, rhs)
    values = np.empty((len(points), 3))
    for start in range(0, len(points), 2048):  # chunks: the kernel matrix is 9 numbers per point and landmark
        chunk = points[start : start + 2048]
        values[start : start + 2048] = (
            kernel(chunk, source) @ solution[: 3 * k] + affine_rows(chunk) @ solution[3 * k :]
        ).reshape(-1, 3)
    return values


@pytest.fixture
def landmarks(rng):
    source = rng.uniform([0, 0, 0], [100, 90, 60], size=(40, 3))
    displacement = rng.normal(0, 3, size=(40, 3))
    return source, displacement


@pytest.mark.parametrize("nu", [0.25, 0.45])
def test_ebs_matches_dense_reference(rng, landmarks, nu):
    source, displacement = landmarks
    points = rng.uniform([-10, -10, -10], [110, 100, 70], size=(200, 3))
    fit = ebs.fit_ebs(source, displacement, nu=nu)
    np.testing.assert_allclose(
        fit(points), reference_ebs(source, displacement, points, nu), atol=1e-8, rtol=1e-8
    )


def itk_ebs_transform(source, displacement, nu=0.25):
    """ITK's ElasticBodySplineKernelTransform (α = 12(1 − ν) − 1) fitted on the landmarks (mm)."""
    itk = pytest.importorskip("itk", reason="ITK is a test extra (pip install itk-core)")
    transform = itk.ElasticBodySplineKernelTransform[itk.D, 3].New()
    transform.SetAlpha(12 * (1 - nu) - 1)
    point_set_type = type(transform.GetSourceLandmarks())

    def point_set(array):
        out = point_set_type.New()
        for n, p in enumerate(array):
            out.SetPoint(n, itk.Point[itk.D, 3]([float(x) for x in p]))
        return out

    transform.SetSourceLandmarks(point_set(source))
    transform.SetTargetLandmarks(point_set(source + displacement))
    transform.ComputeWMatrix()
    return transform


def itk_ebs(source, displacement, points, nu):
    """ITK's spline applied point by point: displacements (mm)."""
    import itk

    transform = itk_ebs_transform(source, displacement, nu)
    return np.array(
        [np.array(transform.TransformPoint(itk.Point[itk.D, 3]([float(x) for x in p]))) - p for p in points]
    )


@pytest.mark.parametrize("nu", [0.25, 0.45])
def test_ebs_matches_itk(rng, landmarks, nu):
    source, displacement = landmarks
    points = rng.uniform([-10, -10, -10], [110, 100, 70], size=(200, 3))
    expected = itk_ebs(source, displacement, points, nu)
    np.testing.assert_allclose(ebs.fit_ebs(source, displacement, nu=nu)(points), expected, atol=1e-4, rtol=0)


def test_ebs_interpolates_landmarks_and_reproduces_affine_maps(rng, landmarks):
    source, displacement = landmarks
    np.testing.assert_allclose(ebs.fit_ebs(source, displacement)(source), displacement, atol=1e-9)
    matrix, shift = rng.uniform(-0.2, 0.2, size=(3, 3)), rng.uniform(-5, 5, size=3)
    affine = ebs.fit_ebs(source, source @ matrix.T + shift)
    points = rng.uniform(-50, 150, size=(100, 3))
    np.testing.assert_allclose(affine(points), points @ matrix.T + shift, atol=1e-8)
    np.testing.assert_allclose(np.abs(affine.coefficients).max(), 0, atol=1e-9)


def test_ebs_on_grid_is_the_spline_at_voxel_positions_in_voxels(rng, landmarks):
    source, displacement = landmarks
    shape, spacing = (9, 7, 5), np.array([12.0, 13.5, 14.0])
    fit = ebs.fit_ebs(source, displacement)
    grid = fit.on_grid(shape, spacing)
    assert grid.shape == (3, *shape) and grid.dtype == np.float32
    voxels = np.indices(shape).reshape(3, -1).T
    expected = (fit(voxels * spacing) / spacing).T.reshape(3, *shape)
    np.testing.assert_allclose(grid, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.cuda  # on the GPU machine too: make gpu-check selects it
def test_ebs_on_grid_on_a_cuda_device_matches_the_cpu(rng, landmarks):
    """The same svfcore body through the CUDA launcher (where a device is usable; else the clear
    error that says why not)."""
    import svfnet

    source, displacement = landmarks
    factor = ebs.factorize_ebs(source)
    fits = factor.solve(np.stack([displacement, -0.5 * displacement]))
    shape, spacing = (9, 7, 5), (12.0, 13.5, 14.0)
    if not svfnet.cuda_available():
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            fits.on_grid(shape, spacing, device="cuda")
        return
    on_gpu = fits.on_grid(shape, spacing, device="cuda")
    assert on_gpu.is_cuda and tuple(on_gpu.shape) == (2, 3, *shape)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), fits.on_grid(shape, spacing), rtol=1e-6, atol=1e-5)


def test_ebs_on_grid_refuses_a_cpu_device(landmarks):
    with pytest.raises(ValueError, match="'device' must be None"):
        ebs.fit_ebs(*landmarks).on_grid((4, 4, 4), (1.0, 1.0, 1.0), device="cpu")


def test_ebs_factorisation_solves_many_fits_at_once(rng, landmarks):
    source, _ = landmarks
    displacements = rng.normal(0, 2, size=(11, 40, 3))  # more than one pass of 8 fits
    factor = ebs.factorize_ebs(source)
    together = factor.solve(displacements)
    grids = together.on_grid((6, 5, 4), (20.0, 20.0, 15.0))
    points = rng.uniform(0, 100, size=(30, 3))
    values = together(points)
    assert grids.shape == (11, 3, 6, 5, 4) and values.shape == (11, 30, 3)
    for m in (0, 7, 8, 10):
        alone = ebs.fit_ebs(source, displacements[m])
        np.testing.assert_allclose(values[m], alone(points), atol=1e-9)
        np.testing.assert_allclose(grids[m], alone.on_grid((6, 5, 4), (20.0, 20.0, 15.0)), atol=1e-6)


def test_ebs_smoothing_approximates(rng, landmarks):
    source, displacement = landmarks
    residuals = [
        np.abs(ebs.fit_ebs(source, displacement, smoothing=s)(source) - displacement).max()
        for s in (0.0, 0.01, 1.0)
    ]
    assert residuals[0] < 1e-8 < residuals[1] < residuals[2]


def test_ebs_bad_inputs(rng):
    with pytest.raises(ValueError, match=r"factorize_ebs\(\): 'source_mm' must be \(K, 3\)"):
        ebs.fit_ebs(np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 4 landmarks"):
        ebs.fit_ebs(np.eye(3), np.zeros((3, 3)))
    coplanar = np.c_[rng.uniform(size=(10, 2)), np.zeros(10)]
    with pytest.raises(ValueError, match="singular"):
        ebs.fit_ebs(coplanar, np.zeros((10, 3)))
    source = rng.uniform(size=(10, 3))
    with pytest.raises(ValueError, match="'displacement_mm' must be"):
        ebs.fit_ebs(source, np.zeros((9, 3)))
    with pytest.raises(ValueError, match="'displacement_mm' has non-finite"):
        ebs.fit_ebs(source, np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="'nu'"):
        ebs.fit_ebs(source, np.zeros((10, 3)), nu=0.5)
    with pytest.raises(ValueError, match="'spacing'"):
        ebs.fit_ebs(source, np.zeros((10, 3))).on_grid((4, 4, 4), (1.0, 0.0, 1.0))
