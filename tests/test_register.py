"""svfnet.register (svfnet.registration.arrays): one pass, one exponential, one warp, with checked inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfnet.ops import fields
from svfnet.registration.arrays import register
from svfnet.training.model import SVFNet, SVFNetConfig, save_checkpoint
from tests.pipeline_fixtures import heart


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(16, 16, 4)))
    with torch.no_grad():
        net.head.weight.normal_(std=0.05)  # a non-trivial SVF
    return net.eval()


@pytest.mark.parametrize("symmetric", [True, False])
def test_register_composes_network_exp_and_warp(model, symmetric):
    """The SVF is the network's (symmetric: averaged with the negated SVF of the reversed pair,
    each direction run on its own here), then exp and warp of it."""
    image, labels = heart()
    moving, fixed = image, np.roll(image, 1, axis=0)
    result = register(moving, fixed, model, moving_labels=labels, symmetric=symmetric)
    with torch.no_grad():
        svf = model(torch.from_numpy(np.stack([moving, fixed])[None]))[0].numpy()
        if symmetric:
            svf = (svf - model(torch.from_numpy(np.stack([fixed, moving])[None]))[0].numpy()) / 2
    np.testing.assert_allclose(result.svf, svf, atol=1e-5)
    np.testing.assert_allclose(result.displacement, fields.exp(result.svf), atol=1e-6)
    np.testing.assert_allclose(result.warped, fields.warp(moving, fields.exp(result.svf)), atol=1e-6)
    np.testing.assert_array_equal(
        result.warped_labels, fields.warp_labels(labels, fields.exp(result.svf), mode="onehot")
    )
    assert result.warped_labels.dtype == labels.dtype and result.seconds > 0


def test_the_symmetric_registration_of_the_reversed_pair_is_the_inverse(model):
    """Symmetric by construction: the reversed pair's SVF is the negation, so its exponential is the
    inverse map (exp(-v) = exp(v)^-1); one direction alone is not (a network is not antisymmetric)."""
    image, _ = heart()
    moving, fixed = image, np.roll(image, 2, axis=1)
    there, back = register(moving, fixed, model), register(fixed, moving, model)
    np.testing.assert_allclose(back.svf, -there.svf, atol=1e-6)
    assert np.abs(there.svf).max() > 0.01
    one_way = register(moving, fixed, model, symmetric=False).svf
    other_way = register(fixed, moving, model, symmetric=False).svf
    assert np.abs(one_way + other_way).max() > 1e-3


def test_register_loads_a_checkpoint(model, tmp_path):
    image, _ = heart()
    save_checkpoint(tmp_path / "m.pt", model)
    np.testing.assert_allclose(
        register(image, image, tmp_path / "m.pt").svf, register(image, image, model).svf, atol=1e-6
    )


def test_register_bad_inputs(model):
    image, labels = heart()
    with pytest.raises(ValueError, match="on one grid"):
        register(image, image[:8], model)
    with pytest.raises(ValueError, match="'fixed' has non-finite"):
        register(image, np.full_like(image, np.nan), model)
    with pytest.raises(ValueError, match="'moving_labels'"):
        register(image, image, model, moving_labels=labels[:8])
    with pytest.raises(ValueError, match="divisible by 8"):
        register(np.zeros((12, 16, 4), np.float32), np.zeros((12, 16, 4), np.float32), model)
    with pytest.raises(TypeError, match="'model'"):
        register(image, image, object())


def test_refinement_is_lcc_demons_started_from_the_network_svf(model):
    from svfnet.baselines import lcc_demons
    from svfnet.registration.arrays import REFINEMENT

    image, labels = heart()
    moving, fixed = image, np.roll(image, 1, axis=0)
    plain = register(moving, fixed, model)
    spacing = tuple(model.config.spacing_mm)
    for refine, overrides in (
        (True, REFINEMENT),
        ({"iterations": (2, 3)}, {**REFINEMENT, "iterations": (2, 3)}),
    ):
        refined = register(moving, fixed, model, moving_labels=labels, refine=refine)
        expected = lcc_demons.register(moving, fixed, spacing=spacing, initial_svf=plain.svf, **overrides)
        np.testing.assert_array_equal(refined.svf, expected)
        assert not np.allclose(refined.svf, plain.svf, atol=1e-3)  # the demons moved it
        np.testing.assert_allclose(refined.displacement, fields.exp(expected), atol=1e-6)
        np.testing.assert_array_equal(
            refined.warped_labels, fields.warp_labels(labels, fields.exp(expected), mode="onehot")
        )
        assert 0 < refined.refinement_seconds < refined.seconds
    assert plain.refinement_seconds == 0.0


def test_bad_refinement_settings_are_refused_before_any_work(model, monkeypatch):
    from svfnet.registration import arrays as registration

    image, _ = heart()
    monkeypatch.setattr(registration, "predict_svf", lambda *a, **k: pytest.fail("the network ran"))
    for refine, error in (("yes", TypeError), ({"sigma": 1.0}, TypeError), ({"iterations": -1}, ValueError)):
        with pytest.raises(error, match="'refine'"):
            register(image, image, model, refine=refine)
