"""svfnet.ops.fields against independent float64 references (SciPy, NumPy, RK4 flows, analytic cases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.ndimage import map_coordinates

from svfnet.ops import fields
from tests.conftest import GRIDS, KINDS, as_numpy, grid_positions, sample_clamped, smooth_field, to_kind

kinds = pytest.mark.parametrize("kind,device", KINDS, ids=[f"{k}-{d}" for k, d in KINDS])
grids = pytest.mark.parametrize("grid", GRIDS, ids=["x".join(map(str, g)) for g in GRIDS])


def reference_warp(image: np.ndarray, disp: np.ndarray, order: int, fill: float) -> np.ndarray:
    """SciPy float64: each channel of image (C, *grid) at x + disp(x), fill outside ("grid-constant")."""
    positions = grid_positions(image.shape[1:], disp)
    return np.stack(
        [
            map_coordinates(c.astype(np.float64), positions, order=order, mode="grid-constant", cval=fill)
            for c in image
        ]
    )


# ---------------------------------------------------------------------------------------- warp
@kinds
@grids
@pytest.mark.parametrize("order", [1, 0])
def test_warp_matches_scipy(rng, kind, device, grid, order):
    image = rng.standard_normal((2, *grid)).astype(np.float32)
    disp = smooth_field(rng, grid, amplitude=2.5)  # reaches well outside the grid at the borders
    fill = -0.75
    out = fields.warp(to_kind(image, kind, device), to_kind(disp, kind, device), order=order, fill=fill)
    assert type(out) is type(to_kind(image, kind, device)) and out.dtype in (np.float32, torch.float32)
    assert tuple(out.shape) == image.shape
    expected = reference_warp(image, disp, order, fill)
    if order == 1:
        np.testing.assert_allclose(as_numpy(out), expected, atol=2e-6, rtol=0)
    else:
        # nearest: positions a rounding error from a half voxel may round either way
        positions = grid_positions(grid, disp)
        tie = np.any(np.abs(positions - np.floor(positions) - 0.5) < 1e-5, axis=0)
        np.testing.assert_array_equal(as_numpy(out)[:, ~tie], expected[:, ~tie])


@kinds
def test_warp_shapes_unbatched_batched_agree(rng, kind, device):
    grid = (5, 6, 7)
    images = rng.random((3, 2, *grid)).astype(np.float32)
    disps = np.stack([smooth_field(rng, grid, 1.5) for _ in range(3)])
    batched = as_numpy(fields.warp(to_kind(images, kind, device), to_kind(disps, kind, device)))
    for n in range(3):
        one = fields.warp(to_kind(images[n], kind, device), to_kind(disps[n], kind, device))
        np.testing.assert_array_equal(as_numpy(one), batched[n])
        single = fields.warp(to_kind(images[n, 0], kind, device), to_kind(disps[n], kind, device))
        assert tuple(single.shape) == grid
        np.testing.assert_array_equal(as_numpy(single), batched[n, 0])


def test_warp_converts_integer_images_and_identity_is_exact(rng):
    image = rng.integers(-300, 3000, size=(5, 6, 7)).astype(np.int16)
    out = fields.warp(image, np.zeros((3, 5, 6, 7), np.float32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_warp_integer_shift_is_exact(rng):
    image = rng.random((5, 6, 7)).astype(np.float32)
    disp = np.zeros((3, 5, 6, 7), np.float32)
    disp[0], disp[2] = 1.0, -2.0  # out[i, j, k] = image[i + 1, j, k - 2]
    out = fields.warp(image, disp)
    np.testing.assert_array_equal(out[:-1, :, 2:], image[1:, :, :-2])
    np.testing.assert_array_equal(out[-1], 0.0)
    np.testing.assert_array_equal(out[:, :, :2], 0.0)


# ---------------------------------------------------------------------------------------- labels
@kinds
@grids
def test_warp_labels_nearest_matches_scipy(rng, kind, device, grid):
    labels = rng.integers(0, 5, size=grid).astype(np.uint8)
    disp = smooth_field(rng, grid, amplitude=2.0)
    out = fields.warp_labels(to_kind(labels, kind, device), to_kind(disp, kind, device), mode="nearest")
    assert out.dtype == (torch.uint8 if kind == "torch" else np.uint8)
    positions = grid_positions(grid, disp)
    expected = map_coordinates(labels, positions, order=0, mode="grid-constant", cval=0)
    tie = np.any(np.abs(positions - np.floor(positions) - 0.5) < 1e-5, axis=0)
    np.testing.assert_array_equal(as_numpy(out)[~tie], expected[~tie])


@kinds
@grids
@pytest.mark.parametrize("fill", [0, 7])
def test_warp_labels_onehot_is_argmax_of_interpolated_indicators(rng, kind, device, grid, fill):
    labels = rng.choice(np.array([0, 2, 3, 9]), size=grid).astype(np.int64)
    disp = smooth_field(rng, grid, amplitude=2.0)
    out = as_numpy(
        fields.warp_labels(
            to_kind(labels, kind, device), to_kind(disp, kind, device), mode="onehot", fill=fill
        )
    )
    positions = grid_positions(grid, disp)
    values = np.union1d(np.unique(labels), [fill])
    indicators = np.stack(
        [
            map_coordinates(
                (labels == value).astype(np.float64),
                positions,
                order=1,
                mode="grid-constant",
                cval=float(value == fill),
            )
            for value in values
        ]
    )
    expected = values[np.argmax(indicators, axis=0)]
    top2 = np.sort(indicators, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5  # float32 may break a near-tie either way
    np.testing.assert_array_equal(out[clear], expected[clear])
    assert clear.mean() > 0.9


def test_warp_labels_batched_with_channel_axis(rng):
    grid = (5, 6, 7)
    labels = rng.integers(0, 4, size=(2, 1, *grid)).astype(np.int32)
    disps = np.stack([smooth_field(rng, grid, 1.0) for _ in range(2)])
    out = fields.warp_labels(labels, disps, mode="onehot")
    assert out.shape == labels.shape
    for n in range(2):
        np.testing.assert_array_equal(out[n, 0], fields.warp_labels(labels[n, 0], disps[n], mode="onehot"))
    np.testing.assert_array_equal(
        fields.warp_labels(labels[:, 0], disps), fields.warp_labels(labels, disps)[:, 0]
    )


# ---------------------------------------------------------------------------------------- compose
@kinds
@grids
def test_compose_matches_scipy(rng, kind, device, grid):
    u = smooth_field(rng, grid, amplitude=2.0)
    w = smooth_field(rng, grid, amplitude=2.0)
    out = fields.compose(to_kind(u, kind, device), to_kind(w, kind, device))
    expected = w + sample_clamped(u, grid_positions(grid, w))
    np.testing.assert_allclose(as_numpy(out), expected, atol=5e-6, rtol=0)


def test_compose_batched_and_identity(rng):
    grid = (5, 6, 7)
    u = np.stack([smooth_field(rng, grid, 1.0) for _ in range(2)])
    w = np.stack([smooth_field(rng, grid, 1.0) for _ in range(2)])
    batched = fields.compose(u, w)
    for n in range(2):
        np.testing.assert_array_equal(batched[n], fields.compose(u[n], w[n]))
    zero = np.zeros_like(u[0])
    np.testing.assert_allclose(fields.compose(u[0], zero), u[0], atol=1e-7)
    np.testing.assert_allclose(fields.compose(zero, u[0]), u[0], atol=1e-7)


# ---------------------------------------------------------------------------------------- exp
def reference_flow(v: np.ndarray) -> np.ndarray:
    """Displacement after unit time of the flow of dx/dt = v(x) (v trilinear, clamped), RK45 in float64."""
    grid = v.shape[1:]
    start = np.indices(grid, dtype=np.float64).reshape(3, -1)
    count = start.shape[1]

    def velocity(_, flat):
        return sample_clamped(v, flat.reshape(3, count)).reshape(-1)

    solution = solve_ivp(velocity, (0.0, 1.0), start.reshape(-1), rtol=1e-9, atol=1e-9, method="RK45")
    return (solution.y[:, -1].reshape(3, count) - start).reshape(3, *grid)


@kinds
@grids
def test_exp_matches_integrated_flow(rng, kind, device, grid):
    v = smooth_field(rng, grid, amplitude=1.5, sigma=2.5)
    out = as_numpy(fields.exp(to_kind(v, kind, device), steps=10))
    expected = reference_flow(v)
    error = np.linalg.norm(out - expected, axis=0)
    # scaling and squaring resamples the field at every step: a small discretisation error remains
    assert error.max() < 0.08 and error.mean() < 0.015, (error.max(), error.mean())


def test_exp_default_steps_rule(rng):
    assert fields.exp_steps(0.0) == 4
    assert fields.exp_steps(8.0) == 4  # 8 / 16 = 0.5
    assert fields.exp_steps(8.01) == 5
    assert fields.exp_steps(100.0) == 8  # 100 / 256 <= 0.5 < 100 / 128
    v = smooth_field(rng, (5, 6, 7), amplitude=30.0)
    np.testing.assert_array_equal(
        fields.exp(v), fields.exp(v, steps=fields.exp_steps(float(np.linalg.norm(v, axis=0).max())))
    )


@kinds
def test_exp_of_constant_field_is_exact_translation(kind, device):
    v = np.zeros((3, 5, 6, 7), np.float32)
    v[0], v[1], v[2] = 0.75, -2.5, 1.25
    out = as_numpy(fields.exp(to_kind(v, kind, device)))
    np.testing.assert_allclose(out, v, atol=1e-6, rtol=0)


def test_exp_steps_zero_copies_and_batched_matches(rng):
    v = np.stack([smooth_field(rng, (5, 6, 7), 1.0) for _ in range(3)])
    np.testing.assert_array_equal(fields.exp(v, steps=0), v)
    batched = fields.exp(v, steps=6)
    for n in range(3):
        np.testing.assert_array_equal(batched[n], fields.exp(v[n], steps=6))


def test_exp_of_negative_is_inverse(rng):
    v = smooth_field(rng, (16, 14, 12), amplitude=2.0, sigma=4.0)
    forward, backward = fields.exp(v), fields.exp(-v)
    identity = fields.compose(forward, backward)  # φ_v ∘ φ_-v = id
    # Near the border the squarings read the fields clamped rather than along the flow: the
    # inverse holds in the deep interior (3 voxels in), and on average everywhere.
    error = np.linalg.norm(identity, axis=0)
    assert error[3:-3, 3:-3, 3:-3].max() < 0.03 and error.mean() < 0.02, (
        error[3:-3, 3:-3, 3:-3].max(),
        error.mean(),
    )


# ------------------------------------------------------------------------------ exp's gradient
def torch_exp(v: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring with torch's grid_sample (border padding = our clamped reads), float64,
    differentiable by autograd: the reference for the adjoint of our exp."""
    grid = v.shape[2:]
    base = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=v.dtype) for n in grid], indexing="ij"))[None]
    extent = torch.tensor([n - 1 for n in grid], dtype=v.dtype).view(1, 3, 1, 1, 1)
    u = v / 2**steps
    for _ in range(steps):
        position = (2 * (base + u) / extent - 1).permute(0, 2, 3, 4, 1).flip(-1)  # (x, y, z) = (k, j, i)
        u = u + torch.nn.functional.grid_sample(u, position, padding_mode="border", align_corners=True)
    return u


def exp_and_gradient(kind, device, v: np.ndarray, grad_exp: np.ndarray):
    """Our exp(v) and ∂L/∂v for L = <grad_exp, exp(v)>, through the compiled levels and adjoint."""
    from svfnet.ops.backend import backend_of

    backend = backend_of("test", v=to_kind(v, kind, device))
    v5 = backend.to_compute("test", "v", to_kind(v, kind, device), "float32")
    g5 = backend.to_compute("test", "g", to_kind(grad_exp, kind, device), "float32")
    levels, exp_v, steps = fields.exp_batched_with_levels(backend, v5)
    return as_numpy(exp_v), as_numpy(fields.exp_batched_vjp(backend, v5, levels, g5, steps)), steps


@kinds
@pytest.mark.parametrize("grid,amplitude", [((7, 6, 5), 2.0), ((9, 8, 4), 6.0)])
def test_exp_gradient_matches_torch_autograd(rng, kind, device, grid, amplitude):
    """The adjoint of scaling and squaring (used by the logarithm's polishing) against autograd
    through torch's grid_sample in float64, on random fields that reach outside the grid."""
    v = (rng.standard_normal((2, 3, *grid)) * amplitude).astype(np.float32)
    grad_exp = rng.standard_normal(v.shape).astype(np.float32)
    exp_v, grad_v, steps = exp_and_gradient(kind, device, v, grad_exp)
    v_ref = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    exp_ref = torch_exp(v_ref, steps)
    (exp_ref * torch.tensor(grad_exp, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(exp_v, exp_ref.detach().numpy(), atol=2e-5 * amplitude, rtol=0)
    # everywhere but the odd voxel whose float32 position falls on the other side of a cell edge
    # than in float64, where the trilinear derivative jumps (a few in 10⁵ on large fields)
    expected = v_ref.grad.numpy()
    error = np.abs(grad_v - expected) / np.abs(expected).max()
    assert np.mean(error <= 1e-5) > 0.999 and error.max() < 0.05, (np.mean(error <= 1e-5), error.max())
    np.testing.assert_array_equal(exp_v, as_numpy(fields.exp(to_kind(v, kind, device))))  # the same exp


def test_exp_gradient_on_a_single_slice_matches_finite_differences(rng):
    """Along an axis of one voxel every position reads that slice (torch cannot sample it with
    align_corners): the directional derivative against central differences of our own exp."""
    v = smooth_field(rng, (8, 7, 1), amplitude=2.0, batch=1)
    v[:, 2] = 0.3  # a displacement across the single slice, which every position reads whole
    grad_exp = rng.standard_normal(v.shape).astype(np.float32)
    _, grad_v, steps = exp_and_gradient("numpy", "cpu", v, grad_exp)
    assert np.isfinite(grad_v).all()
    direction = smooth_field(rng, (8, 7, 1), amplitude=1.0, batch=1)
    eps = 1e-2

    def loss(x):
        return float(np.sum(grad_exp.astype(np.float64) * fields.exp(x.astype(np.float32), steps=steps)))

    numeric = (loss(v + eps * direction) - loss(v - eps * direction)) / (2 * eps)
    assert float(np.sum(grad_v.astype(np.float64) * direction)) == pytest.approx(numeric, rel=1e-2)


# ---------------------------------------------------------------------------------------- log
@kinds
@grids
def test_log_inverts_exp(rng, kind, device, grid):
    v = smooth_field(rng, grid, amplitude=1.5, sigma=2.5)
    u = fields.exp(to_kind(v, kind, device))
    logged, info = fields.log(u, tol=1e-3, return_info=True)
    assert info.converged and info.residual_max <= 1e-3 and info.residual_mean <= info.residual_max
    # the residual is measured, not assumed: over the voxels that id + u maps into the grid, and everywhere
    u_np = as_numpy(u)
    residual = np.linalg.norm(as_numpy(fields.exp(logged)) - u_np, axis=0)
    domain = lands_inside(u_np)
    np.testing.assert_allclose(residual[domain].max(), info.residual_max, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(residual[domain].mean(), info.residual_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(residual.max(), info.residual_max_grid, rtol=1e-4, atol=1e-6)
    assert info.domain_fraction == pytest.approx(domain.mean())
    assert np.abs(as_numpy(logged) - v).max() < 0.02


def lands_inside(u: np.ndarray) -> np.ndarray:
    """Voxels x with x + u(x) in [0, n-1] on every axis longer than one voxel (NumPy reference)."""
    grid = np.array(u.shape[1:])
    target = grid_positions(tuple(grid), u)
    inside = (target >= 0) & (target <= (grid - 1).reshape(3, 1, 1, 1))
    return np.all(inside | (grid == 1).reshape(3, 1, 1, 1), axis=0)


def test_residual_statistics_over_the_voxels_mapped_into_the_grid(rng):
    """The compiled reduction behind the logarithm's residual, against NumPy on random fields."""
    from svfnet import _core

    u = (rng.standard_normal((2, 3, 9, 8, 7)) * 3).astype(np.float32)
    field = rng.standard_normal((2, 3, 9, 8, 7)).astype(np.float32)
    largest, mean, count = _core.norm_stats_within_cpu(field, u, 2)
    norms = np.linalg.norm(field.astype(np.float64), axis=1)
    domain = np.stack([lands_inside(u[n]) for n in range(2)])
    assert 0 < count == domain.sum() < domain.size
    assert largest == pytest.approx(norms[domain].max(), rel=1e-6)
    assert mean == pytest.approx(norms[domain].mean(), rel=1e-5)
    per_voxel = np.empty((2, 1, 9, 8, 7), np.float32)
    _core.norm_within_cpu(field, u, per_voxel, 2)
    np.testing.assert_allclose(per_voxel[:, 0], np.where(domain, norms, 0), rtol=1e-6, atol=0)


def test_log_measures_its_residual_where_the_map_stays_in_the_grid(rng):
    """An outward stretch at the border cannot be reached by exp of a clamped SVF (a trajectory that
    leaves the grid moves rigidly): the logarithm converges where x + u(x) stays in the grid and
    reports the rest as residual_max_grid."""
    grid = (24, 24, 10)
    x = np.indices(grid, dtype=np.float64)
    centre = (np.array(grid) - 1).reshape(3, 1, 1, 1) / 2
    u = (0.25 * (x - centre)).astype(np.float32)  # a 25% expansion about the centre
    u[2] = 0
    with pytest.warns(fields.LogConvergenceWarning):
        fields.log(u, tol=1e-3, max_iter=1)
    v, info = fields.log(u, tol=0.05, max_iter=12, return_info=True)
    assert info.converged and info.residual_max <= 0.05, info
    assert info.residual_max_grid > 10 * info.residual_max, info  # the outer ring has no logarithm
    assert 0.5 < info.domain_fraction < 1
    # and the solution is the analytic one in the interior: v = log(1.25) (x - c)
    exact = np.log(1.25) * (x - centre)
    interior = (slice(None), slice(6, -6), slice(6, -6), slice(None))
    assert np.abs(v[interior][:2] - exact[interior][:2]).max() < 0.05


def test_log_converges_faster_than_plain_fixed_point(rng):
    """The Jacobian-corrected BCH step is there for speed: after as many iterations, its residual is
    far below that of the plain fixed point v <- v + (u - exp(v))."""
    v = smooth_field(rng, (32, 32, 12), amplitude=4.0, sigma=4.0)
    u = fields.exp(v)
    with pytest.warns(fields.LogConvergenceWarning):
        _, info = fields.log(u, tol=1e-9, max_iter=4, return_info=True)
    plain = u.copy()
    for _ in range(4):
        plain = plain + (u - fields.exp(plain))
    plain_residual = np.linalg.norm(fields.exp(plain) - u, axis=0)
    assert info.iterations == 4
    assert info.residual_mean < 0.5 * plain_residual.mean(), (info.residual_mean, plain_residual.mean())


def stalling_exponential(seed: int) -> np.ndarray:
    """exp of a large smooth SVF on a thin grid (8 voxels of amplitude over 8 slices, as cardiac
    volumes are thin): for seeds 1, 18 and 32 the fixed-point steps of log stall above 0.05 voxel."""
    return fields.exp(smooth_field(np.random.default_rng(seed), (32, 32, 8), amplitude=8.0, sigma=3.0))


@kinds
@pytest.mark.parametrize("seed", [1, 18, 32])
def test_log_polishes_where_the_fixed_point_steps_stall(kind, device, seed):
    """There the BCH and plain steps stop lowering the residual above the tolerance, and the
    gradient steps (the polishing) take it below. Checked with NumPy against the returned v."""
    u = stalling_exponential(seed)
    logged, info = fields.log(to_kind(u, kind, device), tol=0.05, max_iter=40, return_info=True)
    assert info.polish_iterations > 0 and info.converged, info
    residual = np.linalg.norm(fields.exp(as_numpy(logged)).astype(np.float64) - u, axis=0)[lands_inside(u)]
    assert residual.max() <= 0.05 and residual.mean() <= 0.005


def test_log_polishes_a_batch_as_one():
    u = np.stack([stalling_exponential(1), stalling_exponential(18)])
    logged, info = fields.log(u, tol=0.05, max_iter=40, return_info=True)
    assert info.polish_iterations > 0 and info.converged, info
    for n in range(2):
        residual = np.linalg.norm(fields.exp(logged[n]).astype(np.float64) - u[n], axis=0)[lands_inside(u[n])]
        assert residual.max() <= 0.05


def test_log_of_a_map_that_leaves_the_grid_everywhere_warns():
    """No voxel lands in the grid: the residual falls back to every voxel, nothing is polished."""
    u = (np.random.default_rng(0).standard_normal((3, 6, 6, 6)) * 2 + 50).astype(np.float32)
    with pytest.warns(fields.LogConvergenceWarning):
        _, info = fields.log(u, return_info=True)
    assert info.domain_fraction == 0 and info.polish_iterations == 0 and not info.converged


def test_log_warns_or_raises_when_it_cannot_converge(rng):
    u = (rng.standard_normal((3, 6, 6, 6)) * 2.0).astype(np.float32)  # folds everywhere: no logarithm
    with pytest.warns(fields.LogConvergenceWarning, match="residual"):
        _, info = fields.log(u, max_iter=5, return_info=True)
    assert not info.converged and info.iterations <= 5
    with pytest.raises(fields.LogNotConverged, match="above tol"):
        fields.log(u, max_iter=5, strict=True)


def test_log_starts_from_initial(rng):
    """``initial`` is where the iteration starts: the exact logarithm is returned as is (no
    iteration), and the second-order start (u − u⁻¹)/2 (u⁻¹ the inverse's displacement, here
    exp(−v)) is nearer than u itself; a start of another shape is refused, naming it."""
    v = smooth_field(rng, (20, 18, 8), amplitude=3.0, sigma=3.0)
    u, inverse = fields.exp(v), fields.exp(-v)
    exact_start, info = fields.log(u, tol=0.05, return_info=True, initial=fields.log(u, tol=1e-4))
    assert info.iterations == 0 and info.converged
    symmetric = 0.5 * (u - inverse)
    residual = {
        name: np.linalg.norm(fields.exp(start) - u, axis=0)[lands_inside(u)].mean()
        for name, start in (("u", u), ("symmetric", symmetric))
    }
    assert residual["symmetric"] < 0.6 * residual["u"], residual
    logged, info = fields.log(u, tol=0.05, return_info=True, initial=symmetric)
    assert info.converged
    assert np.linalg.norm(fields.exp(logged) - u, axis=0)[lands_inside(u)].max() <= 0.05
    with pytest.raises(ValueError, match="'initial'"):
        fields.log(u, initial=symmetric[:, :-1])


def test_log_of_zero_is_zero():
    zero = np.zeros((3, 4, 5, 6), np.float32)
    out, info = fields.log(zero, return_info=True)
    assert info.iterations == 0 and info.converged
    np.testing.assert_array_equal(out, zero)


# ---------------------------------------------------------------------------------------- jacobian
def reference_jacobian_det(u: np.ndarray, spacing) -> np.ndarray:
    """det(I + ∇u) of the map in millimetres, NumPy float64 gradients."""
    grid = u.shape[1:]
    u_mm = u.astype(np.float64) * np.asarray(spacing).reshape(3, 1, 1, 1)
    matrix = np.zeros((*grid, 3, 3))
    for c in range(3):
        for a in range(3):
            if grid[a] > 1:
                matrix[..., c, a] = np.gradient(u_mm[c], spacing[a], axis=a, edge_order=1)
    return np.linalg.det(matrix + np.eye(3))


@kinds
@grids
def test_jacobian_det_matches_numpy(rng, kind, device, grid):
    u = smooth_field(rng, grid, amplitude=1.5)
    spacing = (1.8, 1.25, 8.0)
    out = fields.jacobian_det(to_kind(u, kind, device), spacing)
    assert tuple(out.shape) == grid
    np.testing.assert_allclose(as_numpy(out), reference_jacobian_det(u, spacing), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(as_numpy(out), as_numpy(fields.jacobian_det(to_kind(u, kind, device))))


def test_jacobian_det_of_affine_field_is_analytic(rng):
    grid = (5, 6, 7)
    matrix = rng.uniform(-0.3, 0.3, size=(3, 3))
    x = np.indices(grid, dtype=np.float64)
    u = (np.einsum("ca,a...->c...", matrix, x) + rng.uniform(-2, 2, size=(3, 1, 1, 1))).astype(np.float32)
    det = fields.jacobian_det(u)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + matrix), rtol=1e-4)
    batched = fields.jacobian_det(np.stack([u, -u]))
    assert batched.shape == (2, *grid)
    np.testing.assert_allclose(batched[1], np.linalg.det(np.eye(3) - matrix), rtol=1e-4)


def test_lie_bracket_of_linear_fields_is_the_commutator(rng):
    grid = (6, 5, 7)
    a, b = rng.uniform(-0.5, 0.5, size=(2, 3, 3))
    x = np.indices(grid, dtype=np.float64)
    v = np.einsum("ca,a...->c...", a, x).astype(np.float32)
    w = np.einsum("ca,a...->c...", b, x).astype(np.float32)
    expected = np.einsum("ca,a...->c...", a @ b - b @ a, x)  # (∇v)w − (∇w)v = (AB − BA)x
    np.testing.assert_allclose(fields.lie_bracket(v, w), expected, atol=5e-5)


# ---------------------------------------------------------------------------------------- bad input
def test_bad_inputs_name_function_and_argument():
    grid = (5, 6, 7)
    field = np.zeros((3, *grid), np.float32)
    image = np.zeros(grid, np.float32)
    with pytest.raises(ValueError, match=r"warp\(\): 'disp' must be \(3, I, J, K\)"):
        fields.warp(image, np.zeros((2, *grid), np.float32))
    with pytest.raises(ValueError, match=r"warp\(\): 'image' .* same grid"):
        fields.warp(np.zeros((5, 6, 8), np.float32), field)
    with pytest.raises(ValueError, match=r"warp\(\): 'image' .* does not go with 'disp'"):
        fields.warp(np.zeros((1, 1, *grid), np.float32), field)
    with pytest.raises(ValueError, match=r"warp\(\): 'image' .* same batch size"):
        fields.warp(np.zeros((2, 1, *grid), np.float32), np.zeros((3, 3, *grid), np.float32))
    with pytest.raises(ValueError, match=r"warp\(\): 'order'"):
        fields.warp(image, field, order=3)
    with pytest.raises(ValueError, match=r"warp\(\): 'fill' must be finite"):
        fields.warp(image, field, fill=np.nan)
    with pytest.raises(TypeError, match=r"warp\(\): 'disp' must have a float dtype"):
        fields.warp(image, field.astype(np.int32))
    with pytest.raises(TypeError, match=r"warp\(\): 'image' must be a numpy.ndarray"):
        fields.warp(image.tolist(), field)
    with pytest.raises(TypeError, match=r"warp\(\): 'disp' \(torch on cpu\) and 'image' \(numpy\)"):
        fields.warp(image, torch.from_numpy(field))
    nan_field = field.copy()
    nan_field[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"compose\(\): 'w' has 1 non-finite"):
        fields.compose(field, nan_field)
    with pytest.raises(ValueError, match=r"warp\(\): 'image' has 1 non-finite"):
        fields.warp(np.where(np.isnan(nan_field[1]), np.inf, 0.0), field)
    with pytest.raises(ValueError, match=r"compose\(\): 'u' \(3, 5, 6, 7\) and 'w' \(3, 5, 6, 8\)"):
        fields.compose(field, np.zeros((3, 5, 6, 8), np.float32))
    with pytest.raises(ValueError, match=r"exp\(\): 'steps' must be an integer >= 0"):
        fields.exp(field, steps=-1)
    with pytest.raises(ValueError, match=r"exp\(\): 'v' must not be empty"):
        fields.exp(np.zeros((3, 0, 6, 7), np.float32))
    with pytest.raises(ValueError, match=r"log\(\): 'tol' must be > 0"):
        fields.log(field, tol=0)
    with pytest.raises(ValueError, match=r"jacobian_det\(\): 'spacing'"):
        fields.jacobian_det(field, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"warp_labels\(\): 'mode'"):
        fields.warp_labels(image.astype(np.int32), field, mode="linear")
    with pytest.raises(TypeError, match=r"warp_labels\(\): 'labels' must have a int or bool dtype"):
        fields.warp_labels(image, field)
    with pytest.raises(ValueError, match=r"warp_labels\(\): 'labels' values must fit in int32"):
        fields.warp_labels(np.full(grid, 2**40, np.int64), field)
    with pytest.raises(ValueError, match=r"exp\(\): 'v' requires grad"):
        fields.exp(torch.zeros((3, *grid), requires_grad=True))


def test_outputs_never_alias_inputs(rng):
    v = smooth_field(rng, (5, 6, 7), 1.0)
    kept = v.copy()
    for result in (fields.exp(v), fields.compose(v, v), fields.warp(v, v), fields.log(v)):
        assert not np.shares_memory(result, v)
    np.testing.assert_array_equal(v, kept)
