"""The synthetic cohort: regions, plausible volumes, acquisition, determinism and variability.

The clinical cohort (``realism="clinical"``): acquisition ranges, partial coverage, slice offsets
carried by image and labels, ACDC's groups, every header style read by SimpleITK as recorded.
"""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from svfnet.cli import main
from svfnet.commands import synth as synth_command
from svfnet.data.nifti import read_nifti
from svfnet.data.readers import load_subject, read_dataset
from svfnet.data.synthetic import (
    generate_cohort,
    generate_subject,
    write_synthetic_dataset,
)
from svfnet.data.synthetic_anatomy import GROUPS, OUTLIER_KINDS
from svfnet.data.synthetic_headers import HEADER_STYLES

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


# ----------------------------------------------------------------------------- the clinical cohort
N_CLINICAL = 8


@pytest.fixture(scope="module")
def clinical():
    return list(generate_cohort(N_CLINICAL, seed=28, realism="clinical"))


def _base_first(subject) -> np.ndarray:
    """The labels with the basal slice first."""
    return subject.labels[:, :, ::-1] if subject.geometry.apex_first else subject.labels


def _itk_affine(path) -> np.ndarray:
    """The voxel → RAS+ affine SimpleITK reads (its spacing, direction and origin are LPS)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    return affine


def _wall_thickness_mm(slice_labels: np.ndarray, in_plane_mm: float, n_rays: int = 48) -> np.ndarray:
    """LV myocardial thickness along rays from the blood-pool centroid of one slice (mm)."""
    centre = np.argwhere(slice_labels == 1).mean(axis=0)
    thickness = []
    for angle in np.linspace(0.0, 2.0 * np.pi, n_rays, endpoint=False):
        direction = np.array([np.cos(angle), np.sin(angle)])
        steps = np.arange(0.0, max(slice_labels.shape), 0.25)
        points = np.rint(centre + steps[:, None] * direction).astype(int)
        inside = np.all((points >= 0) & (points < slice_labels.shape), axis=1)
        values = slice_labels[points[inside, 0], points[inside, 1]]
        left_blood = np.flatnonzero(values != 1)
        if not left_blood.size or values[left_blood[0]] != 2:
            continue
        after = np.flatnonzero(values[left_blood[0] :] != 2)
        if after.size:
            thickness.append(after[0] * 0.25 * in_plane_mm)
    return np.array(thickness)


def test_clinical_acquisition_is_varied_and_bounded(clinical):
    for subject in clinical:
        assert subject.realism == "clinical" and subject.anatomy.group in GROUPS
        assert subject.image.dtype == np.int16 and subject.labels.dtype == np.uint8
        assert subject.image.shape == subject.labels.shape
        assert subject.image.size <= 3_000_000
        spacing = np.linalg.norm(subject.affine[:3, :3], axis=0)
        assert spacing[0] == pytest.approx(spacing[1])
        assert 0.7 <= spacing[0] <= 2.0 and 5.0 <= spacing[2] <= 10.0
        assert set(np.unique(subject.labels)) == {0, 1, 2, 3, 4}
        image = subject.image.astype(np.float64)
        assert image[subject.labels == 1].mean() > 1.5 * image[subject.labels == 2].mean()
    shapes = [s.image.shape for s in clinical]
    assert any(i != j for i, j, _ in shapes)  # rectangular fields of view
    assert len(set(shapes)) == N_CLINICAL
    pixels = [s.geometry.in_plane_mm for s in clinical]
    assert min(pixels) < 1.2 and max(pixels) > 1.5
    fields_of_view = [s.geometry.in_plane_mm * max(s.image.shape[:2]) for s in clinical]
    assert np.ptp(fields_of_view) > 40.0


def test_clinical_coverage_is_partial_for_some_subjects(clinical):
    for subject in clinical:
        labels = _base_first(subject)
        assert labels[:, :, 0].any() == (not subject.geometry.covers_base)
        assert labels[:, :, -1].any() == (not subject.geometry.covers_apex)
    coverage = {(s.geometry.covers_base, s.geometry.covers_apex) for s in clinical}
    assert any(not base for base, _ in coverage) and any(not apex for _, apex in coverage)
    assert (True, True) in coverage


def test_clinical_slices_are_shifted_image_and_labels_alike(clinical):
    for subject in clinical:
        offsets = subject.slice_offsets_mm
        assert offsets.shape == (subject.image.shape[2], 2)
        assert 0.2 < offsets.std() and np.abs(offsets).max() <= 6.0
        in_plane_mm = subject.geometry.in_plane_mm
        slices = [
            k for k in range(subject.labels.shape[2]) if np.count_nonzero(subject.labels[:, :, k] == 1) > 100
        ]
        # the LV blood pool's centroid jumps from slice to slice with the recorded offsets
        centroids = np.array(
            [np.argwhere(subject.labels[:, :, k] == 1).mean(axis=0) * in_plane_mm for k in slices]
        )
        raw = np.abs(np.diff(centroids, n=2, axis=0)).mean()
        corrected = np.abs(np.diff(centroids - offsets[slices], n=2, axis=0)).mean()
        assert corrected < 0.5 * raw
        # the image moved with the labels: on every slice the blood-pool label sits where the image
        # is brightest under it (within a voxel: the base's bright atria pull it), and not where
        # the slice's content was before its shift
        image = subject.image.astype(np.float64)
        shifts = [(a, b) for a in range(-4, 5) for b in range(-4, 5)]
        tested = 0
        for k in slices:
            blood = subject.labels[:, :, k] == 1
            means = [image[:, :, k][np.roll(blood, shift, axis=(0, 1))].mean() for shift in shifts]
            assert max(abs(v) for v in shifts[int(np.argmax(means))]) <= 1
            unshifted = tuple(int(v) for v in np.rint(-offsets[k] / in_plane_mm))
            if max(abs(v) for v in unshifted) >= 2:
                assert (
                    image[:, :, k][blood].mean()
                    > image[:, :, k][np.roll(blood, unshifted, axis=(0, 1))].mean()
                )
                tested += 1
        assert tested or offsets.std() < 1.0


@pytest.fixture(scope="module")
def groups():
    return {
        group: [
            generate_subject(5, index, realism="clinical", group=group, max_voxels=1_000_000)
            for index in range(3)
        ]
        for group in GROUPS
    }


def _region_ml(subject, region: int) -> float:
    voxel_ml = abs(np.linalg.det(subject.affine[:3, :3])) / 1000.0
    return float(np.count_nonzero(subject.labels == region) * voxel_ml)


def _blood_slices(labels: np.ndarray, in_plane_mm: float, min_area_mm2: float = 150.0) -> list[int]:
    """Slices (base first) whose LV blood pool is at least ``min_area_mm2``."""
    areas = np.count_nonzero(labels == 1, axis=(0, 1)) * in_plane_mm**2
    return [int(k) for k in np.flatnonzero(areas >= min_area_mm2)]


def _mid_wall_mm(subject) -> float:
    """Median LV wall thickness over the middle third of the slices with a blood pool."""
    labels, in_plane_mm = _base_first(subject), subject.geometry.in_plane_mm
    slices = _blood_slices(labels, in_plane_mm)
    middle = slices[len(slices) // 3 : max(len(slices) // 3 + 1, 2 * len(slices) // 3)]
    return float(
        np.median(np.concatenate([_wall_thickness_mm(labels[:, :, k], in_plane_mm) for k in middle]))
    )


def _thinnest_segment(subject) -> float:
    """Over the apical half of the slices: the smallest (thinnest ray / median ray) of a slice."""
    labels, in_plane_mm = _base_first(subject), subject.geometry.in_plane_mm
    slices = _blood_slices(labels, in_plane_mm)
    ratios = []
    for k in slices[len(slices) // 2 :]:
        thickness = _wall_thickness_mm(labels[:, :, k], in_plane_mm)
        if thickness.size > 40:  # rays that cross the myocardium (not the RV junction's gaps)
            ratios.append(thickness.min() / np.median(thickness))
    return min(ratios)


def test_clinical_groups_differ_as_acdc_s_do(groups):
    def median(group, statistic):
        return float(np.median([statistic(s) for s in groups[group]]))

    def lv_blood(subject):
        return _region_ml(subject, 1)

    def rv_blood(subject):
        return _region_ml(subject, 3)

    for group, subjects in groups.items():
        assert [s.anatomy.group for s in subjects] == [group] * 3
    # DCM: a big LV with a thin wall (measured here: LV ~2.1x, wall ~0.75x NOR's)
    assert median("DCM", lv_blood) > 1.5 * median("NOR", lv_blood)
    assert median("DCM", _mid_wall_mm) < 0.9 * median("NOR", _mid_wall_mm)
    # HCM: a thick wall around a small cavity (wall ~2.1x, LV ~0.55x)
    assert median("HCM", _mid_wall_mm) > 1.4 * median("NOR", _mid_wall_mm)
    assert median("HCM", lv_blood) < 0.85 * median("NOR", lv_blood)
    # abnormal RV: a dilated RV (~2.4x)
    assert median("RV", rv_blood) > 1.6 * median("NOR", rv_blood)
    # MINF: a thinned segment (scar) the other groups lack (ratios ≤ 0.3 against ≥ 0.67)
    assert all(s.anatomy.infarct is not None for s in groups["MINF"])
    assert max(_thinnest_segment(s) for s in groups["MINF"]) < 0.5
    assert min(_thinnest_segment(s) for g in ("NOR", "DCM", "HCM", "RV") for s in groups[g]) > 0.6


def test_clinical_subject_is_deterministic_and_parts_are_independent():
    first = generate_subject(7, 3, realism="clinical", max_voxels=500_000)
    again = list(generate_cohort(4, seed=7, realism="clinical", max_voxels=500_000))[3]
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.affine, again.affine)
    assert first.parameters() == again.parameters()
    # forcing the header style changes where the world puts the voxels, not the voxels
    styles = [s for s in HEADER_STYLES if s != first.header.style]
    restyled = generate_subject(7, 3, realism="clinical", max_voxels=500_000, header_style=styles[0])
    np.testing.assert_array_equal(restyled.image, first.image)
    np.testing.assert_array_equal(restyled.labels, first.labels)
    assert restyled.header.style == styles[0]
    # the standard cohort is another cohort, and its metadata keeps its old keys only
    standard = generate_subject(7, 3)
    assert standard.image.shape != first.image.shape or not np.array_equal(standard.image, first.image)
    assert set(standard.parameters()) == {"anatomy", "geometry", "appearance"}
    assert "group" not in standard.parameters()["anatomy"]
    assert "slice_offsets_mm" not in standard.parameters()["geometry"]


@pytest.mark.parametrize("style", HEADER_STYLES)
def test_clinical_header_styles_read_by_simpleitk_as_recorded(tmp_path, style):
    out = tmp_path / style
    write_synthetic_dataset(
        out, 2, seed=2, realism="clinical", header_style=style, max_voxels=400_000, progress=False
    )
    record = json.loads((out / "synth.json").read_text())
    assert record["realism"] == "clinical" and record["header_style"] == style
    used = set()
    for name, meta in record["subjects"].items():
        true_affine = np.array(meta["true_affine"])
        header = meta["header"]
        used.add(header["geometry_from"])
        for path in (out / f"{name}.nii.gz", out / f"{name}_gt.nii.gz"):
            # SimpleITK reads the true geometry, to float32 precision
            np.testing.assert_allclose(_itk_affine(path), true_affine, atol=1e-4)
            written = nib.load(path).header
            assert int(written["qform_code"]) == header["qform_code"]
            assert int(written["sform_code"]) == header["sform_code"]
            np.testing.assert_allclose(written["pixdim"][1:4], meta["spacing_mm"], rtol=1e-6)
            np.testing.assert_allclose(nib.load(path).affine, meta["nibabel_affine"], atol=1e-4)
        sform = np.array(header["sform"]) if header["sform"] is not None else None
        if style == "acdc":  # ACDC's release: no qform, an sform that is a rotation without voxel size
            assert (header["qform_code"], header["sform_code"]) == (0, 2)
            np.testing.assert_allclose(sform[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
            np.testing.assert_allclose(np.linalg.norm(true_affine[:3, :3], axis=0), meta["spacing_mm"])
            assert not np.allclose(meta["nibabel_affine"], true_affine, atol=1e-3)  # nibabel alone is wrong
        elif style == "qform-only":
            assert (header["qform_code"], header["sform_code"]) == (1, 0)
        elif style == "sform-only":
            assert (header["qform_code"], header["sform_code"]) == (0, 2)
        elif style == "disagree":
            assert header["qform_code"] > 0 and header["sform_code"] > 0
            assert not np.allclose(header["qform"], header["sform"], atol=1.0)
            assert header["geometry_from"] == ("sform" if header["sform_code"] == 1 else "qform")
        else:  # itk, oblique: both parts equal, codes 1
            assert (header["qform_code"], header["sform_code"]) == (1, 1)
            np.testing.assert_allclose(header["qform"], header["sform"])
            rotation = true_affine[:3, :3] / np.linalg.norm(true_affine[:3, :3], axis=0)
            axis_aligned = np.allclose(np.abs(rotation).max(axis=0), 1.0)
            assert axis_aligned == (style == "itk")
        # the pipeline's readers load the pair, with the true geometry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header warnings, the point of these styles
            subject = load_subject(next(f for f in read_dataset(out) if f.id == name))
        np.testing.assert_allclose(subject.affine, true_affine, atol=1e-4)
        assert subject.labels.shape == tuple(meta["shape"])
        assert meta["group"] in GROUPS and len(meta["slice_offsets_mm"]) == meta["shape"][2]
    if style == "disagree":  # both of ITK's choices occur
        assert used == {"qform", "sform"}


def test_synth_cli_realistic(tmp_path, capsys):
    out = tmp_path / "realistic"
    argv = ["synth", str(out), "--realistic", "--subjects", "2", "--header-style", "acdc"]
    assert main([*argv, "--max-voxels", "300000", "--seed", "4", "--no-progress"]) == 0
    assert "wrote 2 realistic synthetic subjects" in capsys.readouterr().out
    record = json.loads((out / "synth.json").read_text())
    assert [m["header"]["style"] for m in record["subjects"].values()] == ["acdc", "acdc"]
    assert all(np.prod(m["shape"]) <= 300_000 for m in record["subjects"].values())
    assert main(["synth", str(tmp_path / "x"), "--header-style", "acdc", "--no-progress"]) == 2
    assert "--header-style needs --realistic" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--max-voxels", "500000", "--no-progress"]) == 2
    assert not (tmp_path / "x").exists()
    assert synth_command.HEADER_STYLES == HEADER_STYLES


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"realism": "clinical", "outlier": "dilated_lv"}, "'outlier' is for the standard cohort"),
        ({"group": "NOR"}, "need realism='clinical'"),
        ({"header_style": "acdc"}, "need realism='clinical'"),
        ({"realism": "clinical", "group": "LV"}, "'group' must be one of"),
        ({"realism": "clinical", "header_style": "nifti"}, "'header_style' must be one of"),
        ({"realism": "clinical", "max_voxels": 10}, "'max_voxels'"),
        ({"realism": "real"}, "'realism' must be one of"),
    ],
)
def test_clinical_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        generate_subject(0, 0, **options)
