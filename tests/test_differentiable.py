"""svfnet.ops.differentiable: exp and warp for torch autograd, against autograd through grid_sample in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfnet.ops import differentiable, fields
from tests.conftest import DEVICES, smooth_field
from tests.test_fields import torch_exp

devices = pytest.mark.parametrize("device", DEVICES)


def torch_warp(image: torch.Tensor, disp: torch.Tensor, fill: float) -> torch.Tensor:
    """``image(x + disp(x))`` by grid_sample (zeros outside, shifted by ``fill``), float64, differentiable."""
    grid = image.shape[2:]
    base = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=disp.dtype) for n in grid], indexing="ij"))[
        None
    ]
    extent = torch.tensor([n - 1 for n in grid], dtype=disp.dtype).view(1, 3, 1, 1, 1)
    position = (2 * (base + disp) / extent - 1).permute(0, 2, 3, 4, 1).flip(-1)  # (x, y, z) = (k, j, i)
    return fill + torch.nn.functional.grid_sample(
        image - fill, position, padding_mode="zeros", align_corners=True
    )


def off_cell_edges(disp: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """Voxels whose position is at least ``margin`` from every cell edge (the trilinear derivative
    jumps across an edge; float32 and float64 may put a position on either side of it)."""
    fraction = np.abs(disp - np.round(disp))
    return (fraction > margin).all(axis=1)


@devices
@pytest.mark.parametrize("fill", [0.0, 0.7])
@pytest.mark.parametrize("grid", [(5, 6, 7), (9, 4, 6)])
def test_warp_gradient_in_the_displacement_matches_torch_autograd(rng, device, fill, grid):
    """Batch 2, three channels, displacements that carry samples past the border (the fill's half
    voxel and beyond): value and ∂L/∂disp for L = <w, warp(image, disp)>."""
    image = rng.standard_normal((2, 3, *grid)).astype(np.float32)
    disp = smooth_field(rng, grid, amplitude=3.0, sigma=1.5, batch=2)
    weights = rng.standard_normal(image.shape).astype(np.float32)
    disp_t = torch.tensor(disp, device=device, requires_grad=True)
    out = differentiable.warp(torch.tensor(image, device=device), disp_t, fill=fill)
    (out * torch.tensor(weights, device=device)).sum().backward()

    disp_ref = torch.tensor(disp, dtype=torch.float64, requires_grad=True)
    out_ref = torch_warp(torch.tensor(image, dtype=torch.float64), disp_ref, fill)
    (out_ref * torch.tensor(weights, dtype=torch.float64)).sum().backward()

    np.testing.assert_allclose(out.detach().cpu().numpy(), out_ref.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(
        out.detach().cpu().numpy(), fields.warp(image, disp, fill=fill)
    )  # the same warp
    away = np.broadcast_to(off_cell_edges(disp)[:, None], disp.shape)
    assert away.mean() > 0.9
    grad, expected = disp_t.grad.cpu().numpy(), disp_ref.grad.numpy()
    np.testing.assert_allclose(grad[away], expected[away], atol=1e-4 * np.abs(expected).max(), rtol=1e-4)
    position = np.indices(grid)[None] + disp
    outside = ((position < -1) | (position > np.array(grid).reshape(1, 3, 1, 1, 1))).any(axis=1)
    assert outside.any()  # a voxel more than a voxel out reads only the fill: no gradient
    assert np.abs(grad.transpose(0, 2, 3, 4, 1)[outside]).max() == 0


@devices
def test_exp_matches_the_fields_exponential_and_autograd(rng, device):
    """Forward equal to svfnet.ops.fields.exp; gradient against autograd through a grid_sample exponential."""
    v = (rng.standard_normal((2, 3, 7, 6, 5)) * 2.0).astype(np.float32)
    weights = rng.standard_normal(v.shape).astype(np.float32)
    v_t = torch.tensor(v, device=device, requires_grad=True)
    u = differentiable.exp(v_t)
    (u * torch.tensor(weights, device=device)).sum().backward()
    np.testing.assert_array_equal(u.detach().cpu().numpy(), fields.exp(v))
    steps = fields.exp_steps(float(np.linalg.norm(v, axis=1).max()))
    v_ref = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    (torch_exp(v_ref, steps) * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    expected = v_ref.grad.numpy()
    error = np.abs(v_t.grad.cpu().numpy() - expected) / np.abs(expected).max()
    assert np.mean(error <= 1e-5) > 0.999 and error.max() < 0.05, (np.mean(error <= 1e-5), error.max())


def test_exp_then_warp_chain_matches_finite_differences(rng):
    """The chain a label-overlap loss takes, L = Σ w · warp(labels, exp(v)), along a random direction."""
    grid = (10, 9, 4)
    onehot = np.zeros((1, 2, *grid), np.float32)
    onehot[0, 1, 3:7, 2:6, 1:3] = 1
    onehot[0, 0] = 1 - onehot[0, 1]
    v = smooth_field(rng, grid, amplitude=1.5, sigma=2.0, batch=1)
    direction = smooth_field(rng, grid, amplitude=1.0, sigma=2.0, batch=1)
    weights = torch.tensor(rng.standard_normal(onehot.shape), dtype=torch.float32)
    image = torch.tensor(onehot)

    def loss(field: np.ndarray) -> float:
        return float(
            (differentiable.warp(image, differentiable.exp(torch.tensor(field))) * weights).double().sum()
        )

    v_t = torch.tensor(v, requires_grad=True)
    (differentiable.warp(image, differentiable.exp(v_t)) * weights).sum().backward()
    eps = 1e-2
    numeric = (loss(v + eps * direction) - loss(v - eps * direction)) / (2 * eps)
    assert float((v_t.grad.double() * torch.tensor(direction, dtype=torch.float64)).sum()) == pytest.approx(
        numeric, rel=2e-2
    )


def test_bad_inputs_are_named():
    v = torch.zeros((1, 3, 4, 4, 2))
    with pytest.raises(ValueError, match="'v' must be \\(N, 3, I, J, K\\)"):
        differentiable.exp(torch.zeros((3, 4, 4, 2)))
    with pytest.raises(ValueError, match="'v' must be float32"):
        differentiable.exp(v.double())
    with pytest.raises(ValueError, match="'v' has 1 non-finite"):
        bad = v.clone()
        bad[0, 0, 0, 0, 0] = float("nan")
        differentiable.exp(bad)
    with pytest.raises(ValueError, match="'image' requires grad"):
        differentiable.warp(torch.zeros((1, 2, 4, 4, 2), requires_grad=True), v)
    with pytest.raises(ValueError, match="same batch size and grid"):
        differentiable.warp(torch.zeros((2, 2, 4, 4, 2)), v)
    with pytest.raises(TypeError, match="'image' must be a torch tensor"):
        differentiable.warp(np.zeros((1, 2, 4, 4, 2), np.float32), v)
