"""The shapes stage and `svfnet shapes`: landmarks for every subject, resume, errors, parallel runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfnet import cli
from svfnet.common.workdir import WorkDir
from svfnet.shapes import stage
from svfnet.shapes.landmarks import read_landmarks
from svfnet.shapes.parameters import LddmmParameters
from svfnet.shapes.stage import run_shapes
from svfnet.shapes.surfaces import load_surfaces
from svfnet.shapes.template import farthest_points
from tests.shapes_fixtures import heart_labels, small_cohort, write_prepared

FAST = LddmmParameters(max_iterations=15)
SETTINGS = {"parameters": FAST, "target_triangles": 800, "landmarks": 60, "progress": False}


@pytest.fixture
def cohort(tmp_path):
    return small_cohort(tmp_path / "work", count=4)


def test_landmarks_for_every_subject_then_resume(cohort, monkeypatch):
    summary = run_shapes(cohort, workers=1, save_meshes=True, **SETTINGS)
    subjects = [f"case{n:02d}" for n in range(4)]
    assert sorted(summary.computed) == subjects and summary.skipped == [] and summary.failed == {}
    assert summary.template in subjects
    shapes = WorkDir(cohort).shapes
    with np.load(shapes / "template.npz") as template:
        template_landmarks = template["landmarks_mm"]
        assert template["landmark_vertex_index"].shape == (60,)
    for subject in subjects:
        result = read_landmarks(cohort, subject)
        assert result["landmarks_mm"].shape == (60, 3) and np.isfinite(result["landmarks_mm"]).all()
        residuals = result["summary"]
        if subject == summary.template:
            np.testing.assert_array_equal(result["landmarks_mm"], template_landmarks)
            continue
        assert residuals["final_distance"] < residuals["initial_distance"]
        # the landmarks moved with the subject, by a few millimetres at most
        moved = np.linalg.norm(result["landmarks_mm"] - template_landmarks, axis=1)
        assert 0.3 < moved.mean() < 10.0
        assert sorted(load_surfaces(shapes / "meshes" / f"{subject}.vtk")) == [1, 2, 3, 4]
    written = json.loads((shapes / "summary.json").read_text())
    assert sorted(written["subjects"]) == subjects and written["template"] == summary.template
    assert "case00" in summary.table()

    # a second run finds everything done and registers nothing
    stamps = {p.name: p.stat().st_mtime_ns for p in (shapes / "landmarks").iterdir()}

    def no_registration(task):
        raise AssertionError("a finished subject was registered again")

    monkeypatch.setattr(stage, "_register_subject", no_registration)
    again = run_shapes(cohort, workers=1, **SETTINGS)
    assert again.computed == [] and sorted(again.skipped) == subjects and again.template == summary.template
    assert {p.name: p.stat().st_mtime_ns for p in (shapes / "landmarks").iterdir()} == stamps

    # removing one result recomputes exactly that one
    monkeypatch.undo()
    removed = next(s for s in subjects if s != summary.template)
    (shapes / "landmarks" / f"{removed}.npz").unlink()
    third = run_shapes(cohort, workers=1, **SETTINGS)
    assert third.computed == [removed]

    # other settings are refused unless overwriting
    with pytest.raises(ValueError, match="other settings \\(landmarks differ\\).*overwrite"):
        run_shapes(cohort, workers=1, **dict(SETTINGS, landmarks=30))


def test_given_template_and_failures_are_reported(tmp_path):
    subjects = {
        "a": heart_labels(),
        "b": heart_labels(lv_radii_mm=(17.0, 14.0, 31.0)),
        "c": heart_labels(with_rv=False),
    }
    workdir = write_prepared(tmp_path / "work", subjects)
    with pytest.raises(
        ValueError, match=r"(?s)1 subject\(s\) failed.*subject c: region\(s\) 3 \(RV blood pool\)"
    ):
        run_shapes(workdir, template="a", regions=[1, 2, 3], workers=1, **SETTINGS)
    done = read_landmarks(workdir, "b")  # the others were stored
    assert done["landmarks_mm"].shape == (60, 3)
    written = json.loads((WorkDir(workdir).shapes / "summary.json").read_text())
    assert "c" in written["failed"] and written["template"] == "a"
    # by default, only the regions every subject has are matched
    summary = run_shapes(workdir, template="a", workers=1, overwrite=True, **SETTINGS)
    assert summary.failed == {} and len(summary.computed) == 3
    with np.load(WorkDir(workdir).shapes / "template.npz") as template:
        assert list(template["regions"]) == [1, 2]


def test_bad_stage_inputs(tmp_path, cohort):
    with pytest.raises(FileNotFoundError, match="svfnet prepare"):
        run_shapes(tmp_path / "nothing", **SETTINGS)
    with pytest.raises(ValueError, match="template 'nobody' is not a prepared subject"):
        run_shapes(cohort, template="nobody", **SETTINGS)
    with pytest.raises(ValueError, match="'landmarks' must be a positive integer"):
        run_shapes(cohort, **dict(SETTINGS, landmarks=0))
    with pytest.raises(ValueError, match="'regions' must be among"):
        run_shapes(cohort, regions=[7], **SETTINGS)


def test_farthest_points_spread_out():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(50, 1, (5, 3))])
    chosen = farthest_points(points, 10)
    assert len(set(chosen.tolist())) == 10
    assert (chosen >= 500).any()  # the small far cluster is represented
    assert np.array_equal(farthest_points(points, 1000), np.arange(505))


def test_local_processes(tmp_path):
    workdir = small_cohort(tmp_path / "work", count=3)
    summary = run_shapes(workdir, template="case00", workers=2, **SETTINGS)
    assert sorted(summary.computed) == ["case00", "case01", "case02"]
    assert all(read_landmarks(workdir, s)["landmarks_mm"].shape == (60, 3) for s in summary.computed)


def test_dask_scheduler(tmp_path):
    distributed = pytest.importorskip("distributed")
    workdir = small_cohort(tmp_path / "work", count=2)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        summary = run_shapes(workdir, template="case00", scheduler=cluster.scheduler_address, **SETTINGS)
    assert sorted(summary.computed) == ["case00", "case01"]
    assert read_landmarks(workdir, "case01")["summary"]["final_distance"] > 0


def test_command_line(tmp_path, capsys):
    workdir = small_cohort(tmp_path / "work", count=2)
    arguments = [
        "shapes",
        str(workdir),
        "--workers",
        "1",
        "--triangles",
        "800",
        "--max-iterations",
        "5",
        "--landmarks",
        "40",
        "--no-progress",
        "--template",
        "case01",
    ]
    assert cli.main(arguments) == 0
    out = capsys.readouterr().out
    assert "template: case01" in out and "case00" in out
    assert read_landmarks(workdir, "case00")["landmarks_mm"].shape == (40, 3)
    assert cli.main(["shapes", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "svfnet prepare" in capsys.readouterr().err
    assert cli.main(arguments[:2] + ["--sigma-v", "-3", "--no-progress"]) == 2
    assert "sigma_v_mm" in capsys.readouterr().err
