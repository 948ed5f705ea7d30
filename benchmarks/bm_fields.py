"""warp and exp against torch (VoxelMorph/MONAI style) and SciPy, at 64×64×16 and 128³.

Run: ``make bench`` (or ``python -m pytest benchmarks/bm_fields.py --benchmark-only``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from benchmarks.peers import SpatialTransformer, VecInt
from svfnet import fields

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
        out = bench(group, peer, lambda: map_coordinates(image, positions, order=1, mode="grid-constant"), rounds=5)
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
