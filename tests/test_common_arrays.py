"""The shared argument checks (svfnet.common.arrays): what they accept, return and refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfnet.common.arrays import as_numpy, checked_field, checked_real_array, checked_spacing, checked_volume


def test_as_numpy_takes_arrays_tensors_and_sequences():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 5))
    assert as_numpy("f", "x", a) is a
    t = torch.tensor(a, requires_grad=True)
    np.testing.assert_array_equal(as_numpy("f", "x", t), a)
    np.testing.assert_array_equal(as_numpy("f", "x", [[1, 2], [3, 4]]), np.array([[1, 2], [3, 4]]))
    with pytest.raises(TypeError, match=r"f\(\): 'x' must be a NumPy array or a torch tensor, got dict"):
        as_numpy("f", "x", {})


def test_checked_volume_kinds():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32)
    out = checked_volume("f", "image", image)
    assert out.dtype == np.float64 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, image.astype(np.float64))
    assert checked_volume("f", "image", image[:, ::-1], dtype=np.float32).flags.c_contiguous
    labels = rng.integers(0, 4, size=(4, 5, 6)).astype(np.uint8)
    assert checked_volume("f", "labels", labels, kind="labels").dtype == np.int64
    mask = labels > 1
    assert checked_volume("f", "mask", mask, kind="mask") is mask


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (np.zeros((4, 5)), {}, r"'v' must be a non-empty \(I, J, K\) volume, got shape \(4, 5\)"),
        (np.zeros((4, 0, 5)), {}, "non-empty"),
        (np.zeros((4, 5, 6)), {"shape": (4, 5, 7), "shape_of": "w"}, r"but 'w' has \(4, 5, 7\)"),
        (np.zeros((4, 5, 6), np.int32), {"kind": "mask"}, "must be a boolean mask"),
        (np.zeros((4, 5, 6)), {"kind": "labels"}, "must hold integer labels"),
        (np.zeros((4, 5, 6), np.complex64), {}, "must be a real-valued image"),
        (np.full((4, 5, 6), np.nan), {}, "holds 120 NaN or infinite values"),
    ],
)
def test_checked_volume_refuses(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        checked_volume("f", "v", x, **kwargs)


def test_checked_field():
    rng = np.random.default_rng(2)
    field = rng.normal(size=(3, 4, 5, 6))
    out = checked_field("f", "disp", field, (4, 5, 6), "image")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, field, rtol=1e-6)
    with pytest.raises(ValueError, match=r"must be a \(3, I, J, K\) field"):
        checked_field("f", "disp", field[:2], (4, 5, 6), "image")
    with pytest.raises(ValueError, match=r"has grid \(4, 5, 6\) but 'image' has \(4, 5, 7\)"):
        checked_field("f", "disp", field, (4, 5, 7), "image")
    with pytest.raises(ValueError, match="floating-point"):
        checked_field("f", "disp", field.astype(np.int64), (4, 5, 6), "image")
    field[0, 1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="holds 1 NaN or infinite"):
        checked_field("f", "disp", field, (4, 5, 6), "image")


def test_checked_spacing():
    assert checked_spacing("f", np.array([1, 1.5, 8])) == (1.0, 1.5, 8.0)
    for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 2.0), "abc", None):
        with pytest.raises(ValueError, match=r"f\(\): 'spacing' must be three positive numbers"):
            checked_spacing("f", bad)


def test_checked_real_array():
    a = np.arange(6.0).reshape(2, 3)
    assert checked_real_array("f", "a", a, (2, 3)) is a
    for bad, message in (
        ([1.0], "must be a NumPy array"),
        (np.zeros(3), "must be 2-D or 3-D"),
        (np.zeros((0, 2)), "must not be empty"),
        (np.array([["a"]]), "must hold real numbers"),
        (np.array([[np.nan]]), "must be finite"),
    ):
        with pytest.raises(ValueError, match=message):
            checked_real_array("f", "a", bad, (2, 3))
