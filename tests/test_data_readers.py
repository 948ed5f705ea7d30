"""Dataset readers (plain, nnU-Net/Decathlon, ACDC), label mappings, NIfTI I/O, and every bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from svfnet.data.labels import (
    ACDC_LABELS,
    apply_label_mapping,
    label_mapping_from_names,
    parse_label_mapping,
    region_from_name,
)
from svfnet.data.nifti import read_affine, read_nifti, write_nifti
from svfnet.data.readers import detect_layout, load_subject, read_dataset
from tests.data_fixtures import (
    OBLIQUE_AFFINE,
    SUNNYBROOK,
    image_for,
    tiny_heart,
    to_acdc_values,
    write_acdc,
    write_foreign_nifti,
    write_nnunet,
    write_pair,
    write_plain,
)


# ----------------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_data_dtype_and_affine(tmp_path, suffix):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 3000, size=(7, 6, 5)).astype(np.int16)
    labels = rng.integers(0, 5, size=(7, 6, 5)).astype(np.uint8)
    write_nifti(tmp_path / f"image{suffix}", image, OBLIQUE_AFFINE)
    write_nifti(tmp_path / f"labels{suffix}", labels, OBLIQUE_AFFINE)

    image_back, image_affine = read_nifti(tmp_path / f"image{suffix}")
    labels_back, labels_affine = read_nifti(tmp_path / f"labels{suffix}", kind="labels")
    np.testing.assert_array_equal(image_back, image)
    np.testing.assert_array_equal(labels_back, labels)
    np.testing.assert_allclose(image_affine, OBLIQUE_AFFINE, atol=1e-5)
    np.testing.assert_allclose(labels_affine, OBLIQUE_AFFINE, atol=1e-5)
    header = nib.load(tmp_path / f"image{suffix}").header
    assert header.get_data_dtype() == np.int16
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    np.testing.assert_allclose(
        header.get_zooms()[:3], np.linalg.norm(OBLIQUE_AFFINE[:3, :3], axis=0), rtol=1e-5
    )
    affine, shape = read_affine(tmp_path / f"image{suffix}")
    assert shape == (7, 6, 5)
    np.testing.assert_allclose(affine, OBLIQUE_AFFINE, atol=1e-5)
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_nifti_accepts_a_trailing_axis_of_length_one(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    volume, _ = read_nifti(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(volume, data[..., 0])


# ----------------------------------------------------------------------------- label mappings
def test_parse_label_mapping():
    assert parse_label_mapping("3:1,2:2") == {3: 1, 2: 2}
    assert parse_label_mapping(" 3 : 1 , 2:2 ,") == {3: 1, 2: 2}
    assert parse_label_mapping("acdc") == ACDC_LABELS == {1: 3, 2: 2, 3: 1}
    assert parse_label_mapping("svfnet") == {1: 1, 2: 2, 3: 3, 4: 4}
    assert parse_label_mapping("5:0,7:4") == {5: 0, 7: 4}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3-1", "SRC:DST"),
        ("3:9", "svfnet's labels"),
        ("3:1,3:2", "mapped twice"),
        ("", "empty"),
        ("1:0", "none of svfnet's regions"),
        ("a:1", "SRC:DST"),
    ],
)
def test_parse_label_mapping_rejects(text, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_label_mapping(text)
    assert "--labels" in str(error.value)


def test_apply_label_mapping_reports_unmapped_values():
    labels = np.array([[[0, 1, 2, 3, 7]]])
    mapped, unmapped = apply_label_mapping(labels, ACDC_LABELS)
    np.testing.assert_array_equal(mapped, [[[0, 3, 2, 1, 0]]])
    assert mapped.dtype == np.uint8
    assert unmapped == [7]


@pytest.mark.parametrize(
    ("name", "region"),
    [
        ("LV", 1),
        ("LVC", 1),
        ("left ventricle", 1),
        ("LV blood pool", 1),
        ("MYO", 2),
        ("myocardium", 2),
        ("MLV", 2),
        ("LV myocardium", 2),
        ("RV", 3),
        ("RVC", 3),
        ("right ventricle", 3),
        ("RV cavity", 3),
        ("RV myocardium", 4),
        ("RV_myo", 4),
        ("left atrium", None),
        ("aorta", None),
        ("background", None),
        ("scar", None),
        ("something else", None),
    ],
)
def test_region_from_name(name, region):
    assert region_from_name(name) == region


def test_label_mapping_from_names_lists_ignored_labels():
    mapping, ignored = label_mapping_from_names({0: "background", 1: "LV", 2: "left atrium", 3: "RV"})
    assert mapping == {1: 1, 3: 3}
    assert ignored == {2: "left atrium"}


# ----------------------------------------------------------------------------- plain
@pytest.mark.parametrize("suffix", ["_gt", "_seg"])
def test_plain_layout(tmp_path, suffix):
    root = write_plain(tmp_path / "plain", suffix=suffix)
    (root / "notes.txt").write_text("not a volume: ignored")
    assert detect_layout(root) == "plain"
    dataset = read_dataset(root)
    assert dataset.layout == "plain"
    assert [s.id for s in dataset] == ["case_a", "case_b"]
    assert dataset[0].labels.name == f"case_a{suffix}.nii.gz"
    assert dataset.regions == {1, 2, 3, 4}
    subject = load_subject(dataset[0])
    np.testing.assert_array_equal(subject.labels, tiny_heart())
    assert subject.regions == {1, 2, 3, 4}
    assert subject.image.dtype == np.float32 and subject.labels.dtype == np.uint8
    np.testing.assert_allclose(subject.affine, OBLIQUE_AFFINE, atol=1e-5)
    np.testing.assert_allclose(subject.spacing_mm, np.linalg.norm(OBLIQUE_AFFINE[:3, :3], axis=0), rtol=1e-5)


def test_plain_layout_phase_filter_and_explicit_mapping(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    for name in ("p1_ED", "p1_ES", "p2_ed"):
        write_pair(root, name, to_acdc_values(tiny_heart()))
    dataset = read_dataset(root, "plain", phase="ED", label_mapping=parse_label_mapping("3:1,2:2"))
    assert [s.id for s in dataset] == ["p1_ED", "p2_ed"]
    assert {s.phase for s in dataset} == {"ED"}
    subject = load_subject(dataset[0])
    # ACDC's RV cavity (1) is not in the mapping: background, and reported
    assert subject.regions == {1, 2}
    assert subject.unmapped_values == (1,)
    np.testing.assert_array_equal(subject.labels == 1, tiny_heart() == 1)
    assert len(read_dataset(root, phase="es")) == 1
    with pytest.raises(ValueError, match="_ES"):
        read_dataset(write_plain(tmp_path / "no_phase_in_names"), phase="ES")


# ----------------------------------------------------------------------------- nnU-Net / Decathlon
@pytest.mark.parametrize("style", ["nnunet", "decathlon"])
def test_nnunet_layout_maps_labels_by_name(tmp_path, style):
    root = write_nnunet(tmp_path / "Dataset001_Heart", style=style)
    (root / "imagesTr" / "._heart_001.nii.gz").write_bytes(b"macOS resource fork: ignored")
    (root / "labelsTr" / "._heart_001.nii.gz").write_bytes(b"macOS resource fork: ignored")
    assert detect_layout(root) == "nnunet"
    dataset = read_dataset(root)
    assert dataset.label_mapping == {1: 3, 2: 2, 3: 1}
    assert [s.id for s in dataset] == ["heart_001", "heart_002"]
    subject = load_subject(dataset[1])
    expected = tiny_heart()
    expected[expected == 4] = 0  # the ACDC-style values have no RV myocardium
    np.testing.assert_array_equal(subject.labels, expected)
    assert subject.regions == {1, 2, 3}


def test_nnunet_layout_ignores_unknown_names_and_takes_an_explicit_mapping(tmp_path):
    root = write_nnunet(
        tmp_path / "d", labels_json={"0": "background", "1": "left atrium", "2": "myocardium", "3": "LV"}
    )
    dataset = read_dataset(root, "nnunet")
    assert dataset.label_mapping == {2: 2, 3: 1}
    assert dataset.ignored_labels == {1: "left atrium"}
    assert read_dataset(root, "nnunet", label_mapping={1: 3, 3: 1}).label_mapping == {1: 3, 3: 1}


@pytest.mark.parametrize(
    ("labels_json", "message"),
    [
        ({"0": "background", "1": "liver"}, "none of the label names"),
        ({"background": 0, "heart": [1, 2]}, "region-based"),
        ([], "no 'labels'"),
    ],
)
def test_nnunet_layout_rejects_unusable_label_descriptions(tmp_path, labels_json, message):
    root = write_nnunet(tmp_path / "d", labels_json=labels_json)
    with pytest.raises(ValueError, match=message) as error:
        read_dataset(root, "nnunet")
    assert "dataset.json" in str(error.value)


def test_nnunet_layout_bad_inputs(tmp_path):
    root = write_nnunet(tmp_path / "d", style="nnunet")
    (root / "imagesTr" / "heart_002_0000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="heart_002"):
        read_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json"):
        read_dataset(root, "nnunet")
    with pytest.raises(ValueError, match="phase"):
        read_dataset(write_nnunet(tmp_path / "e"), "nnunet", phase="ED")


# ----------------------------------------------------------------------------- ACDC
def test_acdc_layout_reads_the_frames_info_cfg_names(tmp_path):
    # patient002's ED is frame 4, not 1; the folders sit under training/ as in the ACDC release
    root = write_acdc(tmp_path / "acdc" / "training", {"patient001": (1, 12), "patient002": (4, 9)}).parent
    assert detect_layout(root) == "acdc"
    dataset = read_dataset(root)
    assert dataset.layout == "acdc"
    assert [s.id for s in dataset] == ["patient001_ED", "patient002_ED"]
    assert dataset[1].image.name == "patient002_frame04.nii.gz"
    assert dataset[1].labels.name == "patient002_frame04_gt.nii.gz"
    subject = load_subject(dataset[1])
    expected = tiny_heart(rv=True)
    expected[expected == 4] = 0
    np.testing.assert_array_equal(subject.labels, expected)  # ACDC 1 → 3, 2 → 2, 3 → 1
    assert subject.regions == {1, 2, 3}

    systole = read_dataset(root, "acdc", phase="ES")
    assert [s.id for s in systole] == ["patient001_ES", "patient002_ES"]
    assert systole[1].image.name == "patient002_frame09.nii.gz"
    assert load_subject(systole[1]).regions == {1, 2}  # the fixture's ES frame has no RV


def test_acdc_layout_bad_inputs(tmp_path):
    root = write_acdc(tmp_path / "acdc", {"patient001": (4, 9)})
    (root / "patient001" / "patient001_frame09_gt.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="patient001_frame09_gt"):
        read_dataset(root, "acdc", phase="ES")
    (root / "patient001" / "Info.cfg").write_text("ES: 9\n")
    with pytest.raises(ValueError, match="Info.cfg.*ED"):
        read_dataset(root, "acdc")
    with pytest.raises(ValueError, match="no patient folder"):
        read_dataset(write_plain(tmp_path / "plain"), "acdc")


# ----------------------------------------------------------------------------- the real sample
def test_sunnybrook_sample_through_the_plain_layout_with_acdc_labels():
    dataset = read_dataset(SUNNYBROOK, label_mapping=parse_label_mapping("acdc"))
    assert dataset.layout == "plain"
    assert len(dataset) == 10
    meta = json.loads((SUNNYBROOK / "sunnybrook_meta.json").read_text())
    by_file = {volume["file"]: volume for case in meta.values() for volume in (case["ED"], case["ES"])}
    for files in read_dataset(SUNNYBROOK, phase="ED", label_mapping=parse_label_mapping("3:1,2:2")):
        subject = load_subject(files)
        expected = by_file[files.image.name]
        assert subject.image.shape == tuple(expected["shape"])
        np.testing.assert_allclose(subject.spacing_mm, expected["spacing_mm"], atol=1e-3)
        assert subject.regions == {1, 2}  # LV only
        assert int(np.count_nonzero(subject.labels == 1)) == expected["label_voxels"]["3"]
        assert int(np.count_nonzero(subject.labels == 2)) == expected["label_voxels"]["2"]
        labelled = subject.labels.any(axis=(0, 1))
        np.testing.assert_array_equal(labelled, expected["slice_has_endo_contour"])
    systole = load_subject(read_dataset(SUNNYBROOK, phase="ES", label_mapping=ACDC_LABELS)[0])
    assert systole.regions == {1}  # the myocardium is labelled at ED only


# ----------------------------------------------------------------------------- bad inputs
def _subject_files(
    tmp_path, labels=None, image=None, image_affine=OBLIQUE_AFFINE, labels_affine=OBLIQUE_AFFINE
):
    root = tmp_path / "bad"
    root.mkdir(exist_ok=True)
    labels = tiny_heart() if labels is None else labels
    write_nifti(root / "case.nii.gz", image_for(tiny_heart()) if image is None else image, image_affine)
    write_nifti(root / "case_gt.nii.gz", labels, labels_affine)
    return read_dataset(root)[0]


def test_bad_volumes_are_named(tmp_path):
    files = _subject_files(tmp_path)
    nan_image = np.where(tiny_heart() > 0, np.nan, 1.0).astype(np.float32)
    write_foreign_nifti(files.image, nan_image, OBLIQUE_AFFINE)  # svfnet's own writer refuses it
    with pytest.raises(ValueError, match=r"case\.nii\.gz.*NaN"):
        load_subject(files)

    files = _subject_files(tmp_path, labels=tiny_heart()[:, :-1])
    with pytest.raises(ValueError, match=r"case_gt\.nii\.gz.*shape"):
        load_subject(files)

    moved = OBLIQUE_AFFINE.copy()
    moved[0, 3] += 5.0
    files = _subject_files(tmp_path, labels_affine=moved)
    with pytest.raises(ValueError, match=r"case_gt\.nii\.gz.*affine"):
        load_subject(files)

    files = _subject_files(tmp_path, labels=np.zeros_like(tiny_heart()))
    with pytest.raises(ValueError, match=r"case_gt\.nii\.gz.*empty"):
        load_subject(files)

    files = _subject_files(tmp_path, labels=np.full_like(tiny_heart(), 9))
    with pytest.raises(ValueError, match=r"empty after mapping.*\[9\]"):
        load_subject(files)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((30, 30), "2D"), ((30, 30, 1), "2D"), ((10, 10, 6, 4), "4D")],
)
def test_volumes_that_are_not_3d_are_rejected(tmp_path, shape, message):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(ValueError, match=rf"v\.nii\.gz.*{message}"):
        read_nifti(tmp_path / "v.nii.gz")


def test_unreadable_and_non_nifti_files_are_rejected(tmp_path):
    (tmp_path / "noise.nii.gz").write_bytes(b"this is not a volume" * 20)
    with pytest.raises(ValueError, match=r"noise\.nii\.gz.*not a readable NIfTI"):
        read_nifti(tmp_path / "noise.nii.gz")
    (tmp_path / "noise.nii").write_bytes(b"x" * 400)
    with pytest.raises(ValueError, match=r"noise\.nii.*not a readable NIfTI"):
        read_nifti(tmp_path / "noise.nii")
    write_nifti(
        tmp_path / "whole.nii.gz", np.random.default_rng(0).random((30, 30, 10)).astype(np.float32), np.eye(4)
    )
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.nii\.gz.*voxel data"):
        read_nifti(tmp_path / "cut.nii.gz")
    with gzip.open(tmp_path / "text.nii.gz", "wb") as handle:
        handle.write(b"\0" * 400)
    with pytest.raises(ValueError, match=r"text\.nii\.gz"):
        read_nifti(tmp_path / "text.nii.gz")
    nib.save(nib.MGHImage(np.zeros((5, 5, 5), np.float32), np.eye(4)), tmp_path / "volume.mgz")
    with pytest.raises(ValueError, match=r"volume\.mgz.*not a NIfTI"):
        read_nifti(tmp_path / "volume.mgz")
    shutil.copy(tmp_path / "volume.mgz", tmp_path / "renamed.nii.gz")
    with pytest.raises(ValueError, match=r"renamed\.nii\.gz"):
        read_nifti(tmp_path / "renamed.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        read_nifti(tmp_path / "missing.nii.gz")


def test_bad_affines_and_label_values_are_rejected(tmp_path):
    image = nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4))
    image.header.set_qform(None, code=0)
    image.header["sform_code"] = 1
    for row in ("srow_x", "srow_y", "srow_z"):
        image.header[row] = [0.0, 0.0, 0.0, 0.0]
    image.update_header = lambda: None  # keep the broken sform as written
    nib.save(image, tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match=r"flat\.nii\.gz.*affine is singular"):
        read_nifti(tmp_path / "flat.nii.gz")

    write_nifti(tmp_path / "fractional.nii.gz", np.full((5, 5, 5), 1.5, np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"fractional\.nii\.gz.*whole numbers"):
        read_nifti(tmp_path / "fractional.nii.gz", kind="labels")
    write_nifti(tmp_path / "negative.nii.gz", np.full((5, 5, 5), -1, np.int16), np.eye(4))
    with pytest.raises(ValueError, match=r"negative\.nii\.gz.*negative"):
        read_nifti(tmp_path / "negative.nii.gz", kind="labels")
    write_nifti(tmp_path / "float_labels.nii.gz", tiny_heart().astype(np.float32), np.eye(4))
    np.testing.assert_array_equal(
        read_nifti(tmp_path / "float_labels.nii.gz", kind="labels")[0], tiny_heart()
    )


def test_dataset_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the dataset layout"):
        read_dataset(tmp_path / "empty")
    root = write_plain(tmp_path / "plain")
    with pytest.raises(ValueError, match="layout must be one of"):
        read_dataset(root, "bids")
    with pytest.raises(ValueError, match="phase must be ED or ES"):
        read_dataset(root, phase="mid")

    write_nifti(root / "lonely.nii.gz", image_for(tiny_heart()), OBLIQUE_AFFINE)
    with pytest.raises(FileNotFoundError, match=r"lonely\.nii\.gz.*no label map"):
        read_dataset(root)
    (root / "lonely.nii.gz").unlink()
    write_nifti(root / "orphan_gt.nii.gz", tiny_heart(), OBLIQUE_AFFINE)
    with pytest.raises(FileNotFoundError, match=r"orphan_gt\.nii\.gz.*without its image"):
        read_dataset(root)
    (root / "orphan_gt.nii.gz").unlink()
    write_nifti(root / "case_a_seg.nii.gz", tiny_heart(), OBLIQUE_AFFINE)
    with pytest.raises(ValueError, match="two label maps"):
        read_dataset(root)
