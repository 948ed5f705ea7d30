"""Elastic body spline, fit + grid evaluation at K = 500 and 1,000 landmarks on 64×64×16,
against a dense float64 NumPy implementation of the same formula (ITK's
ElasticBodySplineKernelTransform is the other peer DESIGN.md lists; it is not installed here).

Run: ``python -m pytest benchmarks/bm_ebs.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest

from svfnet.ebs import ebs_alpha, fit_ebs

GRID, SPACING = (64, 64, 16), (1.9, 1.9, 7.9)


def dense_numpy_ebs(source, displacement, grid, spacing, nu=0.25):
    """Fit by np.linalg.solve and evaluate every voxel with broadcasting, in chunks of voxels."""
    alpha, count = ebs_alpha(nu), len(source)

    def kernel(a, b):
        r = a[:, None, :] - b[None, :, :]
        norm = np.linalg.norm(r, axis=-1)
        g = alpha * (norm**3)[..., None, None] * np.eye(3) - 3 * norm[..., None, None] * r[..., :, None] * r[..., None, :]
        return g.transpose(0, 2, 1, 3).reshape(3 * len(a), 3 * len(b))

    def affine_rows(x):
        rows = np.zeros((3 * len(x), 12))
        for c in range(3):
            rows[c::3, [c, 3 + c, 6 + c]] = x
            rows[c::3, 9 + c] = 1
        return rows

    system = np.zeros((3 * count + 12, 3 * count + 12))
    system[: 3 * count, : 3 * count] = kernel(source, source)
    system[: 3 * count, 3 * count :] = affine_rows(source)
    system[3 * count :, : 3 * count] = affine_rows(source).T
    solution = np.linalg.solve(system, np.concatenate([displacement.reshape(-1), np.zeros(12)]))
    voxels = np.indices(grid).reshape(3, -1).T * np.asarray(spacing)
    out = np.empty((len(voxels), 3))
    for start in range(0, len(voxels), 2048):
        chunk = voxels[start : start + 2048]
        out[start : start + 2048] = (kernel(chunk, source) @ solution[: 3 * count] + affine_rows(chunk) @ solution[3 * count :]).reshape(-1, 3)
    return (out / np.asarray(spacing)).T.reshape(3, *grid)


@pytest.fixture(scope="module", params=[500, 1000])
def landmarks(request):
    rng = np.random.default_rng(0)
    source = rng.uniform([20, 20, 20], [100, 100, 100], size=(request.param, 3))
    return request.param, source, rng.normal(0, 3, size=source.shape)


@pytest.mark.parametrize("peer", ["svfnet", "dense NumPy"])
def test_ebs_fit_and_grid(bench, landmarks, peer):
    count, source, displacement = landmarks
    group = f"EBS fit + grid, K={count}, 64x64x16"
    if peer == "svfnet":
        out = bench(group, peer, lambda: fit_ebs(source, displacement).on_grid(GRID, SPACING), rounds=3)
    else:
        if count > 500:
            pytest.skip("dense NumPy at K=1000 takes minutes; its K=500 ratio tells the story")
        out = bench(group, peer, lambda: dense_numpy_ebs(source, displacement, GRID, SPACING), rounds=1)
    np.testing.assert_allclose(out, fit_ebs(source, displacement).on_grid(GRID, SPACING), atol=1e-3)
