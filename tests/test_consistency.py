"""svfnet.training.consistency: the inverse-consistency term, against svfnet.ops.fields, finite differences in float64,
and the analytic case exp(v) ∘ exp(-v) = id; and training with it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from svfnet.ops import fields
from svfnet.training.consistency import compose, inverse_consistency_loss, velocity_inverse_consistency
from svfnet.training.model import SVFNetConfig
from svfnet.training.pairs import Batch, augment, draw_batch
from svfnet.training.train import run_training
from svfnet.training.train_config import TrainConfig
from tests.conftest import smooth_field
from tests.pipeline_fixtures import GRID, deformed_cohort, write_exact_references, write_split

SMALL = SVFNetConfig(widths=(8, 16, 16, 16), grid=GRID, spacing_mm=(4.0, 4.0, 10.0))


def test_compose_is_fields_compose(rng):
    """The torch composition (border clamped) computes what svfnet's kernel does, past the border too."""
    grid = (9, 8, 6)
    u = smooth_field(rng, grid, amplitude=2.0, batch=2)
    w = smooth_field(rng, grid, amplitude=3.0, batch=2)
    ours = compose(torch.from_numpy(u).double(), torch.from_numpy(w).double()).numpy()
    np.testing.assert_allclose(ours, fields.compose(u, w), atol=2e-5, rtol=0)


def test_the_gradient_matches_finite_differences_in_float64(rng):
    """torch.autograd.gradcheck (central differences, float64) on a tiny grid, in both fields and
    with a mask; displacements below half a voxel keep the samples inside trilinear cells."""
    grid = (4, 5, 3)
    forward = torch.tensor(
        smooth_field(rng, grid, amplitude=0.4, sigma=1.0, batch=1), dtype=torch.float64, requires_grad=True
    )
    reverse = torch.tensor(
        smooth_field(rng, grid, amplitude=0.4, sigma=1.0, batch=1), dtype=torch.float64, requires_grad=True
    )
    # keep every sample off the cell edges, where the trilinear derivative jumps
    with torch.no_grad():
        forward.add_(0.25)
        reverse.sub_(0.2)
    weights = torch.tensor(rng.random((1, 1, *grid)) > 0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f, r: inverse_consistency_loss(f, r, weights, 1 - weights),
        (forward, reverse),
        eps=1e-6,
        atol=1e-7,
    )


def test_exp_of_v_and_of_minus_v_are_inverse_up_to_the_discretisation():
    """exp(v) ∘ exp(-v) = id for an SVF v: the term is only the scaling and squaring's and the
    trilinear interpolation's error, second order in the field's derivatives (here ~1e-4 of |v|²),
    against about |2v|² for two fields that are not inverse."""
    grid = (24, 24, 8)
    x = np.indices(grid, dtype=np.float64)
    v = np.stack(
        [
            1.5 * np.sin(2 * np.pi * x[1] / 24) * np.cos(2 * np.pi * x[2] / 16),
            1.2 * np.cos(2 * np.pi * x[0] / 24),
            0.3 * np.sin(2 * np.pi * x[0] / 24) * np.sin(2 * np.pi * x[1] / 24),
        ]
    )[None].astype(np.float32)
    mask = np.zeros((1, 1, *grid), np.float32)
    mask[..., 4:20, 4:20, 1:7] = 1  # away from the border, where composition clamps
    v_t, mask_t = torch.from_numpy(v), torch.from_numpy(mask)
    inverse = float(velocity_inverse_consistency(v_t, -v_t, mask_t, mask_t))
    same = float(velocity_inverse_consistency(v_t, v_t, mask_t, mask_t))
    scale = float((v_t.pow(2) * mask_t).sum() / (3 * mask_t.sum()))
    assert inverse < 1e-3 * scale, (inverse, scale)
    assert same > scale, (same, scale)  # exp(v) ∘ exp(v) ≈ exp(2v): |2v|² = 4 |v|² (3 components averaged)


def test_velocity_term_gradient_flows_to_both_predictions(rng):
    grid = (8, 8, 4)
    forward = torch.tensor(smooth_field(rng, grid, amplitude=1.0, batch=2), requires_grad=True)
    reverse = torch.tensor(smooth_field(rng, grid, amplitude=1.0, batch=2), requires_grad=True)
    loss = velocity_inverse_consistency(forward, reverse)
    loss.backward()
    assert float(loss.detach()) > 0
    assert float(forward.grad.abs().sum()) > 0 and float(reverse.grad.abs().sum()) > 0
    # a step against the gradient lowers the term
    with torch.no_grad():
        lower = velocity_inverse_consistency(forward - 0.05 * forward.grad, reverse - 0.05 * reverse.grad)
    assert float(lower) < float(loss.detach())


@pytest.fixture
def workdir(tmp_path):
    svfs = deformed_cohort(tmp_path, count=4)
    write_split(tmp_path, train=["s0", "s1", "s2", "s3"])
    write_exact_references(tmp_path, svfs)
    return tmp_path


def test_a_batch_holds_pairs_then_their_reverses_augmented_alike(workdir):
    """Pair n and pair n + B/2 are one pair both ways, shifted alike (the swapped images are equal
    voxel for voxel), and each has its own reference as target."""
    from svfnet.references.store import ReferenceStore
    from svfnet.training.pairs import Cohort, ReferenceTargets

    cohort = Cohort.load(workdir, ["s0", "s1", "s2", "s3"])
    source = ReferenceTargets(workdir, cohort)
    shifted = draw_batch(
        source,
        np.random.default_rng(3),
        TrainConfig(batch_size=6, inverse_consistency_weight=1.0, shift_vox=3),
        cohort.spacing_mm,
    )
    assert isinstance(shifted, Batch) and len(shifted.moving) == 6
    np.testing.assert_array_equal(shifted.moving[:3], shifted.fixed[3:])
    np.testing.assert_array_equal(shifted.fixed[:3], shifted.moving[3:])
    np.testing.assert_array_equal(shifted.moving_labels[:3], shifted.fixed_labels[3:])
    np.testing.assert_array_equal(shifted.fixed_labels[:3], shifted.moving_labels[3:])
    assert not np.array_equal(
        shifted.moving,
        draw_batch(
            source,
            np.random.default_rng(3),
            TrainConfig(batch_size=6, inverse_consistency_weight=1.0, shift_vox=0),
            cohort.spacing_mm,
        ).moving,
    )  # it did shift

    plain = draw_batch(
        source,
        np.random.default_rng(3),
        TrainConfig(batch_size=6, inverse_consistency_weight=1.0, shift_vox=0),
        cohort.spacing_mm,
    )
    store = ReferenceStore(workdir)

    def which(image: np.ndarray) -> int:
        return next(n for n in range(4) if np.array_equal(cohort.images[n], image))

    for n in range(3):
        m, f = which(plain.moving[n]), which(plain.fixed[n])
        np.testing.assert_array_equal(plain.target[n], store.svf(cohort.ids[m], cohort.ids[f]))
        np.testing.assert_array_equal(plain.target[3 + n], store.svf(cohort.ids[f], cohort.ids[m]))
    # without the term, a batch is batch_size pairs drawn as before
    ordinary = draw_batch(
        source, np.random.default_rng(3), TrainConfig(batch_size=6, shift_vox=3), cohort.spacing_mm
    )
    expected = augment(
        source.sample(np.random.default_rng(3), 6),
        _after_sample(source, 6),
        TrainConfig(batch_size=6, shift_vox=3),
        cohort.spacing_mm,
    )
    np.testing.assert_array_equal(ordinary.moving, expected.moving)


def _after_sample(source, size: int) -> np.random.Generator:  # noqa: ANN001
    rng = np.random.default_rng(3)
    source.sample(rng, size)
    return rng


def test_training_with_inverse_consistency_lowers_every_term(workdir):
    config = TrainConfig(
        steps=200,
        batch_size=4,
        learning_rate=3e-3,
        shift_vox=0,
        validate_every=200,
        checkpoint_every=200,
        validation_pairs=6,
        inverse_consistency_weight=1.0,
        model=SMALL,
    )
    run_training(workdir, config, progress=False)
    with (workdir / "models" / "svfnet" / "log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for term in ("svf_loss", "overlap_loss"):
        first = np.mean([float(r[term]) for r in rows[:5]])
        last = np.mean([float(r[term]) for r in rows[-20:]])
        assert last < first / 2, (term, first, last)
    weight = config.inverse_consistency_weight
    assert all(float(r["consistency_loss"]) >= 0 for r in rows)
    assert all(
        float(r["loss"])
        == pytest.approx(
            float(r["svf_loss"])
            + config.overlap_weight * float(r["overlap_loss"])
            + weight * float(r["consistency_loss"]),
            rel=1e-5,
        )
        for r in rows
    )
    assert float(rows[-1]["val_dice"]) > float(rows[-1]["identity_dice"])


def test_inverse_consistency_settings_are_checked():
    with pytest.raises(ValueError, match="'batch_size' must be even"):
        TrainConfig(batch_size=3, inverse_consistency_weight=1.0)
    with pytest.raises(ValueError, match="'inverse_consistency_weight' must be a number from 0 to 1000"):
        TrainConfig(inverse_consistency_weight=float("inf"))
    assert "inverse consistency" in TrainConfig(inverse_consistency_weight=0.5).summary()
    assert TrainConfig.from_dict(TrainConfig().to_dict()).inverse_consistency_weight == 0.0


def test_the_command_line_sets_the_weight_and_refuses_an_odd_batch(workdir):
    from svfnet.cli import main
    from svfnet.training.train import saved_config

    common = [
        "train",
        str(workdir),
        "--no-progress",
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--widths",
        "8",
        "16",
        "16",
        "16",
    ]
    assert main([*common, "--run", "ic", "--batch-size", "2", "--inverse-consistency", "0.5"]) == 0
    assert saved_config(workdir, "ic").inverse_consistency_weight == 0.5
    assert main([*common, "--run", "odd", "--batch-size", "3", "--inverse-consistency", "0.5"]) == 2
    assert not (workdir / "models" / "odd" / "checkpoint.pt").exists()
