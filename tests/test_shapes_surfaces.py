"""svfnet.shapes.surfaces: marching-cubes surfaces of label regions, in mm, and mesh files."""

from __future__ import annotations

import numpy as np
import pytest

from svfnet.shapes.currents import triangle_centres_normals
from svfnet.shapes.surfaces import Surface, load_surfaces, save_surfaces, surfaces_from_labels
from tests.shapes_fixtures import SPACING, heart_labels


@pytest.fixture(scope="module")
def heart_surfaces():
    return surfaces_from_labels(heart_labels(), SPACING, target_triangles=3000)


def test_one_closed_outward_surface_per_region(heart_surfaces):
    assert sorted(heart_surfaces) == [1, 2, 3, 4]
    total = sum(s.n_triangles for s in heart_surfaces.values())
    assert 0.8 * 3000 < total < 1.2 * 3000
    for surface in heart_surfaces.values():
        centres, normals = triangle_centres_normals(surface.vertices_mm, surface.faces)
        # closed: area-weighted normals sum to zero; outward: positive flux of (x - centre)
        assert np.abs(normals.sum(axis=0)).max() < 1e-6 * np.abs(normals).sum()
        flux = ((centres - centres.mean(axis=0)) * normals).sum()
        assert flux > 0
        # divergence theorem: flux of x / 3 is the enclosed volume
        assert flux / 3 > 0


def test_volumes_and_positions_in_millimetres(heart_surfaces):
    labels = heart_labels()
    voxel_mm3 = float(np.prod(SPACING))
    for region, labels_inside in ((1, (1,)), (2, (1, 2))):
        surface = heart_surfaces[region]
        centres, normals = triangle_centres_normals(surface.vertices_mm, surface.faces)
        volume = (centres * normals).sum() / 3
        expected = np.isin(labels, labels_inside).sum() * voxel_mm3
        assert volume == pytest.approx(expected, rel=0.12)  # thick slices: the caps are rounded
    # the LV is centred on the grid's centre (voxel (i, j, k) at (i, j, k) · spacing)
    lv = heart_surfaces[1].vertices_mm
    centre = np.array(labels.shape) * np.array(SPACING) / 2  # where heart_labels puts it
    np.testing.assert_allclose((lv.min(axis=0) + lv.max(axis=0)) / 2, centre, atol=2.0)


def test_triangle_count_follows_the_target():
    labels = heart_labels()
    coarse = surfaces_from_labels(labels, SPACING, target_triangles=1000, regions=[1, 2])
    fine = surfaces_from_labels(labels, SPACING, target_triangles=6000, regions=[1, 2])
    assert sorted(coarse) == [1, 2]
    n_coarse = sum(s.n_triangles for s in coarse.values())
    n_fine = sum(s.n_triangles for s in fine.values())
    assert 850 < n_coarse < 1150 and 5100 < n_fine < 6900
    assert coarse[1].area_mm2() == pytest.approx(fine[1].area_mm2(), rel=0.06)


@pytest.mark.parametrize("suffix", [".vtk", ".vtu", ".ply"])
def test_save_and_load_round_trip(tmp_path, heart_surfaces, suffix):
    path = tmp_path / f"heart{suffix}"
    save_surfaces(path, heart_surfaces)
    loaded = load_surfaces(path)
    assert sorted(loaded) == sorted(heart_surfaces)
    for region, surface in heart_surfaces.items():
        assert loaded[region].n_triangles == surface.n_triangles
        np.testing.assert_allclose(
            loaded[region].vertices_mm[loaded[region].faces], surface.vertices_mm[surface.faces], atol=1e-5
        )
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_bad_inputs_give_clear_errors(tmp_path):
    labels = heart_labels(with_rv=False)
    with pytest.raises(
        ValueError, match=r"region 3 \(RV blood pool\) is empty in the label map \(subject s7\)"
    ):
        surfaces_from_labels(labels, SPACING, regions=[1, 3], subject="s7")
    with pytest.raises(ValueError, match="none of the regions"):
        surfaces_from_labels(np.zeros((8, 8, 4), np.uint8), SPACING)
    with pytest.raises(ValueError, match="3D label map"):
        surfaces_from_labels(labels[..., 0], SPACING)
    with pytest.raises(TypeError, match="integer dtype"):
        surfaces_from_labels(labels.astype(np.float32), SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        surfaces_from_labels(labels, (2.0, 0.0, 8.0))
    with pytest.raises(ValueError, match="too thin"):
        single = np.zeros((9, 9, 9), np.uint8)
        single[4, 4, 4] = 1
        surfaces_from_labels(single, (1.0, 1.0, 1.0), smoothing_vox=2.0)
    with pytest.raises(ValueError, match="faces"):
        Surface(np.zeros((3, 3)), np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="mesh files must end"):
        save_surfaces(tmp_path / "heart.txt", Surface(np.eye(3), np.array([[0, 1, 2]])))
