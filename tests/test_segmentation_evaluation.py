"""svfnet evaluate --segmentation and svfnet segment --refine: the scores against an independent
computation (svfnet.segment, then Dice in NumPy), the calibration bins on a hand-built case,
refinement that changes the segmentation without making it worse, resumed runs, the report's
section, and bad refinement arguments refused before any work."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import svfnet
from svfnet.cli import main
from svfnet.data import read_dataset, run_prepare, write_synthetic_dataset
from svfnet.data.nifti import read_nifti
from svfnet.segmentation import evaluation as segmentation_evaluation
from svfnet.segmentation.evaluation import evaluate_segmentation
from svfnet.segmentation.evaluation_report import report_section
from svfnet.segmentation.scores import (
    CALIBRATION_EDGES,
    calibration_counts,
    calibration_rows,
    expected_calibration_error,
    region_scores,
)
from svfnet.training.model import SVFNet, SVFNetConfig, save_checkpoint

SEED = 11
COUNT = 7  # synthetic subjects: five training subjects (the atlases), two test subjects
TRAIN, TEST = [f"synth_{n:03d}" for n in range(5)], [f"synth_{n:03d}" for n in range(5, 7)]
REGIONS = (1, 2, 3, 4)
# a short refinement: two levels of 3 and 4 iterations (the default's 10 + 15 take longer to test)
REFINE = {"iterations": (3, 4)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A prepared work folder of seven labelled synthetic subjects (split: five train, two test) and a
    tiny model on its grid with a small non-trivial SVF (as tests/test_segmentation.py)."""
    folder = tmp_path_factory.mktemp("segmentation_evaluation")
    write_synthetic_dataset(folder / "dataset", COUNT, SEED, outlier_fraction=0.0, progress=False)
    run_prepare(folder / "work", read_dataset(folder / "dataset"), progress=False)
    (folder / "work" / "split.json").write_text(json.dumps({"train": TRAIN, "val": [], "test": TEST}))
    subjects = json.loads((folder / "work" / "prepared" / "subjects.json").read_text())
    torch.manual_seed(0)
    model = SVFNet(
        SVFNetConfig(widths=(4, 8, 8, 8), grid=subjects["shape"], spacing_mm=subjects["spacing_mm"])
    )
    with torch.no_grad():
        model.head.weight.normal_(std=0.01)
    save_checkpoint(folder / "model.pt", model)
    return folder


@pytest.fixture(scope="module")
def evaluated(data):
    return evaluate_segmentation(data / "work", data / "model.pt", refine=REFINE, progress=False)


def _raw(data: Path, subject: str) -> tuple[Path, np.ndarray]:
    entry = next(
        e
        for e in json.loads((data / "work" / "prepared" / "subjects.json").read_text())["subjects"]
        if e["id"] == subject
    )
    return Path(entry["source"]["image"]), read_nifti(entry["source"]["labels"], kind="labels")[0]


def _numpy_dice(labels: np.ndarray, truth: np.ndarray, region: int) -> float:
    a, b = labels == region, truth == region
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _row(evaluated, subject: str, method: str, region: int) -> dict:
    return next(
        r
        for r in evaluated.rows
        if r["subject"] == subject and r["method"] == method and r["region"] == region
    )


# ----------------------------------------------------------------------------- pure pieces, by hand
def test_calibration_bins_on_a_hand_built_case():
    # ten bins of 0.1; 0.1 opens the second bin, 1.0 closes the last one
    uncertainty = np.array([0.0, 0.05, 0.05, 0.1, 0.15, 0.5, 0.55, 0.95, 1.0, 1.0])
    wrong = np.array([0, 1, 0, 0, 1, 0, 1, 1, 1, 0], bool)
    counts = calibration_counts(uncertainty.reshape(2, 5), wrong.reshape(2, 5))
    assert counts["voxels"] == [3, 2, 0, 0, 0, 2, 0, 0, 0, 3]
    assert counts["errors"] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    np.testing.assert_allclose(counts["sum_value"], [0.1, 0.25, 0, 0, 0, 1.05, 0, 0, 0, 2.95], atol=1e-12)
    rows = calibration_rows("weighted", "entropy", counts)
    assert [r["error_rate"] for r in rows] == [1 / 3, 0.5, None, None, None, 0.5, None, None, None, 2 / 3]
    assert rows[9]["low"] == pytest.approx(0.9) and rows[9]["high"] == 1.0
    assert rows[0]["mean_value"] == pytest.approx(0.1 / 3)
    # ECE: voxel-weighted |error rate - mean value| over the non-empty bins
    expected = (
        3 / 10 * abs(1 / 3 - 0.1 / 3)
        + 2 / 10 * abs(0.5 - 0.125)
        + 2 / 10 * abs(0.5 - 0.525)
        + 3 / 10 * abs(2 / 3 - 2.95 / 3)
    )
    assert expected_calibration_error(counts) == pytest.approx(expected)
    # pooling two cases is adding their counts
    assert len(CALIBRATION_EDGES) == 11
    with pytest.raises(ValueError, match="outside the bins"):
        calibration_counts(np.array([1.5]), np.array([True]))
    with pytest.raises(ValueError, match="NaN"):
        calibration_counts(np.array([np.nan]), np.array([True]))


def test_region_scores_by_hand():
    truth = np.zeros((8, 8, 3), np.uint8)
    truth[2:6, 2:6, 1] = 1  # 16 voxels
    truth[0, 0, 0] = 3  # the RV is in the truth only: lost
    labels = np.zeros_like(truth)
    labels[2:6, 3:7, 1] = 1  # 16 voxels, 12 shared
    labels[7, 7, 2] = 2  # the LV myocardium is not in the truth: not scored
    scores = region_scores(labels, truth, (1.0, 1.0, 1.0))
    assert scores[1]["status"] == "ok" and scores[1]["dice"] == pytest.approx(2 * 12 / 32)
    # the outlines are one voxel apart along j: 95% Hausdorff 1 mm
    assert scores[1]["hausdorff95_mm"] == pytest.approx(1.0)
    assert scores[3] == {
        "status": "lost",
        "dice": 0.0,
        "hausdorff95_mm": None,
        "voxels_truth": 1,
        "voxels_segmented": 0,
    }
    assert scores[2]["status"] == "absent" and scores[2]["dice"] is None
    assert scores[4]["status"] == "absent"


# ----------------------------------------------------------------------------- against svfnet.segment
def test_scores_equal_svfnet_segment_and_numpy_dice(data, evaluated, tmp_path, capsys):
    assert evaluated.subjects == tuple(TEST) and evaluated.atlases == tuple(TRAIN)
    assert evaluated.sources == {"original": 2, "prepared": 0} and not evaluated.failed()
    subject = TEST[0]
    image, truth = _raw(data, subject)
    labels = {}
    for fusion in ("majority", "weighted"):
        result = svfnet.segment(image, data / "model.pt", data / "work", atlas_subjects=TRAIN, fusion=fusion)
        labels[fusion] = result.labels
    # with refinement, from the command line (its default atlases: the training and validation subjects)
    code = main(
        [
            "segment",
            "--model",
            str(data / "model.pt"),
            "--atlases",
            str(data / "work"),
            "--image",
            str(image),
            "--out",
            str(tmp_path / "case"),
            "--refine",
            "--refine-iterations",
            *map(str, REFINE["iterations"]),
            "--no-progress",
        ]
    )
    assert code == 0
    assert "refinement" in capsys.readouterr().out
    record = json.loads((tmp_path / "case_volumes.json").read_text())
    assert record["refinement"]["iterations"] == [3, 4] and record["refinement"]["levels"] == 2
    assert record["timings_s"]["refinement"] > 0
    labels["weighted_refined"] = read_nifti(tmp_path / "case_labels.nii.gz", kind="labels")[0]
    for method, segmented in labels.items():
        assert segmented.shape == truth.shape
        for region in REGIONS:
            row = _row(evaluated, subject, method, region)
            assert row["dice"] == pytest.approx(_numpy_dice(segmented, truth, region), abs=1e-12), (
                method,
                region,
            )
    # single atlas: each atlas's warped labels alone, Dice in NumPy, mean over the atlases
    from svfnet.segmentation.fusion import argmax_labels
    from svfnet.segmentation.outputs import probabilities_to_original

    singles = [
        argmax_labels(probabilities_to_original(p, result.prepared.transform), result.label_values)
        for p in result.registrations.probabilities
    ]
    for region in REGIONS:
        expected = np.mean([_numpy_dice(s, truth, region) for s in singles])
        assert _row(evaluated, subject, "single", region)["dice"] == pytest.approx(expected, abs=1e-12)
    # the fused vote beats the average single atlas, as tests/test_segmentation.py finds
    mean = {
        m: np.mean([_row(evaluated, subject, m, r)["dice"] for r in REGIONS]) for m in ("single", "weighted")
    }
    assert mean["weighted"] > mean["single"]


def test_refinement_changes_the_segmentation_and_does_not_make_it_worse(evaluated):
    for fused in ("majority", "weighted"):
        before = [_row(evaluated, s, fused, r)["dice"] for s in TEST for r in REGIONS]
        after = [_row(evaluated, s, f"{fused}_refined", r)["dice"] for s in TEST for r in REGIONS]
        assert before != after
        assert np.mean(after) >= np.mean(before) - 1e-3, (fused, np.mean(before), np.mean(after))
    single = np.mean([_row(evaluated, s, "single", r)["dice"] for s in TEST for r in REGIONS])
    single_refined = np.mean([_row(evaluated, s, "single_refined", r)["dice"] for s in TEST for r in REGIONS])
    assert single_refined > single, (single, single_refined)
    record = evaluated.records[TEST[0]]
    assert record["timings_s"]["refinement"] > 0
    assert record["seconds"]["weighted_refined"] > record["seconds"]["weighted"]


def test_files_are_written_without_nan_and_a_rerun_resumes(data, evaluated, monkeypatch):
    folder = data / "work" / "evaluation" / "segmentation"
    for name in ("subjects.csv", "summary.csv", "calibration.csv"):
        text = (folder / name).read_text()
        assert "nan" not in text.lower() and "inf" not in text.lower(), name
    with open(folder / "summary.csv") as handle:
        summary = {(r["method"], r["name"], r["metric"]): r for r in csv.DictReader(handle)}
    for method in ("single", "majority", "weighted", "weighted_refined"):
        values = [_row(evaluated, s, method, 1)["dice"] for s in TEST]
        assert float(summary[(method, "LV blood pool", "dice")]["mean"]) == pytest.approx(np.mean(values))
    record = json.loads((folder / "segmentation.json").read_text())
    assert record["mean_dice"]["weighted"]["LV blood pool"] == pytest.approx(
        np.mean([_row(evaluated, s, "weighted", 1)["dice"] for s in TEST])
    )
    # calibration: pooled counts are the sum over the subjects' records, one bin set per method
    with open(folder / "calibration.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "weighted" and r["measure"] == "entropy"]
    voxels = sum(int(r["voxels"]) for r in rows)
    assert voxels == sum(_raw(data, s)[1].size for s in TEST)
    again = evaluate_segmentation(data / "work", data / "model.pt", refine=REFINE, progress=False)
    assert again.computed == 0 and again.rows == evaluated.rows
    # a record of other settings (here: another checkpoint) is not taken: that subject is done again
    path = folder / "records" / f"{TEST[1]}.json"
    stale = json.loads(path.read_text())
    path.write_text(json.dumps({**stale, "key": "0" * 16}))
    with np.load(folder / "views" / f"{TEST[1]}.npz") as views:
        views = dict(views)
    segmented = []

    def segment_again(subject, *args):  # the record as it was: the subject's segmentation is tested above
        segmented.append(subject.id)
        return {k: v for k, v in stale.items() if k != "key"}, views

    monkeypatch.setattr(segmentation_evaluation, "score_subject", segment_again)
    again = evaluate_segmentation(data / "work", data / "model.pt", refine=REFINE, progress=False)
    assert segmented == [TEST[1]] and again.computed == 1
    assert json.loads(path.read_text())["key"] == stale["key"]


def test_evaluate_runs_the_segmentation_evaluation(data, evaluated):
    from svfnet.evaluation.evaluate import run_evaluation

    result = run_evaluation(
        data / "work",
        data / "model.pt",
        methods=("identity",),
        include_refinement=True,
        refine_params=REFINE,
        segmentation=True,
        workers=1,
        progress=False,
        report=False,
    )
    segmented = result["segmentation"]
    assert segmented["computed"] == 0  # the same settings as the records on disk: nothing to redo
    assert segmented["methods"] == list(evaluated.methods)
    expected = evaluated.json_ready()["mean_dice"]
    for method, regions in expected.items():
        assert segmented["mean_dice"][method] == pytest.approx(regions), method
    assert (
        segmented["headline"][0]
        == "2 test subject(s) segmented from 5 training atlases; mean Dice per region:"
    )
    saved = json.loads((data / "work" / "evaluation" / "evaluation.json").read_text())
    assert saved["segmentation"]["mean_dice"]["weighted"] == pytest.approx(expected["weighted"])


def test_the_report_has_the_segmentation_section_with_its_numbers(evaluated, tmp_path):
    from svfnet.evaluation.report import ReportInputs, write_report

    inputs = ReportInputs(
        workdir="work",
        checkpoint="model.pt",
        subject_set="test",
        subjects=tuple(TEST),
        pair_count=0,
        methods=("identity",),
        rows=[],
        summary=[],
        statistics=[],
        outliers=[],
        gallery=[],
        headline=tuple(evaluated.headline),
        sections=(functools.partial(report_section, evaluated),),
    )
    page = write_report(tmp_path, inputs).read_text()
    assert "Segmentation of the test subjects (multi-atlas)" in page
    means = evaluated.json_ready()["mean_dice"]
    for method, name in (
        ("weighted", "weighted vote"),
        ("majority", "majority vote"),
        ("single", "single atlas (mean over atlases)"),
        ("weighted_refined", "weighted vote + refinement"),
    ):
        for region in ("LV blood pool", "RV myocardium", "mean over regions"):
            assert f"{means[method][region]:.3f} ± " in page, (method, region)
        assert name in page
    ece = evaluated.calibration_error("weighted")
    assert ece is not None and f"<td>{ece:.3f}</td>" in page
    assert (tmp_path / "figures" / "segmentation_reliability.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "segmentation_example_1.png").stat().st_size > 1000
    assert page.count("data:image/png;base64") == 3  # the reliability plot, the best and the worst subject
    assert "0.957 (LV blood pool)" in page  # the ACDC reference point


# ----------------------------------------------------------------------------- bad refinement arguments
def test_bad_refine_arguments_are_refused_before_any_work(data, tmp_path, capsys):
    image, _ = _raw(data, TEST[0])
    for refine, error, pattern in (
        ("yes", TypeError, "'refine' must be a bool or a mapping"),
        ({"levels": 0}, ValueError, "bad 'refine'.*'levels'"),
        ({"iterations": (3, 4, 5)}, ValueError, "bad 'refine'.*one count per level"),
        ({"speed": 2}, TypeError, "bad 'refine'"),
    ):
        with pytest.raises(error, match=pattern):
            svfnet.segment(
                image, data / "model.pt", data / "work", out_prefix=tmp_path / "case", refine=refine
            )
        with pytest.raises(error, match=pattern):
            evaluate_segmentation(data / "work", data / "model.pt", refine=refine, progress=False)
    assert list(tmp_path.iterdir()) == []

    def cli(*extra: str) -> int:
        return main(
            [
                "segment",
                "--model",
                str(data / "model.pt"),
                "--atlases",
                str(data / "work"),
                "--image",
                str(image),
                "--out",
                str(tmp_path / "case"),
                "--no-progress",
                *extra,
            ]
        )

    assert cli("--refine-iterations", "3") == 2
    assert "--refine-iterations applies with --refine only" in capsys.readouterr().err
    assert cli("--refine", "--refine-iterations", "-1") == 2
    assert "--refine-iterations must be non-negative" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_hausdorff_in_the_bounding_box_equals_the_whole_grid(rng):
    from scipy.ndimage import gaussian_filter

    from svfnet.evaluation.metrics import hausdorff

    for trial in range(4):
        shape = (30, 27, 9)
        a = gaussian_filter(rng.standard_normal(shape), 2.0) > 0.15
        b = gaussian_filter(rng.standard_normal(shape), 2.0) > 0.15
        if trial == 0:  # masks touching the grid's border
            a[0], b[:, -1] = True, True
        truth, labels = a.astype(np.uint8), b.astype(np.uint8)
        spacing = (1.3, 0.9, 4.0)
        scores = region_scores(labels, truth, spacing, regions=(1,))
        assert scores[1]["hausdorff95_mm"] == pytest.approx(
            hausdorff(b, a, spacing, percentile=95.0), abs=1e-12
        )
