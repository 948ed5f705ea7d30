"""The synthetic cohort: regions, plausible volumes, acquisition, determinism and variability."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfnet.data.nifti import read_nifti
from svfnet.data.readers import load_subject, read_dataset
from svfnet.data.synthetic import OUTLIER_KINDS, generate_cohort, generate_subject, write_synthetic_dataset

N_SUBJECTS = 10


@pytest.fixture(scope="module")
def cohort():
    return list(generate_cohort(N_SUBJECTS, seed=11))


def _volumes_ml(subject) -> dict[int, float]:
    voxel_ml = abs(np.linalg.det(subject.affine[:3, :3])) / 1000.0
    return {region: float(np.count_nonzero(subject.labels == region) * voxel_ml) for region in range(1, 5)}


def test_every_region_is_present_with_a_plausible_volume(cohort):
    for subject in cohort:
        volumes = _volumes_ml(subject)
        assert set(np.unique(subject.labels)) == {0, 1, 2, 3, 4}
        # adult end-diastole; a dilated LV may reach ~300 ml, a small RV ~5 ml
        assert 55 <= volumes[1] <= 350, volumes
        assert 50 <= volumes[2] <= 220, volumes
        assert 3 <= volumes[3] <= 220, volumes
        assert 5 <= volumes[4] <= 80, volumes
        if not subject.anatomy.outlier:
            assert volumes[3] >= 30, volumes
        # the RV myocardium is a thin wall: far less than the LV's
        assert volumes[4] < 0.6 * volumes[2]


def test_acquisition_is_a_thick_slice_short_axis_stack(cohort):
    for subject in cohort:
        assert subject.image.dtype == np.int16 and subject.labels.dtype == np.uint8
        assert subject.image.shape == subject.labels.shape and subject.image.ndim == 3
        spacing = np.linalg.norm(subject.affine[:3, :3], axis=0)
        assert spacing[0] == pytest.approx(spacing[1])
        assert 1.5 <= spacing[0] <= 2.5
        assert 6.0 <= spacing[2] <= 10.0
        # the affine is a rotation times the spacing (no shear)
        rotation = subject.affine[:3, :3] / spacing
        np.testing.assert_allclose(np.abs(rotation.T @ rotation), np.eye(3), atol=1e-9)
        # the whole heart is inside the stack: no label on the first or last slice
        assert not subject.labels[:, :, 0].any() and not subject.labels[:, :, -1].any()


def test_images_look_like_cine_ssfp(cohort):
    for subject in cohort:
        image = subject.image.astype(np.float64)
        blood = image[subject.labels == 1].mean()
        myocardium = image[subject.labels == 2].mean()
        assert blood > 2.0 * myocardium  # bright blood, dark muscle
        # Rician noise: even the air outside the body is not zero
        corner = image[:5, :5, :]
        assert corner.mean() > 0 and corner.std() > 0
        # the blood pool has texture (papillary muscles, trabeculae, noise, bias)
        assert image[subject.labels == 1].std() > 0.03 * blood


def test_same_seed_same_subject_whatever_the_cohort_size():
    first = generate_subject(5, 2)
    again = generate_subject(5, 2)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.affine, again.affine)
    assert first.parameters() == again.parameters()
    third_of_three = list(generate_cohort(3, seed=5))[2]
    np.testing.assert_array_equal(third_of_three.image, first.image)


def test_subjects_vary_across_seeds_and_within_a_cohort(cohort):
    other_seed = generate_subject(12, 0)
    assert other_seed.image.shape != cohort[0].image.shape or not np.array_equal(
        other_seed.image, cohort[0].image
    )
    assert other_seed.parameters() != cohort[0].parameters()

    lv_volumes = np.array([_volumes_ml(s)[1] for s in cohort])
    rv_volumes = np.array([_volumes_ml(s)[3] for s in cohort])
    assert lv_volumes.std() / lv_volumes.mean() > 0.1
    assert rv_volumes.std() / rv_volumes.mean() > 0.1
    assert len({s.image.shape for s in cohort}) > N_SUBJECTS // 2
    assert (
        len({round(float(np.linalg.norm(s.affine[:3, 2])), 3) for s in cohort}) == N_SUBJECTS
    )  # slice thickness
    assert len({s.geometry.apex_first for s in cohort}) == 2  # both slice orders occur
    # the surroundings differ: body size and organ intensities are drawn per subject
    assert len({tuple(s.appearance["body_semi_axes_mm"]) for s in cohort}) == N_SUBJECTS
    wall_angles = [
        np.degrees(np.arctan2(s.geometry.heart_to_stack[1][0], s.geometry.heart_to_stack[0][0]))
        for s in cohort
    ]
    assert np.ptp(wall_angles) > 5.0  # the heart turns in the image plane


def test_outliers_are_dilated_lvs_and_small_rvs(cohort):
    typical = [s for s in cohort if not s.anatomy.outlier]
    drawn = [generate_subject(3, index, outlier_fraction=1.0).anatomy.outlier for index in range(2)]
    assert set(drawn) <= set(OUTLIER_KINDS)
    outliers = [generate_subject(3, index, outlier=kind) for index, kind in enumerate(OUTLIER_KINDS * 2)]
    assert [s.anatomy.outlier for s in outliers] == list(OUTLIER_KINDS * 2)
    typical_lv = np.median([_volumes_ml(s)[1] for s in typical])
    typical_rv = np.median([_volumes_ml(s)[3] for s in typical])
    for subject in outliers:
        volumes = _volumes_ml(subject)
        if subject.anatomy.outlier == "dilated_lv":
            assert volumes[1] > 1.3 * typical_lv
        else:
            assert volumes[3] < 0.5 * typical_rv
    assert all(not s.anatomy.outlier for s in generate_cohort(4, seed=3, outlier_fraction=0.0))


def test_write_synthetic_dataset_is_a_plain_dataset(tmp_path):
    out = tmp_path / "synth"
    written = write_synthetic_dataset(out, 2, seed=4, progress=False)
    assert [p.name for p in written] == ["synth_000.nii.gz", "synth_001.nii.gz"]
    dataset = read_dataset(out)
    assert dataset.layout == "plain" and [s.id for s in dataset] == ["synth_000", "synth_001"]
    subject = load_subject(dataset[1])
    expected = generate_subject(4, 1)
    np.testing.assert_array_equal(subject.labels, expected.labels)
    np.testing.assert_array_equal(read_nifti(out / "synth_001.nii.gz")[0], expected.image)
    np.testing.assert_allclose(subject.affine, expected.affine, atol=1e-4)
    record = json.loads((out / "synth.json").read_text())
    assert record["seed"] == 4 and sorted(record["subjects"]) == ["synth_000", "synth_001"]
    assert record["subjects"]["synth_001"]["anatomy"]["lv_length_mm"] == expected.anatomy.lv_length_mm

    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_dataset(out, 1, progress=False)
    write_synthetic_dataset(out, 1, seed=9, overwrite=True, progress=False)
    assert json.loads((out / "synth.json").read_text())["seed"] == 9


@pytest.mark.parametrize(
    ("n_subjects", "fraction", "message"),
    [(0, 0.1, "n_subjects"), (2.5, 0.1, "n_subjects"), (2, 1.5, "outlier_fraction")],
)
def test_write_synthetic_dataset_rejects_bad_arguments(tmp_path, n_subjects, fraction, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(tmp_path / "out", n_subjects, outlier_fraction=fraction, progress=False)
    assert not (tmp_path / "out").exists()
