"""Gaussian smoothing and LCC's local moments against scipy.ndimage.gaussian_filter, side by side.

The window is LCC Log-Demons' default (σ = 5 mm on the 1.93 × 1.93 × 6.85 mm evaluation grid:
2.59, 2.59, 0.73 voxels, truncated at 3σ, border replicated). Groups:

- ``smooth volume``: one (I, J, K) volume;
- ``smooth field``: the three components of a (3, I, J, K) field (SciPy: one call a component, as
  the demons did);
- ``local moments``: mean, variance and covariance of two images (SciPy: five smoothings of a, b,
  a², b², ab plus the NumPy arithmetic, as ``svfnet.evaluation.metrics.local_moments`` did).

``svfnet 1 thread`` is the same call with torch (hence svfnet) on one thread, as SciPy runs: on a
busy 2-core machine every OpenMP region of the 2-thread entry waits for a descheduled thread.

Run: ``python -m pytest benchmarks/bm_smooth.py --benchmark-only --benchmark-columns=median,iqr,rounds``
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from svfnet.ops import smoothing

GRIDS = {"64x64x16": (64, 64, 16), "128^3": (128, 128, 128)}
SIGMA = (5.0 / 1.93, 5.0 / 1.93, 5.0 / 6.85)
TRUNCATE = smoothing.GAUSSIAN_TRUNCATE


def scipy_smooth(volume):
    return gaussian_filter(volume, SIGMA, mode="nearest", truncate=TRUNCATE)


def scipy_moments(a, b, floor_a, floor_b):
    """svfnet.evaluation.metrics.local_moments before the compiled smoothing (SciPy and NumPy, float32)."""
    mean_a, mean_b = scipy_smooth(a), scipy_smooth(b)
    var_a = np.maximum(scipy_smooth(a * a) - mean_a * mean_a, 0.0) + np.float32(floor_a)
    var_b = np.maximum(scipy_smooth(b * b) - mean_b * mean_b, 0.0) + np.float32(floor_b)
    cov = scipy_smooth(a * b) - mean_a * mean_b
    return np.stack([mean_a, mean_b, var_a, var_b, cov, np.clip(cov / np.sqrt(var_a * var_b), -1.0, 1.0)])


PEERS = ["svfnet", "svfnet 1 thread", "scipy gaussian_filter"]


@contextlib.contextmanager
def threads_for(peer):
    before = torch.get_num_threads()
    torch.set_num_threads(1 if peer == "svfnet 1 thread" else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=list(GRIDS), scope="module")
def case(request):
    rng = np.random.default_rng(0)
    grid = GRIDS[request.param]
    return (
        request.param,
        rng.standard_normal(grid).astype(np.float32),
        rng.standard_normal((3, *grid)).astype(np.float32),
    )


@pytest.mark.parametrize("peer", PEERS)
def test_smooth_volume(bench, case, peer):
    name, volume, _ = case
    run = (
        (lambda: smoothing.smooth(volume, SIGMA))
        if peer.startswith("svfnet")
        else (lambda: scipy_smooth(volume))
    )
    with threads_for(peer):
        out = bench(f"smooth volume {name}", peer, run)
    np.testing.assert_allclose(out, scipy_smooth(volume), atol=1e-6 * float(np.abs(volume).max()))


@pytest.mark.parametrize("peer", PEERS)
def test_smooth_field(bench, case, peer):
    name, _, field = case
    with threads_for(peer):
        if peer.startswith("svfnet"):
            out = bench(f"smooth field {name}", peer, lambda: smoothing.smooth(field, SIGMA))
        else:
            out = bench(f"smooth field {name}", peer, lambda: np.stack([scipy_smooth(c) for c in field]))
    np.testing.assert_allclose(
        out, np.stack([scipy_smooth(c) for c in field]), atol=1e-6 * float(np.abs(field).max())
    )


@pytest.mark.parametrize("peer", PEERS)
def test_local_moments(bench, case, peer):
    name, a, field = case
    b = (0.6 * a + 0.8 * field[0]).astype(np.float32)
    with threads_for(peer):
        if peer.startswith("svfnet"):
            out = bench(
                f"local moments {name}",
                peer,
                lambda: smoothing.local_moments(a, b, SIGMA, floor_a=1e-4, floor_b=1e-4),
            )
        else:
            out = bench(f"local moments {name}", peer, lambda: scipy_moments(a, b, 1e-4, 1e-4))
    np.testing.assert_allclose(out, scipy_moments(a, b, 1e-4, 1e-4), atol=1e-5)
