"""Small work on a busy machine: every CPU launcher at 1 and 2 threads, quiet and with a core kept busy.

When another process keeps one of the machine's cores busy, a 2-thread OpenMP region waits at its
barrier for a thread the scheduler has not run yet: milliseconds, whatever the work. svfnet's CPU
launchers therefore run a region on the calling thread when its work is below
``svfnet._core.min_parallel_work()`` voxel-operations (``csrc/common/cpu_loops.h``; environment
variable ``SVFNET_MIN_PARALLEL_WORK``). This script measures, in one process, each launcher called
directly (``svfnet._core``, so that only the launcher is timed) on small and large inputs:

- at 1 thread, and at 2 threads with the threshold 0 (every region parallel, the behaviour before
  the threshold) and with the threshold in force;
- with the machine as it is ("quiet") and with a busy-loop process pinned to the last core
  ("busy"), started and stopped by this script.

Medians over ``--repeats`` timings of ``--calls`` calls each go to stdout as a table and, with
``--json``, to a file. ``--sweep`` instead times a synthetic series of work sizes (norm_stats on
growing fields, the cheapest kernel, where the region's own cost shows most) for choosing the
threshold.

    python -m benchmarks.small_work [--repeats 7] [--calls 20] [--ops warp exp ...] [--json FILE]
    python -m benchmarks.small_work --sweep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from svfnet import _core

GRIDS = {"16^3": (16, 16, 16), "64x64x16": (64, 64, 16), "128^3": (128, 128, 128)}
SIGMA = (5.0 / 1.93, 5.0 / 1.93, 5.0 / 6.85)  # LCC Log-Demons' window on the evaluation grid, voxels
TRUNCATE = 3.0


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """A process that keeps the machine's last core busy while the block runs (nothing if not enabled)."""
    if not enabled:
        yield
        return
    spinner = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    spinner.start()
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(spinner.pid, {max(os.sched_getaffinity(0))})
        time.sleep(0.2)
        yield
    finally:
        spinner.terminate()
        spinner.join()


@dataclass
class Case:
    """One launcher on one input: ``run(threads)`` calls it once."""

    op: str
    size: str
    run: Callable[[int], object]


def _field(rng: np.random.Generator, grid: tuple[int, int, int], scale: float) -> np.ndarray:
    return (scale * rng.standard_normal((1, 3, *grid))).astype(np.float32)


def _smooth_taps(grid: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    per_axis = [_core.smooth_taps(s, TRUNCATE, n) for s, n in zip(SIGMA, grid, strict=True)]
    return np.concatenate(per_axis), tuple(len(t) - 1 for t in per_axis)


def field_cases(size: str, grid: tuple[int, int, int]) -> list[Case]:
    """The voxel launchers (warp, compose, exp, Jacobians, smoothing, reductions) on ``grid``."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 1, *grid)).astype(np.float32)
    labels = rng.integers(0, 5, (1, 1, *grid)).astype(np.int32)
    disp, v, w = _field(rng, grid, 2.0), _field(rng, grid, 0.5), _field(rng, grid, 0.5)
    out1, out3, scratch = np.empty_like(image), np.empty_like(disp), np.empty_like(disp)
    labels_out = np.empty_like(labels)
    steps = 7
    levels = np.empty((steps, 3, *grid), np.float32)
    _core.exp_levels_cpu(v, levels, steps, 1)
    accumulator = np.empty((1, 3, *grid), np.float64)
    taps, radii = _smooth_taps(grid)
    volume3 = rng.standard_normal((3, 1, *grid)).astype(np.float32)
    smooth_out, smooth_scratch = np.empty_like(volume3), np.empty_like(volume3)
    b = (0.6 * image + 0.8 * rng.standard_normal(image.shape)).astype(np.float32)
    moments, moments_scratch = np.empty((1, 6, *grid), np.float32), np.empty((1, 5, *grid), np.float32)
    flat = disp.reshape(-1)
    cases = {
        "warp": lambda t: _core.warp_cpu(image, disp, out1, 1, 0.0, t),
        "warp nearest": lambda t: _core.warp_cpu(image, disp, out1, 0, 0.0, t),
        "warp_labels": lambda t: _core.warp_labels_cpu(labels, disp, labels_out, False, 0, t),
        "warp_disp_vjp": lambda t: _core.warp_disp_vjp_cpu(image, disp, image, out3, 0.0, t),
        "compose": lambda t: _core.compose_cpu(v, w, out3, t),
        "exp (7 squarings)": lambda t: _core.exp_cpu(v, out3, scratch, steps, t),
        "exp_levels": lambda t: _core.exp_levels_cpu(v, levels, steps, t),
        "exp_vjp": lambda t: _core.exp_vjp_cpu(v, levels, w, out3, accumulator, steps, t),
        "jacobian_det": lambda t: _core.jacobian_det_cpu(disp, out1, t),
        "lie_bracket": lambda t: _core.lie_bracket_cpu(v, w, out3, t),
        "jacobian_solve": lambda t: _core.jacobian_solve_cpu(v, w, out3, t),
        "smooth field": lambda t: _core.smooth_cpu(volume3, smooth_out, smooth_scratch, taps, radii, t),
        "local_moments": lambda t: _core.local_moments_cpu(
            image, b, moments, moments_scratch, taps, radii, 1e-4, 1e-4, t
        ),
        "norm_stats": lambda t: _core.norm_stats_cpu(disp, t),
        "norm_stats_within": lambda t: _core.norm_stats_within_cpu(v, disp, t),
        "norm_within": lambda t: _core.norm_within_cpu(v, disp, out1, t),
        "count_nonfinite": lambda t: _core.count_nonfinite_cpu(flat, t),
    }
    return [Case(op, size, run) for op, run in cases.items()]


def kernel_cases(size: str, n: int) -> list[Case]:
    """Gaussian kernel sums of ``n`` targets against ``n`` sources (3 columns)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.standard_normal((n, 3)).astype(np.float32)
    b = rng.standard_normal((n, 3)).astype(np.float32)
    a = rng.standard_normal((n, 3)).astype(np.float32)
    out_w, out_r, unused = (
        np.empty((n, 3), np.float32),
        np.empty((n, 3), np.float32),
        np.empty((0, 0), np.float32),
    )
    return [
        Case(
            "gauss sum",
            size,
            lambda t: _core.gauss_cpu(0, x, y, unused, unused, unused, unused, b, out_w, unused, 1.0, t),
        ),
        Case(
            "gauss sum+grad",
            size,
            lambda t: _core.gauss_cpu(1, x, y, a, b, unused, unused, b, out_w, out_r, 1.0, t),
        ),
    ]


def ebs_cases(size: str, grid: tuple[int, int, int], landmarks: int) -> list[Case]:
    """An elastic body spline of ``landmarks`` landmarks on ``grid`` and at as many points."""
    from svfnet.ops import ebs

    rng = np.random.default_rng(2)
    source = rng.uniform(0, 1, (landmarks, 3)) * np.array(grid) * 2.0
    spline = ebs.fit_ebs(source, rng.standard_normal((landmarks, 3)))
    out = np.empty((1, 3, *grid), np.float32)
    points = rng.uniform(-1, 1, (int(np.prod(grid)) // 16, 3))
    point_out = np.empty((1, points.shape[0], 3))
    lm, co, af, al = spline.landmarks, spline.coefficients, spline.affine, spline.alpha
    args = ((0.0, 0.0, 0.0), (0.1, 0.1, 0.1), (1.0, 1.0, 1.0))
    return [
        Case("ebs grid", size, lambda t: _core.ebs_grid_cpu(lm, co, af, al, *args, out, t)),
        Case("ebs points", size, lambda t: _core.ebs_points_cpu(lm, co, af, al, points, point_out, t)),
    ]


def all_cases() -> list[Case]:
    cases = []
    for size, grid in GRIDS.items():
        cases += field_cases(size, grid)
    cases += kernel_cases("N=M=200", 200) + kernel_cases("N=M=4000", 4000)
    cases += ebs_cases("16^3, K=50", (16, 16, 16), 50) + ebs_cases("64x64x16, K=200", (64, 64, 16), 200)
    return cases


def timed(run: Callable[[int], object], threads: int, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` calls, in milliseconds."""
    run(threads)  # warm-up (thread pool, caches)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run(threads)
        samples.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(samples)


@contextlib.contextmanager
def threshold(work: int) -> Iterator[None]:
    before = _core.set_min_parallel_work(work)
    try:
        yield
    finally:
        _core.set_min_parallel_work(before)


def calls_for(case: Case, budget_ms: float, calls: int) -> int:
    """Fewer calls for the slow cases, so that one timing takes about ``budget_ms``."""
    start = time.perf_counter()
    case.run(1)
    one = (time.perf_counter() - start) * 1e3
    return max(1, min(calls, int(budget_ms / max(one, 1e-3))))


VARIANTS = [("1 thread", 1, None), ("2 threads, threshold 0", 2, 0), ("2 threads, threshold", 2, None)]


def measure(cases: list[Case], loads: list[str], calls: int, repeats: int, budget_ms: float) -> list[dict]:
    rows = []
    chosen = _core.min_parallel_work()
    for load in loads:
        with busy_core(load == "busy"):
            for case in cases:
                n = calls_for(case, budget_ms, calls)
                row = {"op": case.op, "size": case.size, "load": load, "calls": n}
                # the variants interleaved, repeat by repeat, so that a change of load hits all alike
                samples: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
                for _ in range(repeats):
                    for name, threads, work in VARIANTS:
                        with threshold(chosen if work is None else work):
                            samples[name].append(timed(case.run, threads, n, 1))
                for name, _, _ in VARIANTS:
                    row[name] = statistics.median(samples[name])
                rows.append(row)
                print(_row_text(row), flush=True)
    return rows


def _row_text(row: dict) -> str:
    times = "  ".join(f"{row[name]:9.4f}" for name, _, _ in VARIANTS)
    gain = row["2 threads, threshold 0"] / row["2 threads, threshold"]
    return f"{row['load']:5s}  {row['op']:20s} {row['size']:16s} {times}   {gain:6.2f}x"


def _per_call(run: Callable[[int], object], threads: int, seconds: float) -> list[float]:
    """Times of single calls (ms) for about ``seconds``."""
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        run(threads)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def sweep(seconds: float, slices: int, sizes: list[int]) -> list[dict]:
    """The threshold's measurement: compose (13 voxel-operations a voxel) on fields of growing size.

    For each size: one and two threads (threshold 0) with the last core busy, mean times of the
    calls, stalls included; one and two threads with no spinner, medians of the calls (a quiet
    machine: the stalls that other users' load causes left out). Running serially costs
    ``1T quiet / 2T quiet`` on a quiet machine, running in parallel ``2T busy / 1T busy`` on a busy
    one; the threshold is about the smallest work where the second is no worse than the first.
    """
    rows = []
    print(
        "voxels     work   1T busy ms  2T busy ms  1T quiet ms  2T quiet ms  1T/2T quiet  2T/1T busy",
        flush=True,
    )
    for voxels in sizes:
        grid = (64, max(1, voxels // (64 * 16)), 16)
        voxels = int(np.prod(grid))
        rng = np.random.default_rng(0)
        field = _field(rng, grid, 1.0)
        out = np.empty_like(field)

        def run(t, field=field, out=out):
            return _core.compose_cpu(field, field, out, t)

        samples: dict[str, list[float]] = {"1T busy": [], "2T busy": [], "1T quiet": [], "2T quiet": []}
        with threshold(0):
            run(2)
            for _ in range(slices):  # interleaved, so that other load hits every variant alike
                samples["1T quiet"] += _per_call(run, 1, seconds / slices)
                samples["2T quiet"] += _per_call(run, 2, seconds / slices)
                with busy_core(True):
                    samples["1T busy"] += _per_call(run, 1, seconds / slices)
                    samples["2T busy"] += _per_call(run, 2, seconds / slices)
        row = {
            "voxels": voxels,
            "work": voxels * 13,
            "1T busy": statistics.fmean(samples["1T busy"]),
            "2T busy": statistics.fmean(samples["2T busy"]),
            "1T quiet": statistics.median(samples["1T quiet"]),
            "2T quiet": statistics.median(samples["2T quiet"]),
        }
        rows.append(row)
        times = " ".join(f"{row[k]:11.4f}" for k in ("1T busy", "2T busy", "1T quiet", "2T quiet"))
        serial_loss, parallel_loss = row["1T quiet"] / row["2T quiet"], row["2T busy"] / row["1T busy"]
        print(f"{voxels:7d} {row['work']:9d} {times} {serial_loss:12.2f} {parallel_loss:11.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20, help="calls a timing at most")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="about this long a timing")
    parser.add_argument("--ops", nargs="*", help="only these ops (names as printed)")
    parser.add_argument("--loads", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    parser.add_argument("--sweep", action="store_true", help="the threshold's measurement instead")
    parser.add_argument("--seconds", type=float, default=6.0, help="--sweep: seconds a variant and size")
    parser.add_argument(
        "--voxels",
        type=int,
        nargs="+",
        help="--sweep: the field sizes",
        default=[8192, 32768, 65536, 98304, 131072, 196608, 262144, 393216, 524288],
    )
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.sweep:
        rows = sweep(args.seconds, args.repeats, args.voxels)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"sweep": rows}, f, indent=1)
        return 0
    cases = [c for c in all_cases() if not args.ops or c.op in args.ops]
    print(f"svfnet {_core.build_info()}; threshold {_core.min_parallel_work()} voxel-operations")
    print("load   op                   size              " + "  ".join(n for n, _, _ in VARIANTS) + "   gain")
    rows = measure(cases, args.loads, args.calls, args.repeats, args.budget_ms)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threshold": _core.min_parallel_work(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
