"""warp and exp against torch (VoxelMorph/MONAI style) and SciPy, at 64×64×16 and 128³.

Run: ``make bench`` (or ``python -m pytest benchmarks/bm_fields.py --benchmark-only``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from benchmarks.peers import SpatialTransformer, VecInt
from svfnet.ops import fields

GRIDS = {"64x64x16": (64, 64, 16), "128^3": (128, 128, 128)}
EXP_STEPS = 7


def smooth_field(grid, amplitude, seed=0):
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal((3, *grid)), sigma=[0, 4, 4, 2], mode="nearest")
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


@pytest.fixture(params=list(GRIDS), scope="module")
def case(request):
    grid = GRIDS[request.param]
    image = np.random.default_rng(1).random(grid, dtype=np.float32)
    disp = smooth_field(grid, amplitude=4.0)
    return request.param, grid, image, disp


@pytest.mark.parametrize("peer", ["svfnet", "torch grid_sample (VoxelMorph)", "scipy map_coordinates"])
def test_warp(bench, case, peer):
    name, grid, image, disp = case
    group = f"warp 1 channel {name}"
    if peer == "svfnet":
        image_t, disp_t = torch.from_numpy(image), torch.from_numpy(disp)
        out = bench(group, peer, lambda: fields.warp(image_t, disp_t))
    elif peer.startswith("torch"):
        transformer = SpatialTransformer(grid)
        image_t, disp_t = torch.from_numpy(image)[None, None], torch.from_numpy(disp)[None]

        def run():
            with torch.no_grad():
                return transformer(image_t, disp_t)

        out = bench(group, peer, run)[0, 0]
    else:
        if name == "128^3":
            pytest.skip("SciPy at 128^3 takes seconds a call; its ratio at 64x64x16 tells the story")
        positions = np.indices(grid, dtype=np.float32) + disp
        out = bench(
            group, peer, lambda: map_coordinates(image, positions, order=1, mode="grid-constant"), rounds=5
        )
    # every peer computes the same thing
    np.testing.assert_allclose(np.asarray(out), fields.warp(image, disp), atol=1e-4)


@pytest.mark.parametrize("peer", ["svfnet", "torch VecInt (VoxelMorph)"])
def test_exp(bench, case, peer):
    name, grid, _, disp = case
    velocity = disp
    group = f"exp {EXP_STEPS} squarings {name}"
    if peer == "svfnet":
        velocity_t = torch.from_numpy(velocity)
        out = bench(group, peer, lambda: fields.exp(velocity_t, steps=EXP_STEPS))
    else:
        integrate = VecInt(grid, EXP_STEPS)
        velocity_t = torch.from_numpy(velocity)[None]

        def run():
            with torch.no_grad():
                return integrate(velocity_t)

        out = bench(group, peer, run)[0]
    np.testing.assert_allclose(np.asarray(out), fields.exp(velocity, steps=EXP_STEPS), atol=1e-3)


@pytest.mark.parametrize("peer", ["svfnet", "torch VecInt + autograd"])
def test_exp_gradient(bench, case, peer):
    """exp and its gradient (what each polishing step of the logarithm needs): our levels and
    adjoint kernels against autograd through VoxelMorph's scaling and squaring."""
    from svfnet.ops.backend import backend_of

    name, grid, _, velocity = case
    grad_exp = smooth_field(grid, amplitude=1.0, seed=2)
    used = fields.exp_steps(float(np.abs(velocity).max()))  # the squarings the logarithm would use
    group = f"exp + gradient ({used} squarings) {name}"
    if peer == "svfnet":
        backend = backend_of("bench", v=velocity)
        v5, g5 = velocity[None], grad_exp[None]

        def run():
            levels, _, steps = fields.exp_batched_with_levels(backend, v5)
            return fields.exp_batched_vjp(backend, v5, levels, g5, steps)[0]

        out = bench(group, peer, run)
    else:
        integrate = VecInt(grid, used)
        g_t = torch.from_numpy(grad_exp)[None]

        def run():
            v_t = torch.from_numpy(velocity)[None].requires_grad_(True)
            (integrate(v_t) * g_t).sum().backward()
            return v_t.grad[0]

        out = bench(group, peer, run)
    # the same gradient as float64 autograd, but for the odd voxel whose float32 position falls on
    # the other side of a cell edge than in float64 (the trilinear derivative jumps there)
    v_ref = torch.from_numpy(velocity.astype(np.float64))[None].requires_grad_(True)
    (
        VecInt(grid, used).double()(v_ref) * torch.from_numpy(grad_exp.astype(np.float64))[None]
    ).sum().backward()
    expected = v_ref.grad[0].numpy()
    error = np.abs(np.asarray(out) - expected)
    assert (
        np.mean(error <= 1e-4 * np.abs(expected).max()) > 0.9999
        and error.max() < 0.05 * np.abs(expected).max()
    )
