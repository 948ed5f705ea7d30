"""The subject split: sizes, one patient's frames on one side, reuse of split.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfnet.data.split import patient_of, subject_split
from tests.shapes_fixtures import heart_labels, write_prepared


def _folder(tmp_path, ids):
    labels = heart_labels(shape=(16, 16, 6))
    return write_prepared(tmp_path / "work", {subject_id: labels for subject_id in ids})


def test_patient_of():
    assert patient_of("patient001_ED") == patient_of("patient001_es") == "patient001"
    assert patient_of("SC-HF-I-1_ES") == "SC-HF-I-1"
    assert patient_of("synth_003") == "synth_003" and patient_of("EDward") == "EDward"


@pytest.mark.parametrize("seed", range(6))
def test_frames_of_one_patient_stay_on_one_side(tmp_path, seed):
    ids = [f"patient{n:03d}_{phase}" for n in range(7) for phase in ("ED", "ES")] + ["single_ED"]
    split = subject_split(_folder(tmp_path, ids), test_fraction=0.25, val_fraction=0.15, seed=seed)
    sides = {subject_id: side for side in ("train", "val", "test") for subject_id in getattr(split, side)}
    assert sorted(sides) == sorted(ids)
    for n in range(7):
        assert sides[f"patient{n:03d}_ED"] == sides[f"patient{n:03d}_ES"]
    assert len(split.test) in (4, 5) and len(split.val) in (2, 3) and len(split.train) >= 2


def test_one_subject_per_patient_is_a_seeded_shuffle(tmp_path):
    ids = [f"synth_{n:03d}" for n in range(12)]
    split = subject_split(_folder(tmp_path, ids), test_fraction=0.25, val_fraction=0.1, seed=3)
    order = np.random.default_rng(3).permutation(12)
    assert split.test == tuple(sorted(ids[i] for i in order[:3]))
    assert split.val == tuple(sorted(ids[i] for i in order[3:4]))
    assert json.loads((tmp_path / "work" / "split.json").read_text())["test"] == list(split.test)


def test_acdc_frames_named_by_number_are_one_patient():
    # ACDC converted to nnU-Net (Dataset027_ACDC) or kept in the plain layout: patient001_frame01/_frame12
    assert patient_of("patient001_frame01") == patient_of("patient001_frame12") == "patient001"
    assert patient_of("patient001_FRAME01") == "patient001" and patient_of("frame01") == "frame01"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "ids",
    [
        ["a_ED", "a_ES", "b_ED", "b_ES"],  # two patients: both sides cannot be filled without a split
        ["a_ED", "a_ES", "b_ED", "b_ES", "c_ED", "c_ES"],
        ["a_ED", "a_ES", "b_ED", "b_ES", "c_ED"],
        ["a_ED", "a_ES", "b_ED"],
        ["a_ED", "a_ES"],  # one patient: all train
    ],
)
def test_few_patients_split_whole_with_two_to_train(tmp_path, ids, seed):
    split = subject_split(_folder(tmp_path, ids), test_fraction=0.5, val_fraction=0.2, seed=seed)
    sides = {subject_id: side for side in ("train", "val", "test") for subject_id in getattr(split, side)}
    assert sorted(sides) == sorted(ids)
    assert len(split.train) >= 2
    for patient in {patient_of(subject_id) for subject_id in ids}:
        assert len({side for subject_id, side in sides.items() if patient_of(subject_id) == patient}) == 1
    if len(ids) >= 4 and len({patient_of(subject_id) for subject_id in ids}) >= 2:
        assert split.test  # from 4 subjects on, some patient is always tested


def test_a_stored_split_that_tests_a_trained_patient_is_kept_and_said(tmp_path, caplog):
    ids = ["a_ED", "a_ES", "b_ED", "b_ES", "c_ED"]
    folder = _folder(tmp_path, ids)
    stored = {"train": ["a_ED", "b_ED", "b_ES"], "val": ["c_ED"], "test": ["a_ES"], "seed": 0}
    (folder / "split.json").write_text(json.dumps(stored))
    with caplog.at_level("WARNING", logger="svfnet.data.split"):
        split = subject_split(folder)
    assert split.test == ("a_ES",)
    assert any("train/validation (a)" in record.getMessage() for record in caplog.records), caplog.text
    caplog.clear()
    (folder / "split.json").unlink()
    with caplog.at_level("WARNING", logger="svfnet.data.split"):
        subject_split(folder)
        subject_split(folder)
    assert not caplog.records
