"""svfnet.ops.kernels against float64 NumPy references and torch.autograd's numerical checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfnet.ops import kernels
from tests.conftest import requires_cuda


def reference_weights(x, y, sigma):
    """k_ij = exp(-|x_i - y_j|² / σ²) and r_ij = x_i - y_j in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    r = x[:, None, :] - y[None, :, :]
    return np.exp(-(r**2).sum(-1) / sigma**2), r


def reference_sum(x, y, b, sigma):
    k, _ = reference_weights(x, y, sigma)
    return k @ np.asarray(b, np.float64)


def reference_gradient(x, y, a, b, sigma):
    k, r = reference_weights(x, y, sigma)
    m = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
    return -2.0 / sigma**2 * ((k * m)[:, :, None] * r).sum(1)


def points(rng, n, scale=1.0, dtype=np.float32):
    return (scale * rng.standard_normal((n, 3))).astype(dtype)


# sizes cross the launcher's tiles (256 sources) and target blocks (32 targets); one empty sum
SIZES = [(1, 1, 1, 0.7), (33, 300, 3, 1.3), (70, 19, 5, 0.4), (257, 513, 2, 2.5), (5, 0, 3, 1.0)]


@pytest.mark.parametrize("n,m,d,sigma", SIZES, ids=[f"{n}x{m}x{d}" for n, m, d, _ in SIZES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_sum_matches_numpy(rng, n, m, d, sigma, dtype):
    x, y = points(rng, n, 1.5, dtype), points(rng, m, 1.5, dtype)
    b = rng.standard_normal((m, d)).astype(dtype)
    out = kernels.gaussian_sum(x, y, b, sigma)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (n, d)
    expected = reference_sum(x, y, b, sigma)
    # float32: per-pair error ~1e-7 relative to the sum of |terms|
    scale = reference_sum(x, y, np.abs(b), sigma).max(initial=0.0) + 1e-30
    tolerance = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("n,m,d,sigma", SIZES[:4], ids=[f"{n}x{m}x{d}" for n, m, d, _ in SIZES[:4]])
def test_sum_and_gradient_match_numpy(rng, n, m, d, sigma):
    x, y = points(rng, n, 1.5, np.float64), points(rng, m, 1.5, np.float64)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    sums, gradient = kernels.gaussian_sum_and_gradient(
        torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(a), torch.from_numpy(b), sigma
    )
    assert isinstance(sums, torch.Tensor) and sums.dtype == torch.float64
    np.testing.assert_allclose(sums.numpy(), reference_sum(x, y, b, sigma), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        gradient.numpy(), reference_gradient(x, y, a, b, sigma), rtol=1e-11, atol=1e-12
    )
    alone = kernels.gaussian_gradient(
        x.astype(np.float32), y.astype(np.float32), a.astype(np.float32), b.astype(np.float32), sigma
    )
    scale = np.abs(reference_gradient(x, y, np.abs(a), np.abs(b), sigma)).max() + np.abs(a).max()
    np.testing.assert_allclose(alone, reference_gradient(x, y, a, b, sigma), rtol=0, atol=1e-5 * scale)


def test_bilinear_matches_numpy(rng):
    x, y = points(rng, 40, 2.0, np.float64), points(rng, 290, 2.0, np.float64)
    a, b = rng.standard_normal((40, 3)), rng.standard_normal((290, 3))
    expected = float((a * reference_sum(x, y, b, 1.7)).sum())
    assert kernels.gaussian_bilinear(x, a, y, b, 1.7) == pytest.approx(expected, rel=1e-12)
    value32 = kernels.gaussian_bilinear(
        x.astype(np.float32), a.astype(np.float32), y.astype(np.float32), b.astype(np.float32), 1.7
    )
    assert isinstance(value32, float) and value32 == pytest.approx(expected, rel=1e-5)
    norm = kernels.gaussian_bilinear(x, a, x, a, 1.7)
    assert norm == pytest.approx(float((a * reference_sum(x, x, a, 1.7)).sum()), rel=1e-12) and norm > 0


def _double(rng, *shapes):
    return [torch.tensor(rng.standard_normal(s), dtype=torch.float64, requires_grad=True) for s in shapes]


def test_gaussian_sum_gradcheck_and_gradgradcheck(rng):
    x, y, b = _double(rng, (6, 3), (9, 3), (9, 2))
    func = lambda x, y, b: kernels.gaussian_sum(x, y, b, 0.9)  # noqa: E731
    assert torch.autograd.gradcheck(func, (x, y, b))
    # twice differentiable: the backward pass is itself made of differentiable kernel sums
    assert torch.autograd.gradgradcheck(func, (x, y, b))


def test_sum_and_gradient_gradcheck(rng):
    x, y, a, b = _double(rng, (5, 3), (8, 3), (5, 2), (8, 2))
    assert torch.autograd.gradcheck(lambda *t: kernels.gaussian_sum_and_gradient(*t, 1.1), (x, y, a, b))
    # the Hamiltonian use: one tensor in both slots
    q, p = _double(rng, (7, 3), (7, 3))
    assert torch.autograd.gradcheck(lambda q, p: kernels.gaussian_sum_and_gradient(q, q, p, p, 1.3), (q, p))


def test_bilinear_gradcheck(rng):
    x, a, y, b = _double(rng, (6, 3), (6, 3), (7, 3), (7, 3))
    assert torch.autograd.gradcheck(lambda *t: kernels.gaussian_bilinear(*t, 1.2), (x, a, y, b))
    assert torch.autograd.gradcheck(lambda x, a: kernels.gaussian_bilinear(x, a, x, a, 1.2), (x, a))


def test_float32_gradients_match_float64_autograd(rng):
    """The float32 backward kernels against autograd through a dense float64 torch formula."""
    n, m, sigma = 50, 300, 1.4
    x64, y64, b64 = _double(rng, (n, 3), (m, 3), (m, 4))
    weights = torch.tensor(rng.standard_normal((n, 4)))
    dense = torch.exp(-(torch.cdist(x64, y64) ** 2) / sigma**2) @ b64
    (dense * weights).sum().backward()
    x32, y32, b32 = (t.detach().float().requires_grad_(True) for t in (x64, y64, b64))
    (kernels.gaussian_sum(x32, y32, b32, sigma) * weights.float()).sum().backward()
    for ours, reference in ((x32, x64), (y32, y64), (b32, b64)):
        scale = reference.grad.abs().max().item()
        np.testing.assert_allclose(
            ours.grad.double().numpy(), reference.grad.numpy(), rtol=0, atol=2e-5 * scale
        )


def test_far_points_give_exact_zeros_not_nans(rng):
    x = points(rng, 10, 1.0)
    y = points(rng, 20, 1.0) + np.float32(1e4)  # exp(-1e8): far below float32's range
    b = rng.standard_normal((20, 3)).astype(np.float32)
    out = kernels.gaussian_sum(x, y, b, 1.0)
    assert np.array_equal(out, np.zeros_like(out))
    near = kernels.gaussian_sum(x, x, np.ones((10, 1), np.float32), 1e-3)  # only the diagonal survives
    np.testing.assert_allclose(near, 1.0, rtol=1e-6)


def test_numpy_and_torch_agree(rng):
    x, y, b = points(rng, 20, 1.0), points(rng, 30, 1.0), rng.standard_normal((30, 2)).astype(np.float32)
    from_numpy = kernels.gaussian_sum(x, y, b, 0.8)
    from_torch = kernels.gaussian_sum(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(b), 0.8)
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    np.testing.assert_array_equal(from_numpy, from_torch.numpy())
    # non-contiguous and float16 inputs are converted
    strided = kernels.gaussian_sum(np.asfortranarray(x), y, b.astype(np.float16), 0.8)
    np.testing.assert_allclose(strided, reference_sum(x, y, b.astype(np.float16), 0.8), atol=1e-5)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((np.zeros((4, 2)), np.zeros((3, 3)), np.zeros((3, 1)), 1.0), ValueError, "'x' must be \\(N, 3\\)"),
        ((np.zeros((4, 3)), np.zeros((3, 3)), np.zeros((2, 1)), 1.0), ValueError, "'b' must be \\(3, D\\)"),
        ((np.zeros((4, 3)), np.zeros((3, 3)), np.zeros((3, 1), np.int64), 1.0), TypeError, "floating point"),
        ((np.zeros((4, 3)), np.zeros((3, 3)), np.zeros((3, 1)), 0.0), ValueError, "'sigma' must be positive"),
        (
            (np.zeros((4, 3)), np.zeros((3, 3)), np.zeros((3, 1)), 1e-200),
            ValueError,
            "'sigma' must be positive",
        ),
        ((np.zeros((4, 3)), np.zeros((3, 3)), np.zeros((3, 1)), "wide"), TypeError, "'sigma' must be a real"),
        (
            (np.full((4, 3), np.nan), np.zeros((3, 3)), np.zeros((3, 1)), 1.0),
            ValueError,
            "'x' has non-finite",
        ),
        ((np.zeros((4, 3)), torch.zeros(3, 3), np.zeros((3, 1)), 1.0), TypeError, "'y' is a torch array"),
        (([[0.0, 0.0, 0.0]], np.zeros((3, 3)), np.zeros((3, 1)), 1.0), TypeError, "'x' must be a numpy"),
    ],
)
def test_bad_inputs_are_named(args, error, match):
    with pytest.raises(error, match=match):
        kernels.gaussian_sum(*args)


def test_gradient_weights_must_match():
    with pytest.raises(ValueError, match="'a' must be \\(4, 2\\)"):
        kernels.gaussian_gradient(np.zeros((4, 3)), np.zeros((5, 3)), np.zeros((4, 3)), np.zeros((5, 2)), 1.0)


@requires_cuda
def test_cuda_matches_cpu(rng):
    x, y = points(rng, 300, 1.5), points(rng, 700, 1.5)
    a, b = (
        rng.standard_normal((300, 20)).astype(np.float32),
        rng.standard_normal((700, 20)).astype(np.float32),
    )
    for dtype in (torch.float32, torch.float64):
        cpu = [torch.from_numpy(t).to(dtype).requires_grad_(True) for t in (x, y, b)]
        gpu = [t.detach().cuda().requires_grad_(True) for t in cpu]
        weights = torch.from_numpy(rng.standard_normal((300, 20))).to(dtype)
        (kernels.gaussian_sum(*cpu, 1.1) * weights).sum().backward()
        out = kernels.gaussian_sum(*gpu, 1.1)
        (out * weights.cuda()).sum().backward()
        tolerance = 1e-4 if dtype == torch.float32 else 1e-10
        np.testing.assert_allclose(
            out.detach().cpu().numpy(),
            kernels.gaussian_sum(*cpu, 1.1).detach().numpy(),
            rtol=tolerance,
            atol=tolerance,
        )
        for c, g in zip(cpu, gpu, strict=True):
            np.testing.assert_allclose(g.grad.cpu().numpy(), c.grad.numpy(), rtol=tolerance, atol=tolerance)
        q, p = (torch.from_numpy(t).to(dtype).cuda() for t in (x, a))
        sums, gradient = kernels.gaussian_sum_and_gradient(q, q, p, p, 0.9)
        np.testing.assert_allclose(
            gradient.cpu().numpy(),
            reference_gradient(x, x, a, a, 0.9),
            rtol=0,
            atol=tolerance * np.abs(reference_gradient(x, x, a, a, 0.9)).max(),
        )
