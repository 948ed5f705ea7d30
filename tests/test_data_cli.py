"""``svfnet synth`` and ``svfnet prepare`` from the command line."""

from __future__ import annotations

import json

import pytest

from svfnet.cli import main
from svfnet.common.workdir import WorkDir, read_prepared, subject_ids
from tests.data_fixtures import SUNNYBROOK, write_acdc


def test_synth_then_prepare(tmp_path, capsys):
    data, work = tmp_path / "data", tmp_path / "work"
    assert main(["synth", str(data), "--subjects", "2", "--seed", "3", "--no-progress"]) == 0
    assert sorted(p.name for p in data.iterdir()) == [
        "synth.json",
        "synth_000.nii.gz",
        "synth_000_gt.nii.gz",
        "synth_001.nii.gz",
        "synth_001_gt.nii.gz",
    ]
    assert json.loads((data / "synth.json").read_text())["seed"] == 3
    assert main(["prepare", str(data), str(work), "--shape", "32", "32", "8", "--no-progress"]) == 0
    output = capsys.readouterr().out
    assert "prepared 2 subjects (plain layout)" in output and "32×32×8" in output
    assert subject_ids(work) == ["synth_000", "synth_001"]
    assert read_prepared(work, "synth_001").labels.shape == (32, 32, 8)

    # a second run refuses to overwrite, --force replaces
    assert main(["prepare", str(data), str(work), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (
        main(["prepare", str(data), str(work), "--spacing", "2", "2", "8", "--force", "--no-progress"]) == 0
    )
    assert json.loads(WorkDir(work).subjects_json.read_text())["spacing_mm"] == [2.0, 2.0, 8.0]


def test_prepare_acdc_layout_and_phase(tmp_path, capsys):
    root = write_acdc(tmp_path / "acdc", {"patient001": (3, 10), "patient002": (1, 8)})
    assert (
        main(
            [
                "prepare",
                str(root),
                str(tmp_path / "w"),
                "--layout",
                "acdc",
                "--phase",
                "es",
                "--shape",
                "16",
                "16",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    assert subject_ids(tmp_path / "w") == ["patient001_ES", "patient002_ES"]
    output = capsys.readouterr().out
    assert "patient001_ES: no RV blood pool, RV myocardium" in output  # reported, not dropped


def test_prepare_sunnybrook_with_a_label_mapping(tmp_path, capsys):
    assert (
        main(
            [
                "prepare",
                str(SUNNYBROOK),
                str(tmp_path / "w"),
                "--labels",
                "3:1,2:2",
                "--phase",
                "ED",
                "--no-progress",
            ]
        )
        == 0
    )
    assert len(subject_ids(tmp_path / "w")) == 5
    assert "SC-HF-I-6_ED: the LV blood pool touches background" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["prepare", "{tmp}/nowhere", "{tmp}/w"], "nowhere: no such dataset folder"),
        (["prepare", "{tmp}/data", "{tmp}/w", "--labels", "3=1"], "--labels"),
        (["prepare", "{tmp}/data", "{tmp}/w", "--layout", "nnunet"], "dataset.json"),
        (["prepare", "{tmp}/data", "{tmp}/w", "--shape", "64", "64", "0"], "--shape"),
        (["synth", "{tmp}/data", "--subjects", "0"], "--subjects must be an integer from 1"),
        (["synth", "{tmp}/data", "--subjects", "1"], "not empty"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, arguments, message):
    assert main(["synth", str(tmp_path / "data"), "--subjects", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert (
        main([a.format(tmp=tmp_path) for a in arguments] + ["--no-progress"] * (arguments[0] == "prepare"))
        == 2
    )
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "w").exists()
