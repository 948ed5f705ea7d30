"""Benchmarks run peers side by side in one session and end with a table of ratios.

Each benchmark belongs to a group (one operation at one size); within a group, the ``svfnet``
entry is the reference and every other entry is reported as ``peer median / svfnet median``.
Machines here are shared and noisy: compare ratios from one run, not absolute times.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

THREADS = 2
_medians: dict[str, dict[str, float]] = defaultdict(dict)


def pytest_configure(config):
    torch.set_num_threads(THREADS)


@pytest.fixture
def bench(benchmark, request):
    """``bench(group, name, func, *args)``: benchmarks ``func(*args)`` and records its median."""

    def run(group: str, name: str, func, *args, rounds: int | None = None):
        benchmark.group = group
        benchmark.name = f"{group} :: {name}"
        if rounds is None:
            result = benchmark(func, *args)
        else:
            result = benchmark.pedantic(func, args=args, rounds=rounds, iterations=1, warmup_rounds=1)
        if benchmark.stats is not None:
            _medians[group][name] = benchmark.stats.stats.median
        return result

    return run


def pytest_terminal_summary(terminalreporter):
    if not _medians:
        return
    terminalreporter.section(f"svfnet speed-up (peer median / svfnet median, {THREADS} threads)")
    for group, medians in sorted(_medians.items()):
        ours = medians.get("svfnet")
        for name, median in sorted(medians.items()):
            if name == "svfnet":
                terminalreporter.write_line(f"{group:40s} svfnet {1e3 * median:9.3f} ms")
            elif ours:
                terminalreporter.write_line(
                    f"{group:40s}   vs {name:28s} {median / ours:7.1f}x  ({1e3 * median:9.3f} ms)"
                )
