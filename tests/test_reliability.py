"""Issue 15: finished work is never destroyed by a bad command, concurrent runs cannot mix, every
input is bounded. One fault-injection test per destructive path: an invalid configuration, an
interrupted replacement, concurrent writers, a stale upstream; and the smaller findings, each."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svfnet.cli import main
from svfnet.common import limits
from svfnet.common.locks import LOCK_NAME, FolderLocked, folder_lock, lock_holder, prefix_lock
from svfnet.common.staging import load_npy, recover_workdir, replace_tree
from svfnet.common.workdir import WorkDir, prepared_digests, subject_ids
from svfnet.config import load_config, render_config
from svfnet.ops import fields
from svfnet.pipeline import run_pipeline
from tests.pipeline_fixtures import GRID, SPACING_MM, deformed_cohort, write_exact_references, write_split

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ a trained tiny work folder
TINY = {
    "data": {"shape": list(GRID)},
    "model": {"widths": [4, 8, 8, 8]},
    "train": {"steps": 2, "batch_size": 1, "validate_every": 2, "checkpoint_every": 1, "shift_vox": 1},
    "run": {"workers": 1},
}


def tiny_config(**changes) -> dict:
    overrides = json.loads(json.dumps(TINY))
    for section, values in changes.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(overrides=overrides)


@pytest.fixture
def trained(tmp_path) -> Path:
    """A work folder with prepared subjects, a split, exact references and a model trained by
    `svfnet run --stages train`."""
    workdir = tmp_path / "work"
    svfs = deformed_cohort(workdir, count=4)
    write_split(workdir, train=["s0", "s1", "s2", "s3"])
    write_exact_references(workdir, svfs)
    outcomes = run_pipeline(workdir, tiny_config(), stages=("train",), progress=False)
    assert [o.status for o in outcomes] == ["ran"]
    return workdir


# ------------------------------------------------------------------------ 1. validate before touching
def test_run_with_an_invalid_section_changes_nothing(trained, tmp_path, capsys):
    """Reproduction: `svfnet run bad.toml` with `[train] steps = -100` deleted models/svfnet before
    refusing. Now it refuses first, and the work folder is byte for byte as it was."""
    before = snapshot(trained)
    bad = tmp_path / "bad.toml"
    bad.write_text(render_config(tiny_config()).replace("steps = 2 ", "steps = -100 "))
    assert main(["run", str(bad), "--workdir", str(trained), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "steps = -100 is out of its range [1, 10,000,000]" in error and str(bad) in error
    assert snapshot(trained) == before


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("data", "shape", [63, 64, 16], "divisible by 8"),
        ("data", "shape", [2000, 2000, 200], "2 to 1,024 voxels along each axis"),
        ("data", "shape", [512, 512, 128], "33,554,432 voxels, above the limit of 16,777,216"),
        ("data", "subjects", 100000000000, r"subjects = 100000000000 is out of its range \[2, 10,000\]"),
        ("data", "phase", "diastole", "phase must be one of"),
        ("split", "test_fraction", 1.5, r"test_fraction = 1.5 is out of its range \[0, 1\)"),
        ("split", "val_fraction", 0.8, "test_fraction \\+ val_fraction must be below 1"),
        ("train", "learning_rate", float("nan"), "learning_rate = nan is out of its range"),
        ("train", "shift_vox", 40, "shift_vox = 40 shifts more than half"),
        ("references", "nu", 0.7, r"nu = 0.7 is out of its range \[0, 0.5\)"),
        ("shapes", "landmarks", 0, "landmarks = 0 is out of its range"),
        ("model", "widths", [0, 8, 8, 8], "widths must be four integers"),
        ("run", "workers", -1, "workers = -1 is out of its range"),
    ],
)
def test_every_section_is_checked_against_its_range(tmp_path, section, key, value, message):
    config = tiny_config()
    config[section][key] = value
    with pytest.raises(ValueError, match=message):
        run_pipeline(tmp_path / "w", config, progress=False)
    assert not (tmp_path / "w").exists()  # not even the folder


def test_config_defaults_print_the_ranges(capsys):
    assert main(["config", "--defaults"]) == 0
    text = capsys.readouterr().out
    assert "steps = 2000  # optimiser steps (range [1, 10,000,000])" in text
    assert "test_fraction = 0.25  # fraction of subjects held out for evaluation (range [0, 1))" in text
    assert "shape = [64, 64, 16]" in text and "at most 16,777,216 voxels" in text
    assert load_config() == load_config(overrides={})  # the defaults are valid


def test_a_non_utf8_configuration_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[data]\nsource = "/données"\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path}: not a UTF-8 text file"):
        load_config(path)


def test_stages_alone_skip_what_is_up_to_date(trained):
    """Reproduction: `--stages train` with the unchanged configuration deleted checkpoint.pt and
    restarted at step 1 (the fingerprint was chained from the stages before)."""
    checkpoint = trained / "models" / "svfnet" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    again = run_pipeline(trained, tiny_config(), stages=("train",), progress=False)
    assert [o.status for o in again] == ["skipped"]
    assert checkpoint.read_bytes() == before


def test_shapes_refuses_bad_workers_before_touching_the_landmarks(tmp_path, capsys):
    """Reproduction: `svfnet shapes W --overwrite --workers 0` deleted 7 of 8 landmark files."""
    workdir = tmp_path / "w"
    deformed_cohort(workdir, count=2)
    landmarks = WorkDir(workdir).shapes / "landmarks"
    landmarks.mkdir(parents=True)
    for n in range(8):
        np.savez(landmarks / f"s{n}.npz", landmarks_mm=np.zeros((4, 3)))
    before = snapshot(workdir)
    assert main(["shapes", str(workdir), "--overwrite", "--workers", "0", "--no-progress"]) == 2
    assert "--workers must be an integer from 1 to 1,024, got 0" in capsys.readouterr().err
    assert snapshot(workdir) == before


# ------------------------------------------------------------------------ interrupted replacements
def test_a_changed_training_is_written_beside_the_old_model_and_swapped_when_done(trained, monkeypatch):
    import svfnet.pipeline as pipeline_module  # the stage calls the name it imported

    live = trained / "models" / "svfnet"
    before = snapshot(live)

    class Killed(Exception):
        pass

    real_train = pipeline_module.run_training

    def killed_at_step_2(*args, **kwargs):
        def on_step(step):
            if step == 2:
                raise Killed

        return real_train(*args, **kwargs, on_step=on_step)

    longer = tiny_config(train={"steps": 3})
    monkeypatch.setattr(pipeline_module, "run_training", killed_at_step_2)
    with pytest.raises(Killed):
        run_pipeline(trained, longer, stages=("train",), progress=False)
    monkeypatch.setattr(pipeline_module, "run_training", real_train)
    assert snapshot(live) == before  # the old model, untouched while its successor trains
    staged = trained / ".staging" / "train" / "models" / "svfnet" / "checkpoint.pt"
    assert staged.is_file()
    resumed = run_pipeline(trained, longer, stages=("train",), progress=False)
    assert [o.status for o in resumed] == ["resumed"] and resumed[0].result["steps"] == 3
    assert resumed[0].result["checkpoint"] == str(live / "checkpoint.pt")
    rows = (live / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]  # resumed from the staged checkpoint
    assert not (trained / ".staging" / "train").exists()


def _fake_landmarks(workdir: Path, subjects, count: int = 24) -> None:
    """Landmarks (mm) spread over the 16x16x4 grid, moved a little per subject; shapes/summary.json."""
    rng = np.random.default_rng(0)
    base = rng.uniform([8, 8, 5], [52, 52, 25], size=(count, 3))
    folder = WorkDir(workdir).shapes / "landmarks"
    folder.mkdir(parents=True, exist_ok=True)
    control_points = rng.uniform([0, 0, 0], [60, 60, 30], size=(8, 3))
    for n, subject in enumerate(subjects):
        moved = base + 0.8 * n * np.sin(base / 9.0)
        momenta = 0.05 * n * np.cos(control_points / 7.0)  # LDDMM flows too, for either kind of reference
        np.savez(
            folder / f"{subject}.npz",
            landmarks_mm=moved,
            summary=np.array(json.dumps({"final_distance": 0.0})),
            momenta=momenta,
            control_points_mm=control_points,
        )
    lddmm = {"sigma_v_mm": 20.0, "time_steps": 4, "integrator": "rk2", "dtype": "float32"}
    (WorkDir(workdir).shapes / "config.json").write_text(
        json.dumps({"lddmm": lddmm, "template": subjects[0]})
    )
    (WorkDir(workdir).shapes / "summary.json").write_text("{}")


def test_references_with_other_parameters_replace_the_old_store_only_when_complete(tmp_path, monkeypatch):
    import svfnet.references.stage as references_module

    workdir = tmp_path / "w"
    deformed_cohort(workdir, count=4)
    write_split(workdir, train=["s0", "s1", "s2"], val=["s3"])
    _fake_landmarks(workdir, ["s0", "s1", "s2", "s3"])
    config = tiny_config(references={"log_max_iter": 5})
    assert [o.status for o in run_pipeline(workdir, config, stages=("references",), progress=False)] == [
        "ran"
    ]
    live = WorkDir(workdir).references
    before = snapshot(live)
    assert len(list(live.glob("pairs/*.json"))) == 4
    real_task, calls = references_module.references_task, []

    def fails_on_the_third(task):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("killed")
        return real_task(task)

    monkeypatch.setattr(references_module, "references_task", fails_on_the_third)
    changed = tiny_config(references={"log_max_iter": 5, "nu": 0.3})
    with pytest.raises(RuntimeError, match="references for fixed subject"):
        run_pipeline(workdir, changed, stages=("references",), progress=False)
    assert snapshot(live) == before  # the old store, as it was
    assert len(list((workdir / ".staging" / "references" / "references" / "pairs").glob("*.json"))) == 2
    monkeypatch.setattr(references_module, "references_task", real_task)
    outcomes = run_pipeline(workdir, changed, stages=("references",), progress=False)
    assert [o.status for o in outcomes] == ["resumed"] and outcomes[0].result["pairs"] == 12
    assert json.loads((live / "config.json").read_text())["nu"] == 0.3
    assert not (workdir / ".staging").exists()
    # the landmarks of one subject change (shapes re-run): the references stage runs again, in place
    _fake_landmarks(workdir, ["s0", "s1", "s3", "s2"])
    assert [o.status for o in run_pipeline(workdir, changed, stages=("references",), progress=False)] == [
        "ran"
    ]


def test_a_kill_during_the_swap_is_undone_by_the_next_command(tmp_path):
    old, new = tmp_path / "w" / "shapes", tmp_path / "w" / ".staging" / "shapes"
    old.mkdir(parents=True)
    (old / "a.txt").write_text("old")
    new.mkdir(parents=True)
    (new / "a.txt").write_text("new")
    os.rename(old, tmp_path / "w" / ".shapes.replaced")  # killed after the first of the two renames
    assert recover_workdir(tmp_path / "w") == [old]
    assert (old / "a.txt").read_text() == "old"
    replace_tree(new, old)
    assert (old / "a.txt").read_text() == "new" and not new.exists()
    assert not (tmp_path / "w" / ".shapes.replaced").exists()


def test_prepare_force_keeps_the_old_folder_when_the_new_one_fails(tmp_path, monkeypatch):
    from svfnet.data import prepare as prepare_module
    from svfnet.data.synthetic import write_synthetic_dataset

    raw = tmp_path / "raw"
    write_synthetic_dataset(raw, 2, seed=1, progress=False)
    work = tmp_path / "w"
    assert main(["prepare", str(raw), str(work), "--shape", "32", "32", "8", "--no-progress"]) == 0
    before = snapshot(work)
    real = prepare_module.prepare_subject
    calls = []

    def fails_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(work / "prepared"))
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare_subject", fails_on_the_second)
    assert (
        main(["prepare", str(raw), str(work), "--force", "--spacing", "3", "3", "10", "--no-progress"]) == 2
    )
    assert snapshot(work) == before  # and no staging left
    monkeypatch.setattr(prepare_module, "prepare_subject", real)
    assert (
        main(["prepare", str(raw), str(work), "--force", "--spacing", "3", "3", "10", "--no-progress"]) == 0
    )
    record = json.loads(WorkDir(work).subjects_json.read_text())
    assert record["spacing_mm"] == [3.0, 3.0, 10.0] and all("digests" in e for e in record["subjects"])
    assert sorted(p.name for p in work.iterdir()) == ["prepared"]


# ------------------------------------------------------------------------ concurrent writers
def _hold(lock: str, target: str) -> subprocess.Popen:
    """A process that holds a lock (``folder`` or ``prefix``) until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from svfnet.common.locks import folder_lock, prefix_lock
        with {lock}_lock({target!r}):
            print("held", flush=True)
            time.sleep(300)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout.readline().strip() == "held"
    return process


def _kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stdout.close()


def test_a_second_writer_of_a_work_folder_is_refused_naming_the_holder(trained, capsys):
    holder = _hold("folder", str(trained))
    try:
        before = snapshot(trained)
        assert main(["run", "--workdir", str(trained), "--stages", "train", "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert f"pid {holder.pid} on host" in error and "in use by another svfnet process" in error
        for command in (
            ["references", str(trained)],
            ["train", str(trained), "--run", "other"],
            ["shapes", str(trained)],
            ["evaluate", str(trained)],
        ):
            assert main([*command, "--no-progress"]) == 2, command
            assert f"pid {holder.pid}" in capsys.readouterr().err
        with pytest.raises(FolderLocked, match=f"pid {holder.pid}"):
            run_pipeline(trained, tiny_config(), stages=("train",), progress=False)
        assert snapshot(trained) == before
    finally:
        _kill(holder)
    # the holder was killed: its lock file is left, stale; the next writer clears it
    assert lock_holder(trained / LOCK_NAME)["pid"] == holder.pid
    assert [o.status for o in run_pipeline(trained, tiny_config(), stages=("train",), progress=False)] == [
        "skipped"
    ]
    assert not (trained / LOCK_NAME).exists()


def test_two_registrations_into_one_prefix_cannot_mix(tmp_path):
    """Reproduction: two `svfnet register --out conc/t1` started together both wrote t1_*."""
    from svfnet.registration.files import register_pairs
    from svfnet.registration.pairs import PairFiles

    prefix = str(tmp_path / "conc" / "t1")
    holder = _hold("prefix", prefix)
    try:
        pair = PairFiles(tmp_path / "m.nii.gz", tmp_path / "f.nii.gz", prefix)
        with pytest.raises(FolderLocked, match=f"output prefix {prefix} is in use .* pid {holder.pid}"):
            register_pairs([pair], tmp_path / "model.pt", progress=False)
    finally:
        _kill(holder)
    with prefix_lock(prefix) as lock_file:  # stale: taken over
        assert lock_file == Path(prefix + ".svfnet.lock") and lock_holder(lock_file)["pid"] == os.getpid()
    assert not Path(prefix + ".svfnet.lock").exists()


def test_a_process_may_take_its_own_lock_again(tmp_path):
    with folder_lock(tmp_path / "w"):
        with folder_lock(tmp_path / "w"):
            assert (tmp_path / "w" / LOCK_NAME).is_file()
        assert (tmp_path / "w" / LOCK_NAME).is_file()
    assert not (tmp_path / "w").exists()  # created for the lock, removed with it


def test_a_stale_lock_of_a_dead_process_is_cleared(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with folder_lock(folder):
        assert lock_holder(folder / LOCK_NAME)["pid"] == os.getpid()


# ------------------------------------------------------------------------ stale upstream
def test_a_re_prepared_subject_is_registered_again_and_a_changed_template_redoes_all(tmp_path):
    from svfnet.shapes.parameters import LddmmParameters
    from svfnet.shapes.stage import run_shapes
    from tests.shapes_fixtures import heart_labels, small_cohort, write_prepared

    settings = {
        "parameters": LddmmParameters(max_iterations=3),
        "target_triangles": 400,
        "landmarks": 20,
        "progress": False,
        "workers": 1,
    }
    work = small_cohort(tmp_path / "w", count=3)
    first = run_shapes(work, template="case00", **settings)
    landmarks = WorkDir(work).shapes / "landmarks"
    before = {p.name: p.read_bytes() for p in landmarks.iterdir()}
    # case02 prepared again (another grid position): redone; the others kept byte for byte
    labels = {
        s: np.asarray(nib.load(WorkDir(work).labels(s)).dataobj) for s in ("case00", "case01", "case02")
    }
    labels["case02"] = np.roll(labels["case02"], 2, axis=0)
    write_prepared(work, labels)
    second = run_shapes(work, template="case00", **settings)
    assert second.computed == ["case02"] and sorted(second.skipped) == ["case00", "case01"]
    assert (landmarks / "case00.npz").read_bytes() == before["case00.npz"]
    assert (landmarks / "case02.npz").read_bytes() != before["case02.npz"]
    # another dataset under new ids: the old template is gone; everything is redone beside the old
    # results and swapped in; the old subjects' files go
    write_prepared(work, {"other0": heart_labels(), "other1": np.roll(heart_labels(), 1, axis=1)})
    third = run_shapes(work, **settings)
    assert third.template in ("other0", "other1") and first.template == "case00"
    assert sorted(p.stem for p in landmarks.iterdir()) == ["other0", "other1"]
    assert json.loads((WorkDir(work).shapes / "config.json").read_text())["template"] == third.template
    assert not (work / ".staging").exists()


def test_pipeline_fingerprints_follow_the_content_not_the_order(tmp_path):
    config = load_config(overrides={"data": {"subjects": 4, "seed": 3, "shape": [32, 32, 8]}})
    stages = ("data", "prepare", "split")
    assert [o.status for o in run_pipeline(tmp_path, config, stages=stages, progress=False)] == ["ran"] * 3
    for stage in stages:  # each alone: up to date
        assert [o.status for o in run_pipeline(tmp_path, config, stages=(stage,), progress=False)] == [
            "skipped"
        ]
    split = (tmp_path / "split.json").read_bytes()
    digests = prepared_digests(tmp_path)
    # another grid: prepare runs again, the split (same subjects) does not
    regridded = load_config(overrides={"data": {"subjects": 4, "seed": 3, "shape": [16, 16, 8]}})
    outcomes = run_pipeline(tmp_path, regridded, stages=stages, progress=False)
    assert [o.status for o in outcomes] == ["skipped", "ran", "skipped"]
    assert (tmp_path / "split.json").read_bytes() == split and prepared_digests(tmp_path) != digests
    # another cohort: everything after it
    other = load_config(overrides={"data": {"subjects": 5, "seed": 3, "shape": [16, 16, 8]}})
    assert [o.status for o in run_pipeline(tmp_path, other, stages=stages, progress=False)] == ["ran"] * 3
    assert len(subject_ids(tmp_path)) == 5


def test_a_stage_whose_input_is_missing_is_refused_before_anything(tmp_path):
    deformed_cohort(tmp_path, count=4)
    before = snapshot(tmp_path)
    with pytest.raises(FileNotFoundError, match="stage train needs the split .*--stages split train"):
        run_pipeline(tmp_path, tiny_config(), stages=("train",), progress=False)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------ 4. bounds and estimates
def test_prepare_refuses_grids_svfnet_cannot_train_on_or_this_machine_cannot_hold(
    tmp_path, capsys, monkeypatch
):
    from svfnet.data.synthetic import write_synthetic_dataset

    raw = tmp_path / "raw"
    write_synthetic_dataset(raw, 2, seed=1, progress=False)
    work = tmp_path / "w"
    assert main(["prepare", str(raw), str(work), "--shape", "63", "64", "16", "--no-progress"]) == 2
    assert "in-plane sizes divisible by 8" in capsys.readouterr().err
    assert main(["prepare", str(raw), str(work), "--shape", "2000", "2000", "200", "--no-progress"]) == 2
    assert "1,024 voxels along each axis" in capsys.readouterr().err
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 0.5e9)
    assert main(["prepare", str(raw), str(work), "--shape", "512", "512", "16", "--no-progress"]) == 2
    assert "of memory (estimate), this machine has 500.0 MB available" in capsys.readouterr().err
    assert not work.exists()


def test_synth_refuses_a_cohort_beyond_the_limit_or_the_disk(tmp_path, capsys, monkeypatch):
    out = tmp_path / "data"
    assert main(["synth", str(out), "--subjects", "100000000000", "--no-progress"]) == 2
    assert "--subjects must be an integer from 1 to 10,000, got 100000000000" in capsys.readouterr().err
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    assert main(["synth", str(out), "--subjects", "40", "--no-progress"]) == 2
    assert "would write about 16.0 MB (estimate)" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_run_that_would_not_fit_is_refused_with_the_estimate(trained, monkeypatch):
    before = snapshot(trained)
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 100e6)
    with pytest.raises(
        limits.ResourceError, match="training on a 16x16x4 grid .* would need about .* 100.0 MB"
    ):
        run_pipeline(trained, tiny_config(train={"steps": 5}), stages=("train",), progress=False)
    assert snapshot(trained) == before
    assert (
        limits.references_disk_bytes(10_000, (64, 64, 16), "float16") > 3e13
    )  # 39 TB: refused by check_disk
    with pytest.raises(limits.ResourceError, match="would write about 39.3 TB"):
        limits.check_disk(
            limits.references_disk_bytes(10_000, (64, 64, 16), "float16"),
            trained,
            "the references",
            "use fewer subjects",
        )


# ------------------------------------------------------------------------ 6. the smaller findings
def test_exp_refuses_steps_that_underflow():
    v = np.ones((3, 8, 8, 4), np.float32)
    with pytest.raises(ValueError, match="'steps' must be at most 64, got 200"):
        fields.exp(v, steps=200)
    np.testing.assert_allclose(fields.exp(v, steps=64), fields.exp(v, steps=12), atol=1e-5)


def test_a_model_of_another_grid_or_spacing_is_named(trained, tmp_path):
    from svfnet.evaluation.evaluate import run_evaluation
    from svfnet.registration.arrays import ModelGridWarning, register
    from svfnet.training.model import SVFNet, SVFNetConfig, save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint(other, SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=GRID, spacing_mm=(2.0, 2.0, 7.0))))
    write_split(trained, train=["s0", "s1"], test=["s2", "s3"])
    with pytest.raises(
        ValueError, match=r"trained on a 16x16x4 grid at 2 x 2 x 7 mm, .* 16x16x4 at 4 x 4 x 10 mm"
    ):
        run_evaluation(trained, other, methods=("svfnet",), progress=False, report=False)
    image = np.zeros(GRID, np.float32)
    with pytest.warns(
        ModelGridWarning, match="4 x 4 x 10 mm grid, the model was trained on 16x16x4 at 2 x 2 x 7"
    ):
        register(image, image, other, spacing_mm=SPACING_MM)


def test_a_checkpoint_with_nan_weights_is_named(trained, tmp_path):
    from svfnet.registration.arrays import register
    from svfnet.training.model import load

    payload = torch.load(trained / "models" / "svfnet" / "checkpoint.pt", weights_only=True)
    payload["model"]["head.bias"][0] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(ValueError, match=f"{broken}: the checkpoint's 'head.bias' has 1 non-finite"):
        load(broken)
    with pytest.raises(ValueError, match="non-finite"):
        register(np.zeros(GRID, np.float32), np.zeros(GRID, np.float32), broken)


def test_a_truncated_npy_is_named(tmp_path):
    path = tmp_path / "s0.npy"
    np.save(path, np.zeros((3, 3, 16, 16, 4), np.float16))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{path}: truncated .* remove it"):
        load_npy(path)
    path.write_bytes(b"not an array")
    with pytest.raises(ValueError, match=f"{path}: not a readable .npy"):
        load_npy(path)


def test_a_truncated_reference_store_is_named_and_recomputed(tmp_path, caplog):
    """Reproduction: a truncated reference .npy failed with "mmap length is greater than file size"
    naming no file, and re-running `svfnet references` did not repair it."""
    from svfnet.references.stage import ReferenceParameters, run_references
    from svfnet.references.store import ReferenceStore

    workdir = tmp_path / "w"
    deformed_cohort(workdir, count=3)
    write_split(workdir, train=["s0", "s1", "s2"])
    _fake_landmarks(workdir, ["s0", "s1", "s2"])
    parameters = ReferenceParameters(log_max_iter=5)
    run_references(workdir, parameters=parameters, workers=1, progress=False)
    store = WorkDir(workdir).references / "svf" / "s0.npy"
    good = store.read_bytes()
    store.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=f"{store}: truncated"):
        ReferenceStore(workdir).svf("s1", "s0")
    summary = run_references(workdir, parameters=parameters, workers=1, progress=False)
    assert (summary.fixed_done, summary.fixed_skipped) == (1, 2) and f"{store}: truncated" in caplog.text
    assert store.stat().st_size == len(good)
    assert np.isfinite(ReferenceStore(workdir).svf("s1", "s0")).all()


def test_a_run_name_stays_inside_the_work_folder(tmp_path, capsys):
    workdir = tmp_path / "a" / "b"
    deformed_cohort(workdir, count=2)
    assert main(["train", str(workdir), "--run", "../../escape", "--no-progress"]) == 2
    assert "--run must be a plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (workdir / "models").exists()


def test_an_unwritable_folder_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from svfnet.common import locks

    def denied(path, what):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(locks, "acquire_flock", denied)
    assert main(["prepare", str(tmp_path / "raw"), str(tmp_path / "w"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("svfnet prepare: error: ") and "Traceback" not in error
    assert f"{tmp_path / 'w'}: cannot write in this folder (permission denied)" in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_clear_line(tmp_path, capsys):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        assert main(["synth", str(readonly / "data"), "--subjects", "2", "--no-progress"]) == 2
        assert "permission denied" in capsys.readouterr().err.lower()
    finally:
        readonly.chmod(0o755)


def test_complex_images_are_refused_naming_the_file(tmp_path):
    from svfnet.data.prepare import run_prepare
    from svfnet.data.readers import read_dataset
    from svfnet.data.synthetic import write_synthetic_dataset

    raw = tmp_path / "raw"
    write_synthetic_dataset(raw, 2, seed=1, progress=False)
    path = raw / "synth_001.nii.gz"
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_dtype(np.complex64)
    data = np.asarray(image.dataobj).astype(np.complex64) * (1 + 1j)
    nib.save(nib.Nifti1Image(data, image.affine, header), path)
    with pytest.raises(ValueError, match=f"{path}: the image holds complex values"):
        run_prepare(tmp_path / "w", read_dataset(raw), progress=False)
    assert not (tmp_path / "w").exists()
