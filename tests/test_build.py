"""What the extension was built with, and how the CPU launchers pick their threads."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import svfnet
from svfnet import _core
from svfnet.ops import backend as _backend
from svfnet.ops import fields
from tests.conftest import requires_cuda, smooth_field


def test_build_info_describes_the_extension():
    info = svfnet.build_info()
    assert info["version"] == svfnet.__version__
    assert info["openmp"] is True
    assert info["cpu_loops"] in ("avx2", "baseline")
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_architectures"] and "native" not in info["cuda_architectures"]


@pytest.mark.cuda  # on the GPU machine too: make gpu-check selects it
@pytest.mark.skipif(
    os.environ.get("SVFNET_EXPECT_CUDA_BUILD") != "1",
    reason="set SVFNET_EXPECT_CUDA_BUILD=1 where the build had nvcc (.ci/run does when nvcc is on PATH)",
)
def test_cuda_launchers_compiled_where_nvcc_was_found():
    assert shutil.which("nvcc") is not None
    assert svfnet.build_info()["cuda"] is True
    assert hasattr(_core, "warp_cuda") and hasattr(_core, "exp_cuda")


@pytest.mark.cuda  # on the GPU machine too: make gpu-check selects it
def test_cuda_available_means_launchers_and_a_device(monkeypatch):
    # against torch's own view of the machine where the launchers are built (an independent count)
    if svfnet.build_info()["cuda"]:
        assert svfnet.cuda_available() == torch.cuda.is_available()
    else:
        assert not svfnet.cuda_available()
    # each half of the rule alone is not enough: launchers without a device, a device without launchers
    built = dict(_core.build_info())
    monkeypatch.setattr(_core, "build_info", lambda: {**built, "cuda": True})
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 0)
    assert svfnet.cuda_available() is False
    monkeypatch.setattr(_core, "build_info", lambda: {**built, "cuda": False})
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 1)
    assert svfnet.cuda_available() is False
    monkeypatch.setattr(_core, "build_info", lambda: {**built, "cuda": True})
    assert svfnet.cuda_available() is True


def test_cpu_launchers_use_torch_thread_count(rng):
    before = torch.get_num_threads()
    v = smooth_field(rng, (9, 8, 7), amplitude=2.0)
    try:
        torch.set_num_threads(1)
        assert _backend.cpu_threads() == 1
        one = fields.exp(v)
        torch.set_num_threads(2)
        assert _backend.cpu_threads() == 2
        two = fields.exp(v)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)  # each voxel is computed alone: no reduction order


def test_extension_refuses_arrays_it_would_have_to_copy():
    field = np.zeros((1, 3, 4, 5, 6), np.float32)
    with pytest.raises(TypeError):  # float64 output: binding it would need a copy, never allowed
        _core.compose_cpu(field, field, field.astype(np.float64), 1)
    with pytest.raises(TypeError):  # non-contiguous
        _core.compose_cpu(field, field, np.zeros((1, 3, 4, 5, 12), np.float32)[..., ::2], 1)
    with pytest.raises(ValueError, match="'w'"):
        _core.compose_cpu(field, np.zeros((1, 3, 4, 5, 7), np.float32), field, 1)


@requires_cuda
def test_cuda_matches_cpu_on_every_operation(rng):
    grid = (9, 8, 7)
    v = smooth_field(rng, grid, amplitude=2.0)
    image = rng.random(grid, dtype=np.float32)
    labels = rng.integers(0, 4, size=grid).astype(np.int32)
    on_gpu = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
    pairs = [
        (fields.warp(image, v), fields.warp(on_gpu(image), on_gpu(v))),
        (
            fields.warp_labels(labels, v, mode="onehot"),
            fields.warp_labels(on_gpu(labels), on_gpu(v), mode="onehot"),
        ),
        (fields.compose(v, v), fields.compose(on_gpu(v), on_gpu(v))),
        (fields.exp(v), fields.exp(on_gpu(v))),
        (fields.jacobian_det(v), fields.jacobian_det(on_gpu(v))),
        (fields.log(fields.exp(v)), fields.log(fields.exp(on_gpu(v)))),
    ]
    for cpu, gpu in pairs:
        assert gpu.is_cuda
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-4)


def test_a_missing_cuda_launcher_is_one_clear_error(monkeypatch):
    # every CUDA call of svfnet.ops goes through backend.cuda_entry: a build without the launcher says so
    with pytest.raises(RuntimeError, match=r"built without its CUDA launchers.*move the tensors to the CPU"):
        _backend.cuda_entry("no_such_op_cuda", "tensors")
    monkeypatch.delattr(_core, "gauss_cuda_float32", raising=False)
    with pytest.raises(RuntimeError, match="built without its CUDA launchers"):
        _backend.cuda_entry("gauss_cuda_float32")
    assert _backend.cuda_entry("warp_cpu") is _core.warp_cpu
