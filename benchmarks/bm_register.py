"""One full registration at 64×64×16 on 2 threads: network + exp + warp (preparation excluded).

svfnet's exp and warp against the VoxelMorph-style torch layers on the same network output.
Run: ``python -m pytest benchmarks/bm_register.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.peers import SpatialTransformer, VecInt
from svfnet.ops import fields
from svfnet.registration.arrays import register
from svfnet.training.model import SVFNet, SVFNetConfig

GRID = (64, 64, 16)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = SVFNet(SVFNetConfig()).eval()
    rng = np.random.default_rng(0)
    moving, fixed = rng.random(GRID, dtype=np.float32), rng.random(GRID, dtype=np.float32)
    with torch.no_grad():
        svf = model(torch.from_numpy(np.stack([moving, fixed])[None]))
    svf = svf * (3.0 / svf.abs().max())  # a realistic few-voxel SVF for exp and warp
    return model, moving, fixed, svf


def test_full_registration(bench, case):
    model, moving, fixed, _ = case
    bench(
        "registration 64x64x16 (network + exp + warp)",
        "svfnet",
        lambda: register(moving, fixed, model),
        rounds=10,
    )


@pytest.mark.parametrize("peer", ["svfnet", "torch VecInt + SpatialTransformer (VoxelMorph)"])
def test_exp_and_warp_after_the_network(bench, case, peer):
    _, moving, _, svf = case
    steps = fields.exp_steps(float(svf[0].norm(dim=0).max()))
    moving_t = torch.from_numpy(moving)
    if peer == "svfnet":

        def run():
            return fields.warp(moving_t, fields.exp(svf[0], steps=steps))
    else:
        integrate, transformer = VecInt(GRID, steps), SpatialTransformer(GRID)

        def run():
            with torch.no_grad():
                return transformer(moving_t[None, None], integrate(svf))[0, 0]

    out = bench("exp + warp 64x64x16", peer, run)
    np.testing.assert_allclose(
        np.asarray(out), fields.warp(moving, fields.exp(svf[0].numpy(), steps=steps)), atol=1e-3
    )
