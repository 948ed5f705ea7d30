"""svfnet.shapes.lddmm: recovery of a known smooth deformation, identity, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from svfnet.shapes.lddmm import LddmmParameters, control_point_grid, geodesic_flow, register_surfaces
from svfnet.shapes.surfaces import Surface, surfaces_from_labels
from tests.shapes_fixtures import SHAPE, SPACING, affine_bend, heart_labels


@pytest.fixture(scope="module")
def template():
    return surfaces_from_labels(heart_labels(), SPACING, target_triangles=2000)


def test_recovers_a_known_smooth_deformation(template):
    centre = np.asarray(SHAPE) * np.asarray(SPACING) / 2
    phi, _ = affine_bend(
        [[1.06, 0.03, 0.0], [-0.02, 0.95, 0.02], [0.0, 0.0, 1.04]], [2.5, -2.0, 3.0], 2.0, centre
    )
    subject = {r: Surface(phi(s.vertices_mm), s.faces) for r, s in template.items()}
    result = register_surfaces(template, subject)
    assert result.distance_reduction > 0.9
    assert set(result.region_distances) == {1, 2, 3, 4}
    vertices = np.concatenate([template[r].vertices_mm for r in sorted(template)])
    truth = phi(vertices)
    initial_error = np.linalg.norm(vertices - truth, axis=1).mean()
    error = np.linalg.norm(result.transform_points(vertices) - truth, axis=1).mean()
    assert initial_error > 3.0
    assert error < SPACING[0]  # below one in-plane voxel
    # the momenta live on a grid over the template, spaced sigma_v apart
    assert result.momenta.shape == result.control_points_mm.shape
    assert np.isfinite(result.momenta).all() and result.kinetic_energy > 0


def test_identity_stays_identity(template):
    parameters = LddmmParameters(max_iterations=10, integrator="euler", time_steps=5)
    result = register_surfaces(template, template, parameters)
    assert result.initial_distance == pytest.approx(
        0.0, abs=1e-3 * np.sqrt(sum(s.area_mm2() for s in template.values()))
    )
    points = np.array([[40.0, 50.0, 48.0], [10.0, 90.0, 0.0]])
    np.testing.assert_allclose(result.transform_points(points), points, atol=1e-3)


def test_control_point_grid_covers_the_box():
    points = np.array([[0.0, 0, 0], [35, 10, 50]])
    grid = control_point_grid(points, 10.0, 5.0)
    spacing = np.diff(np.unique(grid[:, 0]))
    np.testing.assert_allclose(spacing, 10.0)
    assert (grid.min(axis=0) <= points.min(axis=0) - 5.0 + 1e-9).all()
    assert (grid.max(axis=0) >= points.max(axis=0) + 5.0 - 1e-9).all()


def test_bad_inputs(template):
    with pytest.raises(ValueError, match="regions"):
        register_surfaces(template, {1: template[1]})
    with pytest.raises(ValueError, match="degenerate mesh"):
        flat = Surface(np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]]), np.array([[0, 1, 2]]))
        register_surfaces({1: flat}, {1: template[1]})
    # a noise level that makes the data term overflow: the momenta blow up, and it says so
    with pytest.raises(ValueError, match="non-finite .* momenta blew up.*sigma_noise=1e-30"):
        register_surfaces(template, template, LddmmParameters(sigma_noise=1e-30, max_iterations=3))
    for bad in (
        {"sigma_v_mm": 0.0},
        {"sigma_w_mm": float("nan")},
        {"integrator": "rk4"},
        {"time_steps": 0},
        {"dtype": "float16"},
        {"region_weights": {1: -1.0}},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LddmmParameters(**bad)
    with pytest.raises(ValueError, match="points_mm"):
        register_surfaces(template, template, LddmmParameters(max_iterations=0)).transform_points(
            np.zeros((3, 2))
        )


def hamiltonian_flow(control, momenta, points, sigma):
    """The geodesic's flow by SciPy's adaptive RK45 in float64, from Hamilton's equations written
    out: q̇ = K(q,q)p, ṗ_i = (2/σ²) Σ_j (p_i·p_j) k_ij (q_i − q_j), ẋ = K(x,q)p."""
    from scipy.integrate import solve_ivp

    count = len(control)

    def kernel(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / sigma**2)

    def rates(_t, state):
        q, p, x = np.split(state.reshape(-1, 3), [count, 2 * count])
        k = kernel(q, q)
        weights = (p @ p.T) * k
        p_dot = (2 / sigma**2) * (weights.sum(1, keepdims=True) * q - weights @ q)
        return np.concatenate([k @ p, p_dot, kernel(x, q) @ p]).ravel()

    state = np.concatenate([control, momenta, points]).ravel()
    solution = solve_ivp(rates, (0, 1), state, rtol=1e-10, atol=1e-10)
    return solution.y[:, -1].reshape(-1, 3)[2 * count :]


def test_geodesic_flow_rebuilds_the_registration_and_inverts_it(template):
    """From the stored control points and momenta alone: the registration's own transform, the
    continuous flow (to the RK2 steps' accuracy), and an inverse to 1e-3 mm."""
    centre = np.asarray(SHAPE) * np.asarray(SPACING) / 2
    phi, _ = affine_bend([[1.05, 0.0, 0.0], [0.0, 0.96, 0.0], [0.0, 0.0, 1.0]], [2.0, -1.5, 1.0], 1.5, centre)
    subject = {r: Surface(phi(s.vertices_mm), s.faces) for r, s in template.items()}
    parameters = LddmmParameters(max_iterations=5, dtype="float64")
    result = register_surfaces(template, subject, parameters)
    flow = geodesic_flow(result.control_points_mm, result.momenta, parameters)
    points = np.random.default_rng(0).uniform(centre - 40, centre + 40, size=(200, 3))
    moved = flow.transform_points(points)
    np.testing.assert_array_equal(moved, result.transform_points(points))
    assert np.abs(moved - points).max() > 2.0  # it does move them
    exact = hamiltonian_flow(result.control_points_mm, result.momenta, points, parameters.sigma_v_mm)
    assert np.abs(moved - exact).max() < 0.02
    np.testing.assert_allclose(flow.transform_points(flow.inverse_transform_points(moved)), moved, atol=1e-3)
    np.testing.assert_allclose(flow.inverse_transform_points(moved), points, atol=1e-3)
    with pytest.raises(ValueError, match="both be"):
        geodesic_flow(result.control_points_mm, result.momenta[:-1], parameters)
