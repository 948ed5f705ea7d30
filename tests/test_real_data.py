"""`svfnet run` end to end on data as it comes: the real Sunnybrook sample (LV labels only, partial
coverage, oblique DICOM-derived headers) and a clinical synthetic cohort written with ACDC's headers
(sform without voxel size, qform code 0). Small settings: these check that every stage takes such
data and ends with a report, not the accuracy reached.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from svfnet.cli import main
from svfnet.config import load_config
from svfnet.data.nifti import HeaderWarning
from svfnet.pipeline import run_pipeline
from tests.data_fixtures import SUNNYBROOK

SMALL = {
    "shapes": {"landmarks": 150, "target_triangles": 800, "max_iterations": 10},
    "model": {"widths": [4, 8, 8, 8]},
    "train": {"steps": 10, "batch_size": 2, "validate_every": 5, "checkpoint_every": 5},
}


def _config(data: dict) -> dict:
    return load_config(overrides={**SMALL, "data": {"shape": [32, 32, 8], **data}})


def _check_report(workdir, outcomes) -> None:
    assert [o.status for o in outcomes] == ["ran"] * 7
    assert (workdir / "evaluation" / "report.html").is_file()
    assert outcomes[-1].result["pairs"] > 0 and outcomes[-1].result["failed"] == 0
    references = outcomes[4].result
    assert references["usable"] > 0
    log = (workdir / "models" / "svfnet" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + SMALL["train"]["steps"]


def test_sunnybrook_end_to_end_without_rv_labels(tmp_path):
    workdir = tmp_path / "work"
    config = _config({"source": str(SUNNYBROOK), "layout": "plain", "labels": "acdc"})
    outcomes = run_pipeline(workdir, config, progress=False)
    _check_report(workdir, outcomes)
    subjects = json.loads((workdir / "prepared" / "subjects.json").read_text())
    meta = json.loads((SUNNYBROOK / "sunnybrook_meta.json").read_text())
    spacing = {
        entry[p]["file"].removesuffix(".nii.gz"): entry[p]["spacing_mm"]
        for entry in meta.values()
        for p in ("ED", "ES")
    }
    for entry in subjects["subjects"]:
        np.testing.assert_allclose(entry["original_spacing_mm"], spacing[entry["id"]], atol=1e-3)
        assert 3 in entry["missing_regions"] and 4 in entry["missing_regions"]  # no RV in this cohort
    split = json.loads((workdir / "split.json").read_text())
    for side in ("train", "val"):  # a patient's ED and ES frames are never on both sides of the test
        assert not {s.rsplit("_", 1)[0] for s in split[side]} & {s.rsplit("_", 1)[0] for s in split["test"]}


def test_clinical_cohort_with_acdc_headers_end_to_end(tmp_path):
    workdir = tmp_path / "work"
    config = _config({"subjects": 8, "seed": 1, "realism": "clinical", "header_style": "acdc"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HeaderWarning)
        outcomes = run_pipeline(workdir, config, progress=False)
    _check_report(workdir, outcomes)
    header_warnings = {str(w.message) for w in caught if issubclass(w.category, HeaderWarning)}
    assert len(header_warnings) == 16  # every image and label map: the sform says 1 mm voxels

    # the true voxel size, not the sform's 1 mm, reached the prepared subjects
    truth = json.loads((workdir / "raw" / "synth.json").read_text())["subjects"]
    prepared = json.loads((workdir / "prepared" / "subjects.json").read_text())["subjects"]
    for entry in prepared:
        true_affine = np.asarray(truth[entry["id"]]["true_affine"])
        np.testing.assert_allclose(
            entry["original_spacing_mm"], np.linalg.norm(true_affine[:3, :3], axis=0), rtol=1e-3
        )


def test_inspect_flags_the_acdc_headers_of_the_clinical_cohort(tmp_path, capsys):
    from svfnet.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "raw", 3, 2, realism="clinical", header_style="acdc", progress=False)
    assert main(["inspect", str(tmp_path / "raw"), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    truth = json.loads((tmp_path / "raw" / "synth.json").read_text())["subjects"]
    for subject in report["subjects"]:
        assert subject["header_warnings"], subject["id"]
        true_affine = np.asarray(truth[subject["id"]]["true_affine"])
        np.testing.assert_allclose(
            subject["spacing_mm"], np.linalg.norm(true_affine[:3, :3], axis=0), rtol=1e-5
        )


@pytest.mark.parametrize("style", ["itk", "acdc", "qform-only", "sform-only", "disagree", "oblique"])
def test_every_header_style_of_the_clinical_cohort_reads_its_true_geometry(tmp_path, style):
    from svfnet.data.nifti import read_geometry
    from svfnet.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, 1, 5, realism="clinical", header_style=style, progress=False)
    truth = json.loads((tmp_path / "synth.json").read_text())["subjects"]
    for subject_id, parameters in truth.items():
        for name in (f"{subject_id}.nii.gz", f"{subject_id}_gt.nii.gz"):
            geometry, _ = read_geometry(tmp_path / name)
            np.testing.assert_allclose(geometry.affine, np.asarray(parameters["true_affine"]), atol=1e-3)
