"""Shared fixtures: random smooth fields, float64 references, and the devices to run on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

import svfnet

# Odd, unequal grids catch axis mix-ups; the last one has a flat axis (a single slice).
GRIDS = [(5, 6, 7), (9, 4, 6), (6, 5, 1)]

DEVICES = ["cpu"] + (["cuda"] if svfnet.cuda_available() else [])
# (array kind, device) pairs every operation is checked on; the CUDA ones only where a device is
# (and CuPy only where it is installed).
KINDS = [("numpy", "cpu"), ("torch", "cpu")] + [("torch", "cuda")] * ("cuda" in DEVICES)
if "cuda" in DEVICES:
    try:
        import cupy  # noqa: F401

        KINDS.append(("cupy", "cuda"))
    except ImportError:
        pass
_skip_without_cuda = pytest.mark.skipif(
    not svfnet.cuda_available(), reason="needs a CUDA device and the CUDA launchers"
)


def requires_cuda(test):
    """Skipped without a usable CUDA device; selected by ``pytest -m cuda`` (``make gpu-check``)."""
    return pytest.mark.cuda(_skip_without_cuda(test))


def pytest_collection_modifyitems(config, items):
    """``pytest -m cuda`` selects every test that runs on a CUDA device: those marked, and the cases of
    the tests parametrized over :data:`DEVICES` or :data:`KINDS` whose device is ``"cuda"``."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(value, str) and value == "cuda" for value in params.values()):
            item.add_marker(pytest.mark.cuda)


def smooth_field(
    rng: np.random.Generator, grid, amplitude: float, sigma: float = 2.0, batch: int | None = None
):
    """A random smooth displacement (3, *grid) (or (batch, 3, *grid)) whose largest component is ``amplitude``."""
    shape = (3, *grid) if batch is None else (batch, 3, *grid)
    noise = rng.standard_normal(shape)
    axes_sigma = [0] * (len(shape) - 3) + [sigma if n > 1 else 0 for n in grid]
    field = gaussian_filter(noise, sigma=axes_sigma, mode="nearest")
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


def grid_positions(grid, disp) -> np.ndarray:
    """x + disp(x) in float64, (3, *grid)."""
    return np.indices(grid, dtype=np.float64) + np.asarray(disp, dtype=np.float64)


def sample_clamped(field, positions) -> np.ndarray:
    """Trilinear samples of each component of ``field`` (C, *grid), border clamped (float64)."""
    return np.stack(
        [map_coordinates(np.asarray(c, np.float64), positions, order=1, mode="nearest") for c in field]
    )


def to_kind(x: np.ndarray, kind: str, device: str = "cpu"):
    if kind == "numpy":
        return x
    if kind == "cupy":
        import cupy

        return cupy.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread is several times faster than two on a busy machine, and reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
