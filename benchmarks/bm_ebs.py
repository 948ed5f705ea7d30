"""Elastic body spline, fit + grid evaluation at K = 500, 1,000 and 2,000 landmarks on 64×64×16,
against ITK's ElasticBodySplineKernelTransform (fit, then TransformToDisplacementFieldFilter on
the grid: ``pip install itk-filtering``, in the ``bench`` extra) and a dense float64 NumPy
implementation of the same formula.

Run: ``python -m pytest benchmarks/bm_ebs.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.test_ebs import itk_ebs_transform, reference_ebs

from svfnet.ops.ebs import fit_ebs

GRID, SPACING = (64, 64, 16), (1.9, 1.9, 7.9)


def dense_numpy_ebs(source, displacement, grid, spacing):
    """The tests' float64 reference (np.linalg.solve, then every voxel by broadcasting), in voxels."""
    voxels_mm = np.indices(grid).reshape(3, -1).T * np.asarray(spacing)
    return (reference_ebs(source, displacement, voxels_mm) / np.asarray(spacing)).T.reshape(3, *grid)


@pytest.fixture(scope="module", params=[500, 1000, 2000])
def landmarks(request):
    rng = np.random.default_rng(0)
    source = rng.uniform([20, 20, 20], [100, 100, 100], size=(request.param, 3))
    return request.param, source, rng.normal(0, 3, size=source.shape)


def itk_ebs_grid(source, displacement, grid, spacing):
    """ITK's EBS fitted on the landmarks and evaluated on every voxel by its own filter, in voxels."""
    import itk

    transform = itk_ebs_transform(source, displacement)
    to_field = itk.TransformToDisplacementFieldFilter[itk.Image[itk.Vector[itk.F, 3], 3], itk.D].New()
    to_field.SetTransform(transform)
    to_field.SetSize(list(grid))
    to_field.SetOutputSpacing(list(spacing))
    to_field.SetOutputOrigin([0.0, 0.0, 0.0])
    to_field.Update()
    field_mm = np.moveaxis(itk.array_from_image(to_field.GetOutput()), -1, 0).transpose(
        0, 3, 2, 1
    )  # (k,j,i,3) → (3,i,j,k)
    return field_mm / np.asarray(spacing).reshape(3, 1, 1, 1)


@pytest.mark.parametrize("peer", ["svfnet", "ITK", "dense NumPy"])
def test_ebs_fit_and_grid(bench, landmarks, peer):
    count, source, displacement = landmarks
    group = f"EBS fit + grid, K={count}, 64x64x16"
    if peer == "svfnet":
        out = bench(group, peer, lambda: fit_ebs(source, displacement).on_grid(GRID, SPACING), rounds=3)
    elif peer == "ITK":
        pytest.importorskip("itk", reason="ITK is in the bench extra (pip install itk-filtering)")
        if count > 500:
            pytest.skip("ITK's fit at K=1000 takes minutes (an O(K³) SVD); its K=500 ratio tells the story")
        out = bench(group, peer, lambda: itk_ebs_grid(source, displacement, GRID, SPACING), rounds=1)
    else:
        if count > 500:
            pytest.skip("dense NumPy at K=1000 takes minutes; its K=500 ratio tells the story")
        out = bench(group, peer, lambda: dense_numpy_ebs(source, displacement, GRID, SPACING), rounds=1)
    np.testing.assert_allclose(out, fit_ebs(source, displacement).on_grid(GRID, SPACING), atol=1e-3)
