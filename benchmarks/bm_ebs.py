"""Elastic body spline, fit + grid evaluation at K = 500 and 1,000 landmarks on 64×64×16,
against a dense float64 NumPy implementation of the same formula (ITK's
ElasticBodySplineKernelTransform is the other peer DESIGN.md lists; it is not installed here).

Run: ``python -m pytest benchmarks/bm_ebs.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest

from svfnet.ebs import fit_ebs
from tests.test_ebs import reference_ebs

GRID, SPACING = (64, 64, 16), (1.9, 1.9, 7.9)


def dense_numpy_ebs(source, displacement, grid, spacing):
    """The tests' float64 reference (np.linalg.solve, then every voxel by broadcasting), in voxels."""
    voxels_mm = np.indices(grid).reshape(3, -1).T * np.asarray(spacing)
    return (reference_ebs(source, displacement, voxels_mm) / np.asarray(spacing)).T.reshape(3, *grid)


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
