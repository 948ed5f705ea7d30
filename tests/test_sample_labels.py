"""sample_labels (the one-hot label vote at positions of another grid, used by the preparation)
against SciPy: each label's indicator interpolated with map_coordinates in float64, then the argmax."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from svfnet.data.transform import resample_labels
from svfnet.ops.resample import sample_labels
from tests.conftest import KINDS, as_numpy, to_kind


def scipy_vote(labels: np.ndarray, positions: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The vote and, per position, the margin between the best and the second-best indicator."""
    values = np.unique(np.concatenate([[0], labels.ravel()]))
    weights = np.stack(
        [
            map_coordinates(
                (labels == v).astype(np.float64), positions, order=1, mode=mode, cval=float(v == 0)
            )
            for v in values
        ]
    )
    order = np.sort(weights, axis=0)
    return values[np.argmax(weights, axis=0)], order[-1] - order[-2]


@pytest.mark.parametrize("kind,device", KINDS, ids=[f"{k}-{d}" for k, d in KINDS])
@pytest.mark.parametrize("mode", ["constant", "nearest"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sample_labels_matches_scipy(mode, seed, kind, device):
    rng = np.random.default_rng(seed)
    grid = tuple(int(n) for n in rng.integers(3, 12, size=3))
    labels = rng.integers(0, 5, size=grid).astype(np.int16)
    # random positions, and exact ones on the grid, at half voxels and just outside it (the border rules)
    random = np.stack([rng.uniform(-2.0, n + 1.0, size=500) for n in grid])
    halves = np.stack([rng.integers(-2, 2 * n + 2, size=300) / 2.0 for n in grid])
    positions = np.concatenate([random, halves], axis=1).astype(np.float32).astype(np.float64)
    expected, margin = scipy_vote(labels, positions, mode)
    got = as_numpy(sample_labels(to_kind(labels, kind, device), to_kind(positions, kind, device), mode=mode))
    assert got.dtype == labels.dtype and got.shape == (800,)
    clear = margin > 1e-5  # exact ties break to the smaller label in both; near-ties may round either way
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(got[clear], expected[clear])
    ties = margin == 0
    np.testing.assert_array_equal(got[ties], expected[ties])
    # the same through resample_labels (uint8, positions of any shape)
    np.testing.assert_array_equal(
        resample_labels(labels, positions.reshape(3, 20, 40), mode=mode), got.reshape(20, 40)
    )


def test_sample_labels_refuses_bad_input():
    labels = np.zeros((4, 4, 4), np.int32)
    with pytest.raises(ValueError, match=r"sample_labels\(\): 'mode' must be"):
        sample_labels(labels, np.zeros((3, 2)), mode="linear")
    with pytest.raises(ValueError, match=r"'positions' must be \(3, \.\.\.\)"):
        sample_labels(labels, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="'positions' has 1 non-finite"):
        sample_labels(labels, np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(TypeError, match="'labels' must have a int or bool dtype"):
        sample_labels(labels.astype(np.float32), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"'labels' must be a non-empty \(I, J, K\)"):
        sample_labels(np.zeros((4, 4), np.int32), np.zeros((3, 2)))
