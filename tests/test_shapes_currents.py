"""svfnet.shapes.currents against a float64 NumPy reference, and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfnet.shapes.currents import currents_distance, currents_inner, triangle_centres_normals
from svfnet.shapes.surfaces import Surface, surfaces_from_labels
from tests.shapes_fixtures import SPACING, heart_labels


@pytest.fixture(scope="module")
def heart():
    return surfaces_from_labels(heart_labels(), SPACING, target_triangles=2000, regions=[1, 2])


def reference_inner(a: Surface, b: Surface, sigma: float) -> float:
    ca, na = triangle_centres_normals(a.vertices_mm, a.faces)
    cb, nb = triangle_centres_normals(b.vertices_mm, b.faces)
    k = np.exp(-((ca[:, None] - cb[None]) ** 2).sum(-1) / sigma**2)
    return float((k * (na @ nb.T)).sum())


def test_triangle_centres_and_normals():
    vertices = np.array([[0.0, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 4]])
    faces = np.array([[0, 1, 2], [0, 3, 1]])
    centres, normals = triangle_centres_normals(vertices, faces)
    np.testing.assert_allclose(centres, [[2 / 3, 1, 0], [2 / 3, 0, 4 / 3]])
    np.testing.assert_allclose(normals, [[0, 0, 3], [0, 4, 0]])


def test_inner_product_matches_numpy(heart):
    a, b = heart[1], heart[2]
    assert currents_inner(a, b, 6.0) == pytest.approx(reference_inner(a, b, 6.0), rel=1e-5)
    as_torch = (torch.from_numpy(a.vertices_mm), a.faces)
    value = currents_inner(as_torch, (torch.from_numpy(b.vertices_mm), b.faces), 6.0)
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float64
    assert float(value) == pytest.approx(reference_inner(a, b, 6.0), rel=1e-10)


def test_distance_to_itself_is_zero_and_to_a_shift_is_not(heart):
    assert currents_distance(heart, heart, 8.0) == 0.0
    shifted = {r: Surface(s.vertices_mm + [3.0, 0, 0], s.faces) for r, s in heart.items()}
    d_shift = currents_distance(heart, shifted, 8.0)
    norm = np.sqrt(sum(reference_inner(s, s, 8.0) for s in heart.values()))
    assert 0.1 * norm < d_shift < norm
    # squared, weighted sum over regions
    d2 = {r: currents_distance(heart[r], shifted[r], 8.0, squared=True) for r in heart}
    weighted = currents_distance(heart, shifted, 8.0, weights={1: 2.0, 2: 0.5}, squared=True)
    assert weighted == pytest.approx(2.0 * d2[1] + 0.5 * d2[2], rel=1e-6)


def test_distance_is_nearly_invariant_to_retriangulation(heart):
    finer = surfaces_from_labels(heart_labels(), SPACING, target_triangles=7000, regions=[1, 2])
    shifted = {r: Surface(s.vertices_mm + [3.0, 0, 0], s.faces) for r, s in heart.items()}
    norm = np.sqrt(sum(reference_inner(s, s, 8.0) for s in heart.values()))
    retriangulated = currents_distance(heart, finer, 8.0)
    assert retriangulated < 0.1 * norm  # discretisation only
    assert retriangulated < 0.5 * currents_distance(heart, shifted, 8.0)


def test_distance_is_differentiable_in_vertices(heart):
    surface = heart[1]
    target = Surface(surface.vertices_mm * 1.05, surface.faces)
    vertices = torch.tensor(surface.vertices_mm, requires_grad=True)
    func = lambda v: currents_distance((v, surface.faces), target, 8.0, squared=True, dtype=torch.float64)  # noqa: E731
    value = func(vertices)
    value.backward()
    direction = torch.from_numpy(np.random.default_rng(0).standard_normal(vertices.shape))
    step = 1e-4
    numeric = (func(vertices.detach() + step * direction) - func(vertices.detach() - step * direction)) / (
        2 * step
    )
    assert float((vertices.grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5)


def test_bad_inputs(heart):
    with pytest.raises(ValueError, match="regions"):
        currents_distance(heart, {1: heart[1]}, 8.0)
    with pytest.raises(ValueError, match="degenerate mesh"):
        flat = Surface(np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]), np.array([[0, 1, 2]]))
        currents_distance(flat, heart[1], 8.0)
    with pytest.raises(ValueError, match="no triangles"):
        triangle_centres_normals(np.zeros((3, 3)), np.zeros((0, 3), np.int64))
    with pytest.raises(ValueError, match="sigma_mm"):
        currents_distance(heart, heart, -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        currents_distance((np.full((3, 3), np.nan), np.array([[0, 1, 2]])), heart[1], 8.0)
    with pytest.raises(TypeError, match="both be surfaces"):
        currents_distance(heart, heart[1], 8.0)
