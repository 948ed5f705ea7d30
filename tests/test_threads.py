"""The work threshold of the CPU launchers (csrc/common/cpu_loops.h, docs/performance.md).

Below ``_core.min_parallel_work()`` voxel-operations a launcher's parallel region runs on the calling
thread. Every CPU entry point must give the same result either way: here each runs on 2 threads with
the threshold forced to 0 (every region on the team) and to a huge value (every region on the calling
thread), on odd grids, and the two results are compared bit for bit (to float64 rounding for the
sums that OpenMP reduces across threads).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import svfnet
from svfnet import _core
from tests.conftest import smooth_field

HUGE = 2**62
GRID = (5, 6, 7)
openmp = pytest.mark.skipif(not svfnet.build_info()["openmp"], reason="built without OpenMP")


def run_both(call):
    """call() at threshold 0 and at HUGE (the threshold restored after)."""
    before = _core.set_min_parallel_work(0)
    try:
        parallel = call()
        _core.set_min_parallel_work(HUGE)
        serial = call()
    finally:
        _core.set_min_parallel_work(before)
    return parallel, serial


def fields_of(rng, batch=2, amplitude=1.5):
    return np.stack([smooth_field(rng, GRID, amplitude) for _ in range(batch)])


def voxel_launchers(rng):
    """name -> call() returning the outputs of one CPU launcher on 2 threads (fresh output arrays)."""
    image = rng.standard_normal((2, 2, *GRID)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 1, *GRID)).astype(np.int32)
    disp, v, w = fields_of(rng, amplitude=2.5), fields_of(rng, amplitude=0.8), fields_of(rng, amplitude=0.8)
    steps = 5
    levels = np.empty((steps * 2, 3, *GRID), np.float32)
    _core.exp_levels_cpu(v, levels, steps, 1)
    per_axis = [_core.smooth_taps(s, 3.0, n) for s, n in zip((1.3, 0.9, 1.7), GRID, strict=True)]
    taps, radii = np.concatenate(per_axis), tuple(len(t) - 1 for t in per_axis)
    volumes = rng.standard_normal((3, 1, *GRID)).astype(np.float32)
    a, b = image[:, :1].copy(), image[:, 1:].copy()
    nonfinite = image.reshape(-1).copy()
    nonfinite[[3, 50, 301]] = [np.nan, np.inf, -np.inf]

    def out(like, dtype=np.float32):
        return np.full(like.shape, -7, dtype)

    def warp(order):
        o = out(image)
        _core.warp_cpu(image, disp, o, order, -0.5, 2)
        return o

    def warp_labels(onehot):
        o = out(labels, np.int32)
        _core.warp_labels_cpu(labels, disp, o, onehot, 9, 2)
        return o

    def warp_disp_vjp():
        o = out(disp)
        _core.warp_disp_vjp_cpu(image, disp, image[:, ::-1].copy(), o, 0.25, 2)
        return o

    def binary(entry, x, y):
        o = out(x)
        entry(x, y, o, 2)
        return o

    def exp():
        o, scratch = out(v), out(v)
        _core.exp_cpu(v, o, scratch, steps, 2)
        return o

    def exp_levels():
        o = out(levels)
        _core.exp_levels_cpu(v, o, steps, 2)
        return o

    def exp_vjp():
        o, accumulator = out(v), np.zeros(v.shape, np.float64)
        _core.exp_vjp_cpu(v, levels, w, o, accumulator, steps, 2)
        return o

    def jacobian_det():
        o = out(image[:, :1])
        _core.jacobian_det_cpu(disp, o, 2)
        return o

    def smooth():
        o, scratch = out(volumes), out(volumes)
        _core.smooth_cpu(volumes, o, scratch, taps, radii, 2)
        return o

    def local_moments():
        o, scratch = np.zeros((2, 6, *GRID), np.float32), np.zeros((2, 5, *GRID), np.float32)
        _core.local_moments_cpu(a, b, o, scratch, taps, radii, 1e-3, 2e-3, 2)
        return o

    def norm_within():
        o = out(image[:, :1])
        _core.norm_within_cpu(v, disp, o, 2)
        return o

    return {
        "warp linear": lambda: warp(1),
        "warp nearest": lambda: warp(0),
        "warp_labels": lambda: warp_labels(False),
        "warp_labels onehot": lambda: warp_labels(True),
        "warp_disp_vjp": warp_disp_vjp,
        "compose": lambda: binary(_core.compose_cpu, v, w),
        "exp": exp,
        "exp_levels": exp_levels,
        "exp_vjp": exp_vjp,
        "jacobian_det": jacobian_det,
        "lie_bracket": lambda: binary(_core.lie_bracket_cpu, v, w),
        "jacobian_solve": lambda: binary(_core.jacobian_solve_cpu, v, w),
        "smooth": smooth,
        "local_moments": local_moments,
        "norm_within": norm_within,
        "count_nonfinite": lambda: np.array(_core.count_nonfinite_cpu(nonfinite, 2)),
    }


VOXEL_LAUNCHERS = list(voxel_launchers(np.random.default_rng(0)))


@openmp
@pytest.mark.parametrize("name", VOXEL_LAUNCHERS)
def test_voxel_launchers_are_identical_on_one_or_two_threads(rng, name):
    parallel, serial = run_both(voxel_launchers(rng)[name])
    assert np.all(np.isfinite(parallel)) and not np.all(parallel == -7)
    np.testing.assert_array_equal(parallel, serial)


@openmp
def test_norm_stats_agree_on_one_or_two_threads(rng):
    v, disp = fields_of(rng), fields_of(rng, amplitude=2.5)
    (max_p, mean_p), (max_s, mean_s) = run_both(lambda: _core.norm_stats_cpu(v, 2))
    assert max_p == max_s and mean_p == pytest.approx(mean_s, rel=1e-12)
    norms = np.sqrt((v.astype(np.float64) ** 2).sum(1))
    assert max_s == pytest.approx(norms.max(), rel=1e-6) and mean_s == pytest.approx(norms.mean(), rel=1e-6)
    within_p, within_s = run_both(lambda: _core.norm_stats_within_cpu(v, disp, 2))
    assert within_p[0] == within_s[0] and within_p[2] == within_s[2] > 0
    assert within_p[1] == pytest.approx(within_s[1], rel=1e-12)


@openmp
@pytest.mark.parametrize("formula", [0, 1, 2, 3])
def test_kernel_sums_are_identical_on_one_or_two_threads(rng, formula):
    n, m = 70, 45  # three target blocks of 32
    x, y, c, e = (rng.standard_normal((k, 3)) for k in (n, m, n, m))
    a, b, w = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)), rng.standard_normal((m, 3))

    def call():
        out_w, out_r = np.full((n, 3), -7.0), np.full((n, 3), -7.0)
        _core.gauss_cpu(formula, x, y, a, b, c, e, w, out_w, out_r, 0.8, 2)
        return np.concatenate([out_w, out_r if formula in (1, 3) else 0 * out_r])

    parallel, serial = run_both(call)
    np.testing.assert_array_equal(parallel, serial)


@openmp
def test_ebs_is_identical_on_one_or_two_threads(rng):
    from svfnet.ops import ebs

    spline = ebs.fit_ebs(rng.uniform(0, 6, (12, 3)), rng.standard_normal((12, 3)))
    grid_p, grid_s = run_both(lambda: spline.on_grid(GRID, (1.1, 0.9, 1.3)))
    np.testing.assert_array_equal(grid_p, grid_s)
    points = rng.uniform(0, 6, (37, 3))
    points_p, points_s = run_both(lambda: spline(points))
    np.testing.assert_array_equal(points_p, points_s)


@openmp
def test_regions_below_the_threshold_run_on_the_calling_thread():
    before = _core.set_min_parallel_work(1000)
    try:
        assert _core.min_parallel_work() == 1000 == svfnet.build_info()["min_parallel_work"]
        assert _core.parallel_team(999, 2) == 1
        assert _core.parallel_team(1000, 2) == 2
        assert _core.parallel_team(10**9, 1) == 1
        _core.set_min_parallel_work(0)
        assert _core.parallel_team(0, 2) == 2
    finally:
        _core.set_min_parallel_work(before)
    with pytest.raises(ValueError, match="'work' must be >= 0"):
        _core.set_min_parallel_work(-1)


def _import_with(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SVFNET_MIN_PARALLEL_WORK": value}
    code = "import svfnet; print(svfnet.build_info()['min_parallel_work'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_sets_the_threshold():
    done = _import_with("12345")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "12345"


@pytest.mark.parametrize("value", ["-1", "1e6", "many", "99999999999999999999999"])
def test_bad_environment_variable_fails_the_import_naming_it(value):
    done = _import_with(value)
    assert done.returncode != 0
    assert "SVFNET_MIN_PARALLEL_WORK must be a non-negative integer" in done.stderr and value in done.stderr


@pytest.mark.parametrize("count", [1, 7, 65_536, 65_537, 300_001])
def test_count_nonfinite_against_numpy(count):
    """The bit test counts NaN and both infinities (not the largest finite float) across its chunks."""
    rng = np.random.default_rng(count)
    values = rng.normal(size=count).astype(np.float32)
    chosen = rng.choice(count, size=min(count, 13), replace=False)
    values[chosen] = np.resize(
        np.array([np.nan, np.inf, -np.inf, np.finfo(np.float32).max], np.float32), chosen.size
    )
    for threads in (1, 2):
        assert _core.count_nonfinite_cpu(values, threads) == int(np.count_nonzero(~np.isfinite(values)))
