"""Preparation: canonical frames, recovery of known rigid motions, the common grid, the recorded
transform back to the original image, reports, and errors before any output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from svfnet.common.workdir import WorkDir, read_prepared, subject_ids
from svfnet.data.labels import parse_label_mapping
from svfnet.data.nifti import write_nifti
from svfnet.data.prepare import (
    canonical_frame,
    cohort_grid,
    heart_extent,
    prepare_subject,
    run_prepare,
)
from svfnet.data.readers import Subject, SubjectFiles, load_subject, read_dataset
from svfnet.data.synthetic import generate_subject, write_synthetic_dataset
from svfnet.data.transform import original_positions, read_transform, resample_labels, to_original
from tests.data_fixtures import SUNNYBROOK, write_foreign_nifti


def as_subject(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, name: str = "s") -> Subject:
    files = SubjectFiles(
        name,
        SUNNYBROOK / f"{name}.nii.gz",
        SUNNYBROOK / f"{name}_gt.nii.gz",
        {1: 1, 2: 2, 3: 3, 4: 4},
        "plain",
    )
    regions = frozenset(int(v) for v in np.unique(labels) if v)
    return Subject(
        name, image.astype(np.float32), labels.astype(np.uint8), np.asarray(affine, float), regions, files
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def moved(volume: np.ndarray, rotation: np.ndarray, shift_vox: np.ndarray, *, labels: bool) -> np.ndarray:
    """``volume`` rotated by ``rotation`` (voxel axes) about its centre, then shifted.

    ``out(R (x − c) + c + t) = in(x)``.
    """
    centre = (np.array(volume.shape) - 1.0) / 2.0
    grid = np.indices(volume.shape, dtype=np.float64).reshape(3, -1)
    source = rotation.T @ (grid - (centre + shift_vox)[:, None]) + centre[:, None]
    if labels:
        return resample_labels(volume, source).reshape(volume.shape)
    return map_coordinates(volume.astype(np.float32), source, order=1, mode="constant").reshape(volume.shape)


def prepare_pair(first: Subject, second: Subject, *, long_axis: str = "slices"):
    frames = [canonical_frame(s.labels, s.affine, long_axis=long_axis) for s in (first, second)]
    grid = cohort_grid([heart_extent(s, f) for s, f in zip((first, second), frames, strict=True)])
    return frames, [prepare_subject(s, f, grid) for s, f in zip((first, second), frames, strict=True)]


@pytest.fixture(scope="module")
def synthetic_subjects():
    return [generate_subject(21, index) for index in range(4)]


# ----------------------------------------------------------------------------- frames
def test_canonical_frame_finds_the_generators_heart_axes():
    for index in range(12):
        subject = generate_subject(8, index)
        heart_axes = np.array(subject.geometry.stack_to_patient) @ np.array(subject.geometry.heart_to_stack)
        frame = canonical_frame(subject.labels, subject.affine)
        # k: base → apex (the stack is tilted up to 6° off the long axis), i: towards the RV
        assert frame.axes[:, 2] @ heart_axes[:, 2] > np.cos(np.radians(7.0)), index
        assert frame.axes[:, 0] @ heart_axes[:, 0] > np.cos(np.radians(10.0)), index
        np.testing.assert_allclose(frame.axes.T @ frame.axes, np.eye(3), atol=1e-9)
        assert np.linalg.det(frame.axes) == pytest.approx(1.0)
        assert (frame.apex_from, frame.in_plane_from, frame.centre_from) == (
            "lv_shape",
            "rv",
            "lv_blood_pool",
        )


def test_preparation_recovers_a_known_rotation_and_translation(synthetic_subjects):
    angle_deg, shift_vox = 25.0, np.array([6.0, -4.0, 0.0])
    rotation = Rotation.from_rotvec(np.radians(angle_deg) * np.array([0.0, 0.0, 1.0])).as_matrix()
    for source in synthetic_subjects[:3]:
        first = as_subject(source.image, source.labels, source.affine)
        second = as_subject(
            moved(source.image, rotation, shift_vox, labels=False),
            moved(source.labels, rotation, shift_vox, labels=True),
            source.affine,
        )
        (frame1, frame2), (prepared1, prepared2) = prepare_pair(first, second)

        # the frames moved with the heart: the same rotation (in world mm) and translation
        linear = source.affine[:3, :3]
        world_rotation = linear @ rotation @ np.linalg.inv(linear)
        error = Rotation.from_matrix(frame2.axes @ (world_rotation @ frame1.axes).T).magnitude()
        assert np.degrees(error) < 1.0
        centre = (np.array(source.labels.shape) - 1.0) / 2.0
        centre1_vox = np.linalg.solve(linear, frame1.centre_mm - source.affine[:3, 3])
        expected_centre2 = (
            linear @ (rotation @ (centre1_vox - centre) + centre + shift_vox) + source.affine[:3, 3]
        )
        assert np.linalg.norm(frame2.centre_mm - expected_centre2) < 1.0

        # so the aligned label maps agree
        labels1, labels2 = prepared1.labels, prepared2.labels
        assert dice(labels1 > 0, labels2 > 0) > 0.95
        for region, threshold in ((1, 0.95), (2, 0.93), (3, 0.95), (4, 0.85)):
            assert dice(labels1 == region, labels2 == region) > threshold, region
        assert np.corrcoef(prepared1.image.ravel(), prepared2.image.ravel())[0, 1] > 0.97


def test_preparation_recovers_a_3d_rotation_with_the_labels_long_axis():
    source = generate_subject(21, 0, spacing_mm=(2.0, 2.0))  # isotropic, so a 3D rotation is clean
    rotation = Rotation.from_rotvec(
        np.radians(20.0) * np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    )
    shift_vox = np.array([5.0, -3.0, 4.0])
    first = as_subject(source.image, source.labels, source.affine)
    second = as_subject(
        moved(source.image, rotation.as_matrix(), shift_vox, labels=False),
        moved(source.labels, rotation.as_matrix(), shift_vox, labels=True),
        source.affine,
    )
    (frame1, frame2), (prepared1, prepared2) = prepare_pair(first, second, long_axis="labels")
    assert frame1.long_axis_from == "labels"
    world_rotation = source.affine[:3, :3] @ rotation.as_matrix() @ np.linalg.inv(source.affine[:3, :3])
    assert np.degrees(Rotation.from_matrix(frame2.axes @ (world_rotation @ frame1.axes).T).magnitude()) < 2.0
    assert dice(prepared1.labels > 0, prepared2.labels > 0) > 0.95
    for region in (1, 3):
        assert dice(prepared1.labels == region, prepared2.labels == region) > 0.95


def test_preparation_does_not_depend_on_the_world_frame(synthetic_subjects):
    source = synthetic_subjects[0]
    rigid = np.eye(4)
    rigid[:3, :3] = Rotation.from_rotvec([0.4, -1.1, 0.7]).as_matrix()
    rigid[:3, 3] = [120.0, -35.0, 60.0]
    (_, _), (prepared1, prepared2) = prepare_pair(
        as_subject(source.image, source.labels, source.affine),
        as_subject(source.image, source.labels, rigid @ source.affine),
    )
    np.testing.assert_array_equal(prepared1.labels, prepared2.labels)
    np.testing.assert_allclose(prepared1.image, prepared2.image, atol=1e-4)


def test_lv_only_labels_fall_back_on_anatomy_for_the_in_plane_direction(synthetic_subjects):
    source = synthetic_subjects[1]
    lv_only = np.where(source.labels <= 2, source.labels, 0)
    frame = canonical_frame(lv_only, source.affine)
    assert frame.in_plane_from == "anatomy"
    heart_axes = np.array(source.geometry.stack_to_patient) @ np.array(source.geometry.heart_to_stack)
    assert frame.axes[:, 2] @ heart_axes[:, 2] > 0.99
    assert frame.axes[:, 0] @ heart_axes[:, 0] > np.cos(np.radians(30.0))  # roughly towards where the RV is


# ----------------------------------------------------------------------------- grid and transform
def test_cohort_grid_holds_every_heart():
    extents = [
        (np.array([-30.0, -40.0, -20.0]), np.array([50.0, 40.0, 60.0])),
        (np.array([-35.0, -30.0, -25.0]), np.array([45.0, 30.0, 70.0])),
    ]
    grid = cohort_grid(extents, (64, 60, 16), margin_mm=10.0)
    assert grid.spacing_mm[0] == grid.spacing_mm[1]
    low = np.array(grid.origin_mm)
    high = low + (np.array(grid.shape) - 1) * np.array(grid.spacing_mm)
    # the voxel centres span the union of the extents plus the margin, and barely more along the
    # axis that decides the in-plane spacing (j: 100 mm over 59 steps, i: 105 mm over 63) and along k
    assert np.all(low <= [-45.0, -50.0, -35.0]) and np.all(high >= [60.0, 50.0, 80.0])
    assert high[1] - low[1] == pytest.approx(100.0, abs=0.6)
    assert high[2] - low[2] == pytest.approx(115.0, abs=0.2)
    np.testing.assert_allclose((low + high) / 2, [7.5, 0.0, 22.5])
    fixed = cohort_grid(extents, (64, 64, 16), spacing_mm=(1.0, 1.0, 5.0))
    assert fixed.spacing_mm == (1.0, 1.0, 5.0)


def test_mapping_back_to_the_original_image(tmp_path, synthetic_subjects):
    source = synthetic_subjects[2]
    root = tmp_path / "data"
    root.mkdir()
    write_nifti(root / "heart.nii.gz", source.image, source.affine)
    write_nifti(root / "heart_gt.nii.gz", source.labels, source.affine)
    report = run_prepare(tmp_path / "work", read_dataset(root), progress=False)
    transform = read_transform(tmp_path / "work", "heart")
    prepared = read_prepared(tmp_path / "work", "heart")

    # prepared labels carried back onto the original grid agree with the original labels
    back = to_original(prepared.labels, transform, kind="labels")
    assert back.shape == source.labels.shape and back.dtype == np.uint8
    assert dice(back > 0, source.labels > 0) > 0.9
    assert dice(back == 1, source.labels == 1) > 0.9
    image_back = transform.raw_intensity(to_original(prepared.image, transform))
    inside = back > 0
    assert np.corrcoef(image_back[inside], source.image[inside])[0, 1] > 0.9

    # the recorded matrices agree with each other and with the grid
    record = transform.record
    centre_vox = (np.array([0.0, 0.0, 0.0]) - np.array(report.grid.origin_mm)) / np.array(
        report.grid.spacing_mm
    )
    np.testing.assert_allclose(
        transform.prepared_to_world_points(centre_vox[None])[0], record["frame"]["centre_world_mm"], atol=1e-6
    )
    prepared_mm = centre_vox * np.array(report.grid.spacing_mm)
    np.testing.assert_allclose(
        (transform.prepared_mm_to_world @ [*prepared_mm, 1.0])[:3],
        record["frame"]["centre_world_mm"],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        transform.prepared_to_original_voxel @ transform.original_to_prepared_voxel, np.eye(4), atol=1e-9
    )

    # a registration on the prepared grid maps original voxels to original voxels
    shift = np.array([1.5, -2.0, 0.5])
    disp = np.broadcast_to(shift[:, None, None, None], (3, *prepared.labels.shape)).copy()
    positions = original_positions(disp, transform, transform)
    grid = np.indices(source.labels.shape, dtype=np.float64)
    expected = grid + (transform.prepared_to_original_voxel[:3, :3] @ shift)[:, None, None, None]
    np.testing.assert_allclose(positions, expected, atol=1e-6)
    with pytest.raises(ValueError, match="disp"):
        original_positions(disp[:, :-1], transform, transform)
    with pytest.raises(ValueError, match="prepared grid"):
        to_original(prepared.labels[:-1], transform)


# ----------------------------------------------------------------------------- a dataset
@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 3, seed=2, progress=False)
    return root


def test_run_prepare_writes_the_work_folder(tmp_path, synthetic_dataset):
    work = tmp_path / "work"
    report = run_prepare(work, read_dataset(synthetic_dataset), progress=False)
    assert subject_ids(work) == ["synth_000", "synth_001", "synth_002"]
    record = json.loads(WorkDir(work).subjects_json.read_text())
    assert record["shape"] == [64, 64, 16] and record["spacing_mm"] == list(report.grid.spacing_mm)
    assert record["dataset"]["layout"] == "plain"
    lv_centres = []
    for entry in record["subjects"]:
        assert entry["regions"] == [1, 2, 3, 4] and entry["missing_regions"] == [] and entry["warnings"] == []
        subject = read_prepared(work, entry["id"])
        assert subject.image.shape == subject.labels.shape == (64, 64, 16)
        assert subject.image.dtype == np.float32 and 0.0 <= subject.image.min() and subject.image.max() <= 1.0
        assert subject.spacing_mm == pytest.approx(report.grid.spacing_mm, rel=1e-6)
        assert subject.regions == {1, 2, 3, 4}
        assert not subject.labels[0].any() and not subject.labels[-1].any()  # the heart is inside the grid
        lv_centres.append(np.argwhere(subject.labels == 1).mean(axis=0))
        assert WorkDir(work).transform(entry["id"]).is_file()
    # every LV blood pool lands on the same place; the RV is along +i, the apex towards +k
    assert np.ptp(np.array(lv_centres), axis=0).max() < 1.5
    for subject_id in subject_ids(work):
        labels = read_prepared(work, subject_id).labels
        lv_centre = np.argwhere(labels == 1).mean(axis=0)
        rv_centre = np.argwhere(labels == 3).mean(axis=0)
        assert rv_centre[0] - lv_centre[0] > 5.0 and abs(rv_centre[1] - lv_centre[1]) < 3.0
        lv_area = (labels == 1).sum(axis=(0, 1))
        slices = np.flatnonzero(lv_area)
        assert lv_area[slices[: len(slices) // 2]].sum() > lv_area[slices[len(slices) // 2 :]].sum()
    assert not list(WorkDir(work).prepared.rglob(".*")), "no temporary files left behind"


def test_missing_regions_are_reported_not_dropped(tmp_path, synthetic_dataset):
    data = tmp_path / "data"
    data.mkdir()
    for index, name in enumerate(("full", "no_rv")):
        subject = generate_subject(2, index)
        labels = subject.labels if name == "full" else np.where(subject.labels >= 3, 0, subject.labels)
        write_nifti(data / f"{name}.nii.gz", subject.image, subject.affine)
        write_nifti(data / f"{name}_gt.nii.gz", labels.astype(np.uint8), subject.affine)
    report = run_prepare(tmp_path / "work", read_dataset(data), progress=False)
    assert [e["id"] for e in report.entries] == ["full", "no_rv"]
    assert report.with_missing_regions == {"no_rv": [3, 4]}
    record = json.loads(WorkDir(tmp_path / "work").subjects_json.read_text())
    assert record["missing_regions"] == {"no_rv": [3, 4]}
    assert read_prepared(tmp_path / "work", "no_rv").regions == {1, 2}
    assert read_transform(tmp_path / "work", "no_rv").record["frame"]["in_plane_from"] == "anatomy"


def test_a_bad_subject_stops_preparation_before_any_output(tmp_path, synthetic_dataset):
    data = tmp_path / "data"
    data.mkdir()
    for path in synthetic_dataset.glob("synth_00[01]*.nii.gz"):
        (data / path.name).write_bytes(path.read_bytes())
    subject = generate_subject(2, 5)
    image = subject.image.astype(np.float32)
    image[3, 4, 5] = np.nan
    write_foreign_nifti(data / "synth_009.nii.gz", image, subject.affine)  # sorted last: after good ones
    write_nifti(data / "synth_009_gt.nii.gz", subject.labels, subject.affine)
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=r"synth_009\.nii\.gz.*NaN"):
        run_prepare(work, read_dataset(data), progress=False)
    assert not work.exists()

    write_nifti(data / "synth_009.nii.gz", np.full_like(image, 7.0), subject.affine)
    with pytest.raises(ValueError, match=r"synth_009\.nii\.gz.*constant"):
        run_prepare(work, read_dataset(data), progress=False)
    assert not work.exists()


def test_existing_preparation_is_kept_unless_forced(tmp_path, synthetic_dataset):
    work = tmp_path / "work"
    run_prepare(work, read_dataset(synthetic_dataset), progress=False)
    with pytest.raises(FileExistsError, match="--force"):
        run_prepare(work, read_dataset(synthetic_dataset), progress=False)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for path in synthetic_dataset.glob("synth_001*.nii.gz"):
        (fewer / path.name).write_bytes(path.read_bytes())
    run_prepare(work, read_dataset(fewer), overwrite=True, progress=False)
    assert subject_ids(work) == ["synth_001"]
    assert sorted(p.name for p in (WorkDir(work).prepared / "images").iterdir()) == ["synth_001.nii.gz"]
    assert sorted(p.name for p in (WorkDir(work).prepared / "transforms").iterdir()) == ["synth_001.json"]


def test_explicit_spacing_and_labels_outside_the_grid(tmp_path, synthetic_dataset):
    report = run_prepare(
        tmp_path / "work",
        read_dataset(synthetic_dataset),
        shape=(16, 16, 4),
        spacing_mm=(2.0, 2.0, 6.0),
        progress=False,
    )
    assert report.grid.spacing_mm == (2.0, 2.0, 6.0)
    for entry in report.entries:
        assert entry["labels_outside_grid_fraction"] > 0.3
        assert any("outside the common grid" in warning for warning in entry["warnings"])
    assert read_prepared(tmp_path / "work", "synth_000").labels.shape == (16, 16, 4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shape": (64, 64)}, "--shape"),
        ({"shape": (64, 64, 1)}, "--shape"),
        ({"spacing_mm": (1.0, -1.0, 5.0)}, "--spacing"),
        ({"margin_mm": float("nan")}, "--margin"),
        ({"long_axis": "pca"}, "--long-axis"),
    ],
)
def test_run_prepare_rejects_bad_options(tmp_path, synthetic_dataset, options, message):
    with pytest.raises(ValueError, match=message):
        run_prepare(tmp_path / "work", read_dataset(synthetic_dataset), progress=False, **options)
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- the real sample
def test_sunnybrook_sample_is_prepared(tmp_path):
    dataset = read_dataset(SUNNYBROOK, phase="ED", label_mapping=parse_label_mapping("acdc"))
    report = run_prepare(tmp_path / "work", dataset, progress=False)
    assert len(report.entries) == 5
    assert report.with_missing_regions == {e["id"]: [3, 4] for e in report.entries}  # LV only
    warnings = report.with_warnings
    assert any("myocardium may be misplaced" in w for w in warnings["SC-HF-I-6_ED"])  # the README's bad case
    assert not any("misplaced" in w for sid, ws in warnings.items() if sid != "SC-HF-I-6_ED" for w in ws)
    for entry in report.entries:
        labels = read_prepared(tmp_path / "work", entry["id"]).labels
        assert set(np.unique(labels)) == {0, 1, 2}
        original = load_subject(next(f for f in dataset if f.id == entry["id"]))
        prepared_ml = np.count_nonzero(labels == 1) * np.prod(report.grid.spacing_mm) / 1000.0
        original_ml = np.count_nonzero(original.labels == 1) * np.prod(original.spacing_mm) / 1000.0
        assert prepared_ml == pytest.approx(original_ml, rel=0.1)
        # the base (wide) towards low k, the apex towards high k
        lv_area = np.isin(labels, (1, 2)).sum(axis=(0, 1))
        slices = np.flatnonzero(lv_area)
        assert lv_area[slices[: len(slices) // 2]].mean() > lv_area[slices[len(slices) // 2 :]].mean()
