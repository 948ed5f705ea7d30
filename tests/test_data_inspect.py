"""``svfnet inspect``: geometry as ITK reads it, header warnings, regions, and the subjects prepare refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfnet.cli import main
from svfnet.data.nifti import HeaderWarning, write_nifti
from svfnet.data.prepare import run_prepare
from svfnet.data.readers import read_dataset
from tests.data_fixtures import (
    SUNNYBROOK,
    image_for,
    tiny_heart,
    to_acdc_header,
    write_acdc,
    write_pair,
    write_plain,
)

ACDC_SPACING = (1.5625, 1.5625, 10.0)


def _acdc_with_real_headers(root):
    write_acdc(root, {"patient001": (1, 12), "patient002": (1, 10)})
    for path in root.rglob("*.nii.gz"):
        to_acdc_header(path, ACDC_SPACING)
    return root


def _inspect_json(args, capsys) -> tuple[int, dict]:
    code = main(["inspect", *args, "--json", "--no-progress"])
    return code, json.loads(capsys.readouterr().out)


def test_acdc_headers_are_reported_with_the_true_voxel_size(tmp_path, capsys):
    root = _acdc_with_real_headers(tmp_path / "acdc")
    code, report = _inspect_json([str(root)], capsys)
    assert code == 0
    assert [s["id"] for s in report["subjects"]] == ["patient001_ED", "patient002_ED"]
    for subject in report["subjects"]:
        np.testing.assert_allclose(subject["spacing_mm"], ACDC_SPACING)
        assert subject["geometry_source"] == "sform" and subject["orientation"] == "LPS"
        assert len(subject["header_warnings"]) == 2  # image and label map, each naming its file
        assert any(subject["image"] in w and "1 × 1 × 1" in w for w in subject["header_warnings"])
        # volumes with the true voxel size: voxels × 1.5625 × 1.5625 × 10 mm³
        labels = tiny_heart(rv=True)
        for value in (1, 2, 3):
            expected_ml = np.count_nonzero(labels == value) * np.prod(ACDC_SPACING) / 1000
            assert subject["regions"][str(value)]["volume_ml"] == pytest.approx(expected_ml, abs=1e-3)
            expected_slices = np.flatnonzero((labels == value).any(axis=(0, 1))).tolist()
            assert subject["regions"][str(value)]["slices"] == expected_slices
        assert subject["missing_regions"] == [4]  # ACDC has no RV myocardium
        assert subject["label_values"] == [0, 1, 2, 3]
    assert report["summary"]["with_header_warnings"] == ["patient001_ED", "patient002_ED"]
    assert report["summary"]["slice_mm"] == [10.0, 10.0]


def test_prepare_records_the_true_spacing_of_acdc_headers_and_warns(tmp_path):
    root = _acdc_with_real_headers(tmp_path / "acdc")
    with pytest.warns(HeaderWarning) as caught:
        report = run_prepare(tmp_path / "work", read_dataset(root), progress=False)
    messages = {str(w.message) for w in caught}  # pytest shows every repeat; Python's filter, one a file
    assert len(messages) == 4, messages  # 2 subjects × image and label map
    assert any(
        "patient001_frame01.nii.gz" in m and "1 × 1 × 1 mm" in m and "1.5625 × 1.5625 × 10 mm" in m
        for m in messages
    )
    for entry in report.entries:
        original = np.asarray(
            json.loads((tmp_path / "work" / "prepared" / "transforms" / f"{entry['id']}.json").read_text())[
                "original_affine"
            ]
        )
        np.testing.assert_allclose(np.linalg.norm(original[:3, :3], axis=0), ACDC_SPACING, rtol=1e-6)
    # the heart fills the grid: the fitted grid is not the 1 mm one of nibabel's reading
    assert report.grid.spacing_mm[2] > 3.0


def test_subjects_prepare_would_refuse_are_named_and_the_exit_code_is_one(tmp_path, capsys):
    root = write_plain(tmp_path / "plain", names=("case_a", "case_b"))
    labels = tiny_heart()
    write_nifti(root / "flat.nii.gz", np.full(labels.shape, 7, np.int16), np.eye(4))  # constant image
    write_nifti(root / "flat_gt.nii.gz", labels, np.eye(4))
    write_pair(root, "empty", np.zeros_like(labels), image=image_for(labels))  # no region at all
    write_nifti(root / "other_gt.nii.gz", labels[:, :, :-1], np.eye(4))  # shapes disagree
    write_nifti(root / "other.nii.gz", image_for(labels), np.eye(4))

    code, report = _inspect_json([str(root)], capsys)
    assert code == 1
    refused = report["summary"]["refused"]
    assert sorted(refused) == ["empty", "flat", "other"]
    assert "constant" in refused["flat"] and "empty" in refused["empty"] and "shape" in refused["other"]
    assert {s["id"]: s["error"] for s in report["subjects"]}["case_a"] is None

    code = main(["inspect", str(root), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "REFUSED by prepare" in captured.out and "case_a" in captured.out
    assert "prepare would refuse 3 subjects: empty, flat, other" in captured.err


def test_sunnybrook_volumes_match_the_release_counts(capsys):
    code, report = _inspect_json([str(SUNNYBROOK), "--labels", "acdc"], capsys)
    assert code == 0
    meta = json.loads((SUNNYBROOK / "sunnybrook_meta.json").read_text())
    by_file = {entry[phase]["file"]: entry[phase] for entry in meta.values() for phase in ("ED", "ES")}
    for subject in report["subjects"]:
        expected = by_file[subject["image"].split("/")[-1]]
        np.testing.assert_allclose(subject["spacing_mm"], expected["spacing_mm"], atol=1e-3)
        counts = {int(value): n for value, n in expected["label_voxels"].items()}
        assert subject["regions"]["1"]["voxels"] == counts[3]  # ACDC 3 (LV cavity) → 1
        assert subject["regions"].get("2", {"voxels": 0})["voxels"] == counts.get(2, 0)
        assert 3 in subject["missing_regions"] and 4 in subject["missing_regions"]  # no RV in Sunnybrook
    assert len(report["summary"]["missing_regions"]["LV myocardium"]) == 5  # myocardium at ED only


def test_prepare_on_the_command_line_warns_in_one_plain_line_per_file(tmp_path):
    import subprocess
    import sys

    root = _acdc_with_real_headers(tmp_path / "acdc")
    result = subprocess.run(
        [sys.executable, "-m", "svfnet.cli", "prepare", str(root), str(tmp_path / "work"), "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("svfnet: warning:")]
    assert len(lines) == 4 and all("1.5625 × 1.5625 × 10 mm" in line for line in lines), result.stderr
    assert "warnings.warn" not in result.stderr  # no source location


def test_every_subject_refused_unreadable_headers_and_unmapped_values(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    labels = tiny_heart()
    (root / "junk.nii.gz").write_bytes(b"not a NIfTI file")  # a header that cannot be read
    write_nifti(root / "junk_gt.nii.gz", labels, np.eye(4))
    write_pair(root, "empty", np.zeros_like(labels), image=image_for(labels))
    code, report = _inspect_json([str(root)], capsys)
    assert code == 1
    assert sorted(report["summary"]["refused"]) == ["empty", "junk"]
    junk = {s["id"]: s for s in report["subjects"]}["junk"]
    assert junk["shape"] is None and "junk.nii.gz: not a readable NIfTI" in junk["error"]

    odd = labels.copy()
    odd[0, 0, 0] = 9  # a value the mapping does not list: background, and said
    write_pair(tmp_path / "odd", "case", odd, image=image_for(labels))
    code, report = _inspect_json([str(tmp_path / "odd")], capsys)
    assert code == 0 and report["subjects"][0]["label_values"] == [0, 1, 2, 3, 4, 9]
    assert any("[9]" in w and "not in the mapping" in w for w in report["subjects"][0]["warnings"])

    assert main(["inspect", str(tmp_path / "nowhere"), "--no-progress"]) == 2  # the dataset itself
    assert "no such dataset folder" in capsys.readouterr().err
