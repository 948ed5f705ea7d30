"""Training: the loss falls and Dice beats identity; a killed run resumes to the same weights;
torchrun trains data-parallel with identical ranks."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from svfnet import fields
from svfnet.model import SVFNetConfig, load
from svfnet.train import Cohort, TrainConfig, dice_per_region, shift_in_plane, train
from tests.pipeline_fixtures import GRID, deformed_cohort, write_exact_references, write_split

SMALL = SVFNetConfig(widths=(8, 16, 16, 16), grid=GRID, spacing_mm=(4.0, 4.0, 10.0))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workdir(tmp_path):
    svfs = deformed_cohort(tmp_path, count=4)
    write_split(tmp_path, train=["s0", "s1", "s2", "s3"])
    write_exact_references(tmp_path, svfs)
    return tmp_path


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_training_fits_the_references_and_beats_identity(workdir):
    config = TrainConfig(steps=300, batch_size=4, learning_rate=3e-3, shift_vox=0, validate_every=300,
                         checkpoint_every=300, validation_pairs=6, model=SMALL)
    checkpoint = train(workdir, config, progress=False).checkpoint
    rows = read_log(workdir / "models" / "svfnet" / "log.csv")
    first = np.mean([float(r["loss"]) for r in rows[:5]])
    last = np.mean([float(r["loss"]) for r in rows[-20:]])
    assert last < first / 10, (first, last)
    # on the training pairs, warping with exp of the prediction beats not warping
    model = load(checkpoint)
    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    pairs = [(0, n) for n in (1, 2, 3)] + [(n, 0) for n in (1, 2, 3)]
    with torch.no_grad():
        stacked = torch.from_numpy(np.stack([np.stack([cohort.images[m], cohort.images[f]]) for m, f in pairs]))
        disp = fields.exp(model(stacked))
    warped = fields.warp_labels(cohort.labels[[m for m, _ in pairs]], disp.numpy(), mode="onehot")
    after = np.mean([np.mean(list(dice_per_region(w, cohort.labels[f]).values())) for w, (_, f) in zip(warped, pairs)])
    before = np.mean([np.mean(list(dice_per_region(cohort.labels[m], cohort.labels[f]).values())) for m, f in pairs])
    assert after > before + 0.05, (before, after)
    assert float(rows[-1]["val_dice"]) > float(rows[-1]["identity_dice"])


def test_resume_after_a_kill_reaches_the_same_weights(workdir):
    config = TrainConfig(steps=12, batch_size=2, shift_vox=2, validate_every=6, checkpoint_every=5, model=SMALL)
    train(workdir, config, run="whole", progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_8(step: int) -> None:
        if step == 8:
            raise Killed

    with pytest.raises(Killed):
        train(workdir, config, run="killed", progress=False, on_step=kill_at_step_8)
    with pytest.raises(FileExistsError, match="resume"):
        train(workdir, config, run="killed", progress=False)
    train(workdir, None, run="killed", resume=True, progress=False)
    whole = torch.load(workdir / "models" / "whole" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(workdir / "models" / "killed" / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == whole["step"] == 12
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)
    steps = [int(r["step"]) for r in read_log(workdir / "models" / "killed" / "log.csv")]
    assert steps == list(range(1, 13))  # rows past the checkpoint were dropped, then redone


def test_shift_keeps_the_pair_and_target_consistent(workdir):
    cohort = Cohort.load(workdir, ["s0", "s1"])
    from svfnet.train import ReferenceTargets

    batch = ReferenceTargets(workdir, cohort).batch([0])
    shifted = shift_in_plane(batch, np.array([[2, -1]]))
    # content moves by +shift
    np.testing.assert_array_equal(shifted.moving[0][2:, :-1], batch.moving[0][:-2, 1:])
    np.testing.assert_array_equal(shifted.target[0][:, 2:, :-1], batch.target[0][:, :-2, 1:])
    # and still registers: warping the shifted moving labels by the shifted target gives the shifted fixed labels
    warped = fields.warp_labels(shifted.moving_labels[0], fields.exp(shifted.target[0]), mode="onehot")
    inner = (slice(3, -3), slice(3, -3), slice(None))
    assert np.mean(warped[inner] == shifted.fixed_labels[0][inner]) > 0.97


def test_training_bad_inputs(workdir):
    with pytest.raises(ValueError, match="'targets'"):
        TrainConfig(targets="demons")
    with pytest.raises(ValueError, match="'steps'"):
        TrainConfig(steps=0)
    config = TrainConfig(steps=2, batch_size=1, checkpoint_every=1, model=SMALL)
    train(workdir, config, run="a", progress=False)
    with pytest.raises(ValueError, match=r"differs from the run being resumed .* in \['checkpoint_every'\]"):
        train(workdir, TrainConfig(steps=3, batch_size=1, model=SMALL), run="a", resume=True, progress=False)
    with pytest.raises(ValueError, match="'steps' = 1 is below the 2 steps"):
        train(workdir, dataclasses.replace(config, steps=1), run="a", resume=True, progress=False)


def test_training_records_the_prepared_grid_and_spacing_and_may_be_extended(workdir):
    """The checkpoint's grid and spacing are the prepared subjects' (registration prepares new
    images with them), whatever the model config said; a resumed run may only grow its steps."""
    from tests.pipeline_fixtures import SPACING_MM

    config = TrainConfig(steps=2, batch_size=1, checkpoint_every=1, model=SVFNetConfig(widths=(8, 16, 16, 16)))
    first = train(workdir, config, run="b", progress=False)
    model_config = load(first.checkpoint).config
    assert tuple(model_config.grid) == GRID
    np.testing.assert_allclose(model_config.spacing_mm, SPACING_MM, rtol=1e-6)
    longer = train(workdir, dataclasses.replace(config, steps=3), run="b", resume=True, progress=False)
    assert longer.step == 3


def test_command_line_resume_keeps_the_saved_flags(workdir):
    from svfnet.cli import main

    common = ["train", str(workdir), "--run", "c", "--no-progress", "--batch-size", "1", "--widths", "8", "16", "16", "16"]
    assert main([*common, "--steps", "2", "--checkpoint-every", "1", "--lr", "0.002"]) == 0
    # --resume alone continues with the saved flags (not the defaults); --steps may extend it
    assert main(["train", str(workdir), "--run", "c", "--no-progress", "--resume", "--steps", "3"]) == 0
    assert load(workdir / "models" / "c" / "checkpoint.pt") is not None
    from svfnet.train import saved_config

    saved = saved_config(workdir, "c")
    assert saved.steps == 3 and saved.learning_rate == 0.002 and saved.model.widths == (8, 16, 16, 16)
    # a changed flag other than --steps is refused with one clear line
    assert main(["train", str(workdir), "--run", "c", "--no-progress", "--resume", "--lr", "0.01"]) == 2


def test_torchrun_two_processes_train_identical_replicas(workdir, tmp_path):
    script = Path(__file__).with_name("ddp_train_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(script), str(workdir), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor, rtol=0, atol=0, msg=name)
    assert torch.load(workdir / "models" / "ddp" / "checkpoint.pt", weights_only=True)["sampling_states"].__len__() == 2


def test_the_checkpoint_records_how_the_long_axis_was_found(workdir):
    """Registration prepares new images as the training subjects were: the rule is recorded."""
    import json

    from svfnet.split import subject_split
    from svfnet.workdir import WorkDir

    path = WorkDir(workdir).transform(subject_split(workdir).train[0])
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["frame"] = {**record.get("frame", {}), "long_axis_from": "labels"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    result = train(workdir, TrainConfig(steps=1, batch_size=1, model=SMALL), run="axis", progress=False)
    assert load(result.checkpoint).config.long_axis == "labels"
