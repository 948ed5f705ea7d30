"""Training: the loss falls and Dice beats identity; a killed run resumes to the same weights;
torchrun trains data-parallel with identical ranks; broken pairs are refused and named, and a
non-finite loss, gradient, weight or prediction stops the run keeping the last good checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from svfnet.ops import fields
from svfnet.training.model import SVFNetConfig, load
from svfnet.training.pairs import Cohort, shift_in_plane
from svfnet.training.train import dice_per_region, run_training
from svfnet.training.train_config import TrainConfig
from tests.pipeline_fixtures import GRID, deformed_cohort, write_exact_references, write_split

SMALL = SVFNetConfig(widths=(8, 16, 16, 16), grid=GRID, spacing_mm=(4.0, 4.0, 10.0))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    config = TrainConfig(
        steps=300,
        batch_size=4,
        learning_rate=3e-3,
        shift_vox=0,
        validate_every=300,
        checkpoint_every=300,
        validation_pairs=6,
        recipe="paper",
        model=SMALL,
    )
    checkpoint = run_training(workdir, config, progress=False).checkpoint
    rows = read_log(workdir / "models" / "svfnet" / "log.csv")
    first = np.mean([float(r["loss"]) for r in rows[:5]])
    last = np.mean([float(r["loss"]) for r in rows[-20:]])
    assert last < first / 10, (first, last)
    # on the training pairs, warping with exp of the prediction beats not warping
    before, after = training_pair_dice(checkpoint, workdir)
    assert after > before + 0.05, (before, after)
    assert float(rows[-1]["val_dice"]) > float(rows[-1]["identity_dice"])


def test_resume_after_a_kill_reaches_the_same_weights(workdir):
    config = TrainConfig(
        steps=12, batch_size=2, shift_vox=2, validate_every=6, checkpoint_every=5, model=SMALL
    )
    run_training(workdir, config, run="whole", progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_8(step: int) -> None:
        if step == 8:
            raise Killed

    with pytest.raises(Killed):
        run_training(workdir, config, run="killed", progress=False, on_step=kill_at_step_8)
    with pytest.raises(FileExistsError, match="resume"):
        run_training(workdir, config, run="killed", progress=False)
    run_training(workdir, None, run="killed", resume=True, progress=False)
    whole = torch.load(workdir / "models" / "whole" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(workdir / "models" / "killed" / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == whole["step"] == 12
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)
    steps = [int(r["step"]) for r in read_log(workdir / "models" / "killed" / "log.csv")]
    assert steps == list(range(1, 13))  # rows past the checkpoint were dropped, then redone


def test_shift_keeps_the_pair_and_target_consistent(workdir):
    cohort = Cohort.load(workdir, ["s0", "s1"])
    from svfnet.training.pairs import ReferenceTargets

    batch = ReferenceTargets(workdir, cohort).batch([0])
    shifted = shift_in_plane(batch, np.array([[2, -1]]))
    # content moves by +shift
    np.testing.assert_array_equal(shifted.moving[0][2:, :-1], batch.moving[0][:-2, 1:])
    np.testing.assert_array_equal(shifted.target[0][:, 2:, :-1], batch.target[0][:, :-2, 1:])
    # and still registers: warping the shifted moving labels by the shifted target gives the shifted fixed labels
    warped = fields.warp_labels(shifted.moving_labels[0], fields.exp(shifted.target[0]), mode="onehot")
    inner = (slice(3, -3), slice(3, -3), slice(None))
    assert np.mean(warped[inner] == shifted.fixed_labels[0][inner]) > 0.97


def test_the_configured_augmentations_keep_each_pair_registered_by_its_target(workdir):
    """Shift, rotation and intensity changes of a drawn batch: the target still carries the moving
    labels onto the fixed ones, and the images changed. Rotation is exact up to interpolation: on
    this 16x16 grid of 4 mm voxels the two label maps' resampling costs about 0.07 of agreement
    (0.93-0.97 unrotated, 0.86-0.98 rotated by up to 20 degrees, against 0.50-0.77 unregistered)."""
    from svfnet.training.pairs import ReferenceTargets, augment

    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    batch = ReferenceTargets(workdir, cohort).batch([0, 1, 2])
    config = TrainConfig(shift_vox=2, rotation_deg=20.0, intensity_augmentation=True, model=SMALL)
    out = augment(batch, np.random.default_rng(3), config, cohort.spacing_mm)
    inner = (slice(3, -3), slice(3, -3), slice(None))
    for n in range(3):
        warped = fields.warp_labels(out.moving_labels[n], fields.exp(out.target[n]), mode="onehot")
        registered = np.mean(warped[inner] == out.fixed_labels[n][inner])
        unregistered = np.mean(out.moving_labels[n][inner] == out.fixed_labels[n][inner])
        assert registered > 0.85 and registered > unregistered + 0.15, (n, registered, unregistered)
        assert not np.array_equal(out.moving[n], batch.moving[n]) and not np.array_equal(
            out.target[n], batch.target[n]
        )
    # without augmentations the batch is untouched and nothing is drawn
    rng = np.random.default_rng(3)
    plain = augment(batch, rng, TrainConfig(shift_vox=0, model=SMALL), cohort.spacing_mm)
    assert plain is batch and rng.integers(1 << 30) == np.random.default_rng(3).integers(1 << 30)


def test_training_bad_inputs(workdir):
    with pytest.raises(ValueError, match="'targets'"):
        TrainConfig(targets="demons")
    with pytest.raises(ValueError, match="'steps'"):
        TrainConfig(steps=0)
    config = TrainConfig(steps=2, batch_size=1, checkpoint_every=1, model=SMALL)
    run_training(workdir, config, run="a", progress=False)
    with pytest.raises(ValueError, match=r"differs from the run being resumed .* in \['checkpoint_every'\]"):
        run_training(
            workdir, TrainConfig(steps=3, batch_size=1, model=SMALL), run="a", resume=True, progress=False
        )
    with pytest.raises(ValueError, match="'steps' = 1 is below the 2 steps"):
        run_training(workdir, dataclasses.replace(config, steps=1), run="a", resume=True, progress=False)


def test_training_records_the_prepared_grid_and_spacing_and_may_be_extended(workdir):
    """The checkpoint's grid and spacing are the prepared subjects' (registration prepares new
    images with them), whatever the model config said; a resumed run may only grow its steps."""
    from tests.pipeline_fixtures import SPACING_MM

    config = TrainConfig(
        steps=2, batch_size=1, checkpoint_every=1, model=SVFNetConfig(widths=(8, 16, 16, 16))
    )
    first = run_training(workdir, config, run="b", progress=False)
    model_config = load(first.checkpoint).config
    assert tuple(model_config.grid) == GRID
    np.testing.assert_allclose(model_config.spacing_mm, SPACING_MM, rtol=1e-6)
    longer = run_training(workdir, dataclasses.replace(config, steps=3), run="b", resume=True, progress=False)
    assert longer.step == 3


def test_command_line_resume_keeps_the_saved_flags(workdir):
    from svfnet.cli import main

    common = [
        "train",
        str(workdir),
        "--run",
        "c",
        "--no-progress",
        "--batch-size",
        "1",
        "--widths",
        "8",
        "16",
        "16",
        "16",
    ]
    assert main([*common, "--steps", "2", "--checkpoint-every", "1", "--lr", "0.002"]) == 0
    # --resume alone continues with the saved flags (not the defaults); --steps may extend it
    assert main(["train", str(workdir), "--run", "c", "--no-progress", "--resume", "--steps", "3"]) == 0
    resumed = workdir / "models" / "c" / "checkpoint.pt"
    stored = torch.load(resumed, weights_only=True)
    assert stored["step"] == 3  # continued from step 2, not restarted
    loaded = load(resumed).state_dict()
    assert loaded.keys() == stored["model"].keys()
    assert all(torch.equal(loaded[name], stored["model"][name]) for name in loaded)
    from svfnet.training.train import saved_config

    saved = saved_config(workdir, "c")
    assert saved.steps == 3 and saved.learning_rate == 0.002 and saved.model.widths == (8, 16, 16, 16)
    # a changed flag other than --steps is refused with one clear line
    assert main(["train", str(workdir), "--run", "c", "--no-progress", "--resume", "--lr", "0.01"]) == 2


def test_torchrun_two_processes_train_identical_replicas(workdir, tmp_path):
    script = Path(__file__).with_name("ddp_train_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(script),
            str(workdir),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor, rtol=0, atol=0, msg=name)
    assert (
        torch.load(workdir / "models" / "ddp" / "checkpoint.pt", weights_only=True)[
            "sampling_states"
        ].__len__()
        == 2
    )


def test_the_checkpoint_records_how_the_long_axis_was_found(workdir):
    """Registration prepares new images as the training subjects were: the rule is recorded."""
    import json

    from svfnet.common.workdir import WorkDir
    from svfnet.data.split import subject_split

    path = WorkDir(workdir).transform(subject_split(workdir).train[0])
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["frame"] = {**record.get("frame", {}), "long_axis_from": "labels"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    result = run_training(
        workdir, TrainConfig(steps=1, batch_size=1, model=SMALL), run="axis", progress=False
    )
    assert load(result.checkpoint).config.long_axis == "labels"


# -------------------------------------------------------------------------------- poisoned data and steps
def poison_reference(workdir: Path, fixed: str, moving: str, edit) -> None:
    """Edits one stored reference SVF in place: ``edit(svf)`` on its float16 ``(3, I, J, K)`` array."""
    import json

    folder = workdir / "references"
    index = json.loads((folder / "pairs" / f"{fixed}.json").read_text())["moving"].index(moving)
    stored = np.load(folder / "svf" / f"{fixed}.npy")
    edit(stored[index])
    np.save(folder / "svf" / f"{fixed}.npy", stored)


def refusals(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "svfnet.training.train" and "refused" in r.getMessage()
    ]


def test_broken_reference_pairs_are_refused_named_once_and_training_goes_on(workdir, caplog, monkeypatch):
    """inf (a float16 overflow), NaN and a 500-voxel value near the heart are refused, each pair
    named once with its reason; a 500-voxel value where the heart mask does not count is kept under
    the heart mask and refused when the whole grid counts. Nothing refused reaches the loss."""
    import svfnet.training.train as train_module
    from svfnet.training.pairs import ReferenceTargets, heart_mask

    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    near = tuple(np.argwhere(cohort.labels[2] == 2)[0])  # fixed s2's myocardium
    far = tuple(np.argwhere(~heart_mask(cohort.labels[3]))[0])  # fixed s3, outside its heart mask
    poison_reference(workdir, "s0", "s1", lambda v: v.__setitem__((0, 1, 2, 0), np.inf))  # float16 overflow
    poison_reference(workdir, "s1", "s0", lambda v: v.__setitem__((2, 5, 5, 1), np.nan))
    poison_reference(workdir, "s2", "s0", lambda v: v.__setitem__((0, *near), 500.0))
    poison_reference(workdir, "s3", "s0", lambda v: v.__setitem__((1, *far), 500.0))

    largest_target = []
    real_loss = train_module.masked_mse

    def spy(prediction, target, weights):  # the largest target where the loss counts
        largest_target.append(float((target.abs() * (weights > 0)).max()))
        return real_loss(prediction, target, weights)

    monkeypatch.setattr(train_module, "masked_mse", spy)
    caplog.set_level("WARNING", logger="svfnet.training.train")
    config = TrainConfig(
        steps=6,
        batch_size=2,
        shift_vox=1,
        validate_every=3,
        checkpoint_every=3,
        validation_pairs=6,
        loss_mask="heart",
        model=SMALL,
    )
    result = run_training(workdir, config, progress=False)
    messages = refusals(caplog)
    assert len(messages) == 3, messages  # once a pair, though the pairs also serve validation here
    # (the store itself may refuse to return non-finite values: then its words are the reason)
    assert any("moving s1, fixed s0" in m and "non-finite values" in m for m in messages), messages
    assert any("moving s0, fixed s1" in m and "non-finite values" in m for m in messages), messages
    assert any(
        "moving s0, fixed s2" in m
        and "|v_i| up to 500 voxels where the loss counts" in m
        and "beyond the grid's 16 along axis i" in m
        for m in messages
    ), messages
    with (workdir / "models" / "svfnet" / "refused.csv").open() as handle:
        listed = {(r["moving"], r["fixed"]) for r in csv.DictReader(handle)}
    assert listed == {("s1", "s0"), ("s0", "s1"), ("s0", "s2")}
    # the refused targets never reached the loss (training or validation); training went on
    # (inf or NaN anywhere would show here: inf × 0 is NaN)
    assert largest_target and all(np.isfinite(largest_target)) and max(largest_target) < 16, largest_target
    rows = read_log(workdir / "models" / "svfnet" / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(np.isfinite(float(r["loss"])) and not r["error"] for r in rows)
    assert np.isfinite(float(rows[-1]["val_dice"]))
    assert result.step == 6 and all(
        torch.isfinite(t).all() for t in load(result.checkpoint).state_dict().values()
    )
    # counting the whole grid, the value far from the heart counts too: that pair is refused as well
    whole = ReferenceTargets(workdir, cohort, loss_mask="none", log_refused=False)
    assert {(m, f) for m, f, _ in whole.refused} == {("s1", "s0"), ("s0", "s1"), ("s0", "s2"), ("s0", "s3")}
    assert (
        "|v_j| up to 500 voxels on the grid"
        in dict(((m, f), why) for m, f, why in whole.refused)[("s0", "s3")]
    )


def test_every_pair_refused_is_a_clear_error_before_training(workdir):
    for fixed, movings in {"s0": ["s1", "s2", "s3"], "s1": ["s0"], "s2": ["s0"], "s3": ["s0"]}.items():
        for moving in movings:
            poison_reference(workdir, fixed, moving, lambda v: v.__setitem__((0, 0, 0, 0), np.inf))
    with pytest.raises(
        ValueError,
        match=r"all 6 reference pairs offered were refused \(\(s1, s0\): its reference SVF "
        r".*non-finite values",
    ):
        run_training(workdir, TrainConfig(steps=2, batch_size=1, model=SMALL), progress=False)
    assert not (workdir / "models" / "svfnet" / "checkpoint.pt").exists()
    assert not (workdir / "models" / "svfnet" / "log.csv").exists()


def test_a_non_finite_image_refuses_its_pairs(workdir, caplog):
    from svfnet.training.pairs import RandomTargets, ReferenceTargets

    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    images = cohort.images.copy()
    images[3, 4, 4, 1] = np.nan
    cohort = dataclasses.replace(cohort, images=images)
    caplog.set_level("WARNING", logger="svfnet.training.train")
    references = ReferenceTargets(workdir, cohort)
    assert {(m, f) for m, f, _ in references.refused} == {("s0", "s3"), ("s3", "s0")}
    assert all(why == "the image of 's3' has 1 non-finite values" for _, _, why in references.refused)
    assert len(references.pairs) == 4 and 3 not in np.array(references.pairs)
    random = RandomTargets(cohort, 1.0, 4.0)
    assert random.refused == [("s3", "the image of 's3' has 1 non-finite values")]
    drawn = random.sample(np.random.default_rng(0), 8)
    assert np.isfinite(drawn.moving).all() and np.isfinite(drawn.fixed).all()
    assert len(refusals(caplog)) == 3


@pytest.mark.parametrize("poison", ["loss", "gradient", "weights"])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(workdir, monkeypatch, poison):
    """A NaN loss (step 5), a NaN gradient with a finite loss (step 5), or a NaN weight after an
    optimiser step (step 6, caught before its checkpoint): the run stops naming the step, its log
    row says why, and checkpoint.pt is the one of step 3, finite, loadable."""
    import svfnet.training.train as train_module
    from svfnet.training.train import TrainingDiverged

    calls = {"loss": 0, "step": 0}
    real_loss, real_step = train_module.masked_mse, torch.optim.Adam.step

    def poisoned_loss(prediction, target, weights):
        calls["loss"] += 1
        loss = real_loss(prediction, target, weights)
        if calls["loss"] == 5 and poison == "loss":
            return loss * float("nan")
        if calls["loss"] == 5 and poison == "gradient":  # value unchanged, gradient 0 * inf = NaN
            return loss + 0 * torch.sqrt((prediction - prediction.detach()).abs().sum())
        return loss

    def poisoned_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["step"] += 1
        if calls["step"] == 6 and poison == "weights":
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(train_module, "masked_mse", poisoned_loss)
    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    config = TrainConfig(steps=8, batch_size=1, checkpoint_every=3, validate_every=100, model=SMALL)
    failing = {"loss": 5, "gradient": 5, "weights": 6}[poison]
    why = {
        "loss": "the loss is nan",
        "gradient": r"the gradient of '[\w.]+' has \d+ non-finite values",
        "weights": r"the model's '[\w.]+' has 1 non-finite values",
    }[poison]
    with pytest.raises(
        TrainingDiverged,
        match=rf"stopped at step {failing}: {why}.*the last good checkpoint, step 3, "
        "is kept",
    ):
        run_training(workdir, config, progress=False)
    checkpoint = workdir / "models" / "svfnet" / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["step"] == 3
    assert all(torch.isfinite(tensor).all() for tensor in saved["model"].values())
    loaded = load(checkpoint).state_dict()  # the kept checkpoint loads, with the step-3 weights
    assert all(torch.equal(loaded[name], saved["model"][name]) for name in saved["model"])
    rows = read_log(workdir / "models" / "svfnet" / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, failing + 1))
    assert all(not r["error"] for r in rows[:-1])
    assert re.match(why, rows[-1]["error"]), rows[-1]
    if poison == "loss":
        assert rows[-1]["loss"] == "nan"


def test_a_stopped_run_is_one_clear_line_on_the_command_line(workdir, monkeypatch, capsys):
    import svfnet.training.train as train_module
    from svfnet.cli import main

    real_loss = train_module.masked_mse
    monkeypatch.setattr(train_module, "masked_mse", lambda *args: real_loss(*args) * float("inf"))
    assert (
        main(
            [
                "train",
                str(workdir),
                "--no-progress",
                "--steps",
                "3",
                "--batch-size",
                "1",
                "--widths",
                "8",
                "16",
                "16",
                "16",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert error.startswith("svfnet train: error: training stopped at step 1: the loss is inf"), error
    assert "no checkpoint was written before it (the first was due at step 50)" in error


def test_validation_never_takes_exp_of_a_non_finite_prediction(workdir, monkeypatch):
    """validate() says the prediction is not finite (never exp()'s error from deep inside); in
    training that stops the run at the validation's step and keeps the checkpoint before it."""
    from svfnet.training.model import SVFNet
    from svfnet.training.pairs import ReferenceTargets
    from svfnet.training.train import TrainingDiverged, validate

    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    batch = ReferenceTargets(workdir, cohort).validation(3)
    model = SVFNet(SMALL)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(
        TrainingDiverged,
        match=r"validate\(\): the network's prediction on the 3 validation pairs has "
        r"\d+ non-finite values",
    ) as raised:
        validate(model, batch, torch.device("cpu"), "heart")
    assert "exp()" not in str(raised.value) and model.training  # left as it was found

    real_forward = SVFNet.forward
    monkeypatch.setattr(
        SVFNet,
        "forward",
        lambda self, pair: real_forward(self, pair) * (1.0 if self.training else float("inf")),
    )
    config = TrainConfig(steps=6, batch_size=1, validate_every=3, checkpoint_every=2, model=SMALL)
    with pytest.raises(
        TrainingDiverged,
        match=r"stopped at step 3: validate\(\): .* non-finite values .* the last "
        "good checkpoint, step 2, is kept",
    ):
        run_training(workdir, config, progress=False)
    assert torch.load(workdir / "models" / "svfnet" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert "non-finite" in read_log(workdir / "models" / "svfnet" / "log.csv")[-1]["error"]


def test_non_finite_or_negative_settings_are_refused_up_front(workdir, capsys):
    from svfnet.cli import main

    for name, value in [
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("learning_rate", -1e-3),
        ("random_amplitude_vox", float("nan")),
        ("random_smoothness_vox", float("inf")),
    ]:
        with pytest.raises(ValueError, match=rf"'{name}' must be a finite number > 0, got {value!r}"):
            TrainConfig(**{name: value})
    for name, value in [("seed", -1), ("shift_vox", 1.5), ("shift_vox", -2)]:
        with pytest.raises(ValueError, match=rf"'{name}' must be an integer >= 0"):
            TrainConfig(**{name: value})
    for flag, value, wanted in [
        ("--lr", "nan", "a finite number > 0"),
        ("--lr", "inf", "a finite number > 0"),
        ("--lr", "0", "a finite number > 0"),
        ("--seed", "-1", "an integer >= 0"),
        ("--steps", "0", "an integer >= 1"),
        ("--shift", "-1", "an integer >= 0"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["train", str(workdir), "--no-progress", flag, value])
        assert exited.value.code == 2
        assert f"argument {flag}: must be {wanted}, got '{value}'" in capsys.readouterr().err
    assert not (workdir / "models").exists()  # refused before any work


def test_a_checkpoint_with_non_finite_weights_is_not_resumed(workdir):
    config = TrainConfig(steps=1, batch_size=1, model=SMALL)
    path = run_training(workdir, config, run="r", progress=False).checkpoint
    saved = torch.load(path, weights_only=True)
    name = next(iter(saved["model"]))
    saved["model"][name].view(-1)[0] = float("nan")
    torch.save(saved, path)
    with pytest.raises(ValueError, match=rf"cannot be resumed: the model's '{name}' has 1 non-finite values"):
        run_training(workdir, dataclasses.replace(config, steps=2), run="r", resume=True, progress=False)


# ------------------------------------------------------------------------------------- recipes
def training_pair_dice(checkpoint: Path, workdir: Path) -> tuple[float, float]:
    """(identity, registered) mean Dice over the training pairs (s0, s_n) and (s_n, s0)."""
    model = load(checkpoint)
    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    pairs = [(0, n) for n in (1, 2, 3)] + [(n, 0) for n in (1, 2, 3)]
    with torch.no_grad():
        stacked = torch.from_numpy(
            np.stack([np.stack([cohort.images[m], cohort.images[f]]) for m, f in pairs])
        )
        disp = fields.exp(model(stacked))
    warped = fields.warp_labels(cohort.labels[[m for m, _ in pairs]], disp.numpy(), mode="onehot")
    after = np.mean(
        [
            np.mean(list(dice_per_region(w, cohort.labels[f]).values()))
            for w, (_, f) in zip(warped, pairs, strict=True)
        ]
    )
    before = np.mean(
        [np.mean(list(dice_per_region(cohort.labels[m], cohort.labels[f]).values())) for m, f in pairs]
    )
    return float(before), float(after)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_overlap_recipe_fits_the_references_and_beats_identity(workdir, precision):
    """The recipe of issue 14 (SVF term plus soft Dice of the warped labels), in both precisions:
    each term of the loss falls, and registration beats not registering."""
    config = TrainConfig(
        steps=200,
        batch_size=4,
        learning_rate=3e-3,
        shift_vox=0,
        validate_every=200,
        checkpoint_every=200,
        validation_pairs=6,
        recipe="overlap",
        precision=precision,
        model=SMALL,
    )
    checkpoint = run_training(workdir, config, progress=False).checkpoint
    rows = read_log(workdir / "models" / "svfnet" / "log.csv")
    for term in ("svf_loss", "overlap_loss"):
        first = np.mean([float(r[term]) for r in rows[:5]])
        last = np.mean([float(r[term]) for r in rows[-20:]])
        assert last < first / 2, (term, first, last)
    weight = config.overlap_weight
    assert all(
        float(r["loss"]) == pytest.approx(float(r["svf_loss"]) + weight * float(r["overlap_loss"]), rel=1e-5)
        for r in rows
    )
    before, after = training_pair_dice(checkpoint, workdir)
    assert after > before + 0.05, (before, after)
    weights = torch.load(checkpoint, weights_only=True)["model"]
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_the_overlap_term_learns_what_the_references_do_not_say(tmp_path):
    """With reference SVFs of zero (the identity), the paper's loss can only learn the identity;
    the overlap recipe's soft Dice term moves the labels onto the fixed ones all the same."""
    svfs = deformed_cohort(tmp_path, count=4)
    write_split(tmp_path, train=["s0", "s1", "s2", "s3"])
    write_exact_references(tmp_path, {s: np.zeros_like(v) for s, v in svfs.items()})
    common = dict(
        steps=150,
        batch_size=4,
        learning_rate=3e-3,
        shift_vox=0,
        validate_every=150,
        checkpoint_every=150,
        validation_pairs=6,
        model=SMALL,
    )
    paper = run_training(
        tmp_path, TrainConfig(recipe="paper", **common), run="paper", progress=False
    ).checkpoint
    overlap = run_training(
        tmp_path, TrainConfig(recipe="overlap", overlap_weight=10.0, **common), run="overlap", progress=False
    ).checkpoint
    identity, paper_dice = training_pair_dice(paper, tmp_path)
    _, overlap_dice = training_pair_dice(overlap, tmp_path)
    assert abs(paper_dice - identity) < 0.02, (identity, paper_dice)
    assert overlap_dice > identity + 0.05, (identity, overlap_dice)


def test_recipe_settings_are_checked():
    with pytest.raises(ValueError, match="'recipe' must be one of 'paper', 'overlap'"):
        TrainConfig(recipe="dice")
    with pytest.raises(ValueError, match="'overlap_weight' must be a number from 0 to 1000"):
        TrainConfig(overlap_weight=-1.0)
    with pytest.raises(ValueError, match="'rotation_deg' must be a number from 0 to 180"):
        TrainConfig(rotation_deg=float("nan"))
    with pytest.raises(ValueError, match="'precision' must be one of"):
        TrainConfig(precision="float16")
    with pytest.raises(ValueError, match="'intensity_augmentation' must be true or false"):
        TrainConfig(intensity_augmentation=1)
    # a run saved before these keys existed trained with the paper's loss, whatever today's default
    saved = TrainConfig(recipe="overlap", overlap_weight=2.0, rotation_deg=5.0).to_dict()
    for key in ("recipe", "overlap_weight", "intensity_augmentation", "rotation_deg", "precision"):
        saved.pop(key)
    old = TrainConfig.from_dict(saved)
    assert (old.recipe, old.rotation_deg, old.intensity_augmentation) == ("paper", 0.0, False)
    assert old.precision == "float32"
