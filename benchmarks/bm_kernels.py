"""Gaussian kernel sums against a naive torch implementation and pykeops (CPU), and one
template-to-subject LDDMM registration on the synthetic cohort.

Run: ``python -m pytest benchmarks/bm_kernels.py --benchmark-only`` (pykeops: ``pip install
'svfnet[bench]'``; its compilation is done before timing and reported apart, in the benchmark's
``extra_info`` and in the skip/compile lines printed with ``-s``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from svfnet.ops import kernels

SIZES = {"2k": 2_000, "20k": 20_000}
SIGMA = 0.5


@pytest.fixture(params=list(SIZES), scope="module")
def case(request):
    n = SIZES[request.param]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float32))
    return request.param, x, y, b


def naive_sum(x, y, b):
    """What one writes in torch: the dense N × M kernel matrix."""
    return torch.exp(-(torch.cdist(x, y) ** 2) / SIGMA**2) @ b


_keops_compile_s: dict[str, float] = {}


def keops_sum():
    """pykeops' lazy reduction; None (with the reason) when pykeops cannot run here."""
    try:
        from pykeops.torch import LazyTensor
    except ImportError as error:
        pytest.skip(f"pykeops not installed (pip install 'svfnet[bench]'): {error}")

    def run(x, y, b):
        squared = ((LazyTensor(x[:, None, :]) - LazyTensor(y[None, :, :])) ** 2).sum(-1)
        return (-squared / SIGMA**2).exp() @ b

    return run


def _keops_ready(run, x, y, b, backward: bool, label: str):
    """Compiles (or loads) pykeops' formulas outside the timing; records how long that took."""
    try:
        started = time.perf_counter()
        small = [t[:100].detach().clone().requires_grad_(backward) for t in (x, y, b)]
        out = run(*small)
        if backward:
            torch.autograd.grad(out.sum(), small)
        _keops_compile_s[label] = time.perf_counter() - started
    except Exception as error:  # a missing compiler or a failed build: skip, and say why
        pytest.skip(f"pykeops cannot compile its formulas here: {type(error).__name__}: {error}")


def forward_backward(func, x, y, b):
    xs, ys, bs = (t.detach().clone().requires_grad_(True) for t in (x, y, b))
    out = func(xs, ys, bs)
    return torch.autograd.grad((out * out).sum(), (xs, ys, bs))


@pytest.mark.parametrize("peer", ["svfnet", "torch cdist+exp+matmul", "pykeops CPU"])
def test_gaussian_sum_forward(bench, benchmark, case, peer):
    name, x, y, b = case
    group = f"gaussian_sum forward N=M={name}"
    rounds = 3 if name == "20k" else None
    if peer == "svfnet":
        out = bench(group, peer, lambda: kernels.gaussian_sum(x, y, b, SIGMA), rounds=rounds)
    elif peer.startswith("torch"):
        with torch.no_grad():
            out = bench(group, peer, lambda: naive_sum(x, y, b), rounds=rounds)
    else:
        run = keops_sum()
        _keops_ready(run, x, y, b, False, "forward")
        benchmark.extra_info["pykeops_compile_s"] = _keops_compile_s["forward"]
        out = bench(group, peer, lambda: run(x, y, b), rounds=rounds)
    reference = kernels.gaussian_sum(x.double(), y.double(), b.double(), SIGMA)
    np.testing.assert_allclose(
        out.double().numpy(), reference.numpy(), atol=2e-4 * reference.abs().max().item()
    )


@pytest.mark.parametrize("peer", ["svfnet", "torch cdist+exp+matmul", "pykeops CPU"])
def test_gaussian_sum_forward_backward(bench, benchmark, case, peer):
    """Forward and the gradients in x, y and b."""
    name, x, y, b = case
    group = f"gaussian_sum fwd+bwd (x, y, b) N=M={name}"
    rounds = 3 if name == "20k" else None
    if peer == "svfnet":
        grads = bench(
            group,
            peer,
            lambda: forward_backward(lambda *t: kernels.gaussian_sum(*t, SIGMA), x, y, b),
            rounds=rounds,
        )
    elif peer.startswith("torch"):
        grads = bench(group, peer, lambda: forward_backward(naive_sum, x, y, b), rounds=rounds)
    else:
        run = keops_sum()
        _keops_ready(run, x, y, b, True, "forward+backward")
        benchmark.extra_info["pykeops_compile_s"] = _keops_compile_s["forward+backward"]
        grads = bench(group, peer, lambda: forward_backward(run, x, y, b), rounds=rounds)
    reference = forward_backward(
        lambda *t: kernels.gaussian_sum(*t, SIGMA), x.double(), y.double(), b.double()
    )
    for ours, expected in zip(grads, reference, strict=True):
        np.testing.assert_allclose(
            ours.double().numpy(), expected.numpy(), atol=1e-3 * expected.abs().max().item()
        )


@pytest.fixture(scope="module")
def cohort_pair(tmp_path_factory):
    """Two subjects of the built-in synthetic cohort, prepared on the 64×64×16 grid."""
    from svfnet import cli
    from svfnet.common.workdir import read_prepared
    from svfnet.shapes.surfaces import surfaces_from_labels

    root = tmp_path_factory.mktemp("cohort")
    if cli.main(["synth", str(root / "raw"), "--subjects", "2", "--seed", "7"]) != 0:
        pytest.skip("svfnet synth failed")
    if cli.main(["prepare", str(root / "raw"), str(root / "work")]) != 0:
        pytest.skip("svfnet prepare failed")
    subjects = [read_prepared(root / "work", s) for s in ("synth_000", "synth_001")]
    return [surfaces_from_labels(s.labels, s.spacing_mm) for s in subjects]


def test_registration(bench, benchmark, cohort_pair):
    """One template-to-subject registration with the default parameters (target: under 20 s)."""
    from svfnet.shapes.lddmm import register_surfaces

    template, subject = cohort_pair
    result = bench(
        "LDDMM registration, synthetic cohort",
        "svfnet",
        lambda: register_surfaces(template, subject),
        rounds=1,
    )
    benchmark.extra_info.update(
        triangles=sum(s.n_triangles for s in template.values()),
        control_points=len(result.control_points_mm),
        iterations=result.iterations,
        distance_reduction=result.distance_reduction,
    )
    assert result.distance_reduction > 0.5
