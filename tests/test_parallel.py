"""Local worker pools stop with their driver: SIGKILL of the driver leaves no process behind (the
workers' parent-death signal), SIGINT and SIGTERM of the ``svfnet`` command give exit codes 130 and
143 with every worker gone, and a caller that stops iterating does not wait for running tasks.

Drivers run as real subprocesses; tasks sleep (a task module written to the test's folder) and
touch a file when they start, so that a signal always lands while both workers are busy. Waits are
bounded and generous (a loaded machine starts a worker, which imports torch, in seconds)."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from svfnet.common.parallel import run_tasks

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)"
)

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 180.0  # workers are busy within this (spawn + import torch, two at once on 2 busy cores)
GONE_S = 30.0  # processes are gone within this after the signal

TASK_MODULE = """
import time
from pathlib import Path


def task(marker):
    Path(marker).touch()
    time.sleep(600)
    return marker
"""

# a subcommand added through cli.COMMAND_MODULES, as every svfnet command is, whose work is a pool
# of two sleeping tasks
COMMAND_MODULE = """
from svfnet.common.parallel import run_tasks

import slow_task


def add_parser(subparsers):
    parser = subparsers.add_parser("slow")
    parser.add_argument("folder")
    parser.set_defaults(func=run)


def run(args):
    markers = [f"{args.folder}/started_{n}" for n in range(2)]
    for _ in run_tasks(slow_task.task, markers, workers=2, progress=False):
        pass
    return 0
"""

DRIVER = """
import sys
sys.path.insert(0, {folder!r})
import svfnet.cli
svfnet.cli.COMMAND_MODULES.append("slow_command")
sys.exit(svfnet.cli.main(["slow", {folder!r}]))
"""


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process whose /proc entry is readable and not a zombie."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state not in ("Z", "X"):
            parents[int(entry.name)] = int(ppid)
    return parents


def _descendants(pid: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.2)


def _start_driver(folder: Path) -> tuple[subprocess.Popen, set[int]]:
    """The driver, once both workers run a task; its descendant processes (workers, resource tracker)."""
    (folder / "slow_task.py").write_text(TASK_MODULE)
    (folder / "slow_command.py").write_text(COMMAND_MODULE)
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DRIVER.format(folder=str(folder)))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a command started from a shell
        # Ctrl-C as a terminal's foreground job sees it: a suite run in the background of a
        # non-interactive shell (`pytest ... &`) inherits SIGINT ignored, and so would the driver
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    markers = [folder / f"started_{n}" for n in range(2)]
    try:
        _wait_until(
            lambda: all(m.exists() for m in markers) or driver.poll() is not None,
            STARTUP_S,
            "both workers started their task",
        )
        assert driver.poll() is None, driver.communicate()
        children = _descendants(driver.pid)
        assert len(children) >= 2, children  # two workers (and the resource tracker)
    except BaseException:
        driver.kill()
        driver.communicate()
        raise
    return driver, children


def _alive(pids: set[int]) -> set[int]:
    parents = _parents()
    return {pid for pid in pids if pid in parents}


def test_sigkill_of_the_driver_leaves_no_worker(tmp_path):
    driver, children = _start_driver(tmp_path)
    driver.kill()
    driver.communicate()
    try:
        _wait_until(lambda: not _alive(children), GONE_S, f"processes of the killed driver exit: {children}")
    finally:
        for pid in _alive(children):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("name", "to_group", "code", "message"),
    [
        ("SIGINT", True, 130, "interrupted"),  # Ctrl-C: the whole foreground process group
        ("SIGTERM", False, 143, "terminated"),  # kill PID: the driver alone
        ("SIGTERM", True, 143, "terminated"),  # kill -- -PGID: workers get it too
    ],
)
def test_sigint_and_sigterm_stop_the_workers(tmp_path, name, to_group, code, message):
    driver, children = _start_driver(tmp_path)
    number = getattr(signal, name)
    try:
        if to_group:
            os.killpg(driver.pid, number)
        else:
            driver.send_signal(number)
        _, stderr = driver.communicate(timeout=GONE_S)
        assert driver.returncode == code, stderr
        assert stderr.strip().splitlines()[-1] == f"svfnet slow: {message}", stderr
        assert "Traceback" not in stderr, stderr
        # the workers were joined before the driver exited; the resource tracker follows on its own
        _wait_until(lambda: not _alive(children), GONE_S, f"no process of the driver outlives it: {children}")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
        for pid in _alive(children):
            os.kill(pid, signal.SIGKILL)


def test_a_caller_that_stops_iterating_does_not_wait_for_running_tasks():
    tasks = [0.0, 600.0, 600.0]  # time.sleep: the first ends at once, the others would run 10 min
    outcomes = run_tasks(time.sleep, tasks, workers=2, progress=False)
    first = next(outcomes)
    assert first.index == 0 and first.error is None
    started = time.monotonic()
    outcomes.close()
    assert time.monotonic() - started < 120, "the pool waited for its running task"
    assert multiprocessing.active_children() == []


def test_pool_results_and_errors():
    outcomes = sorted(
        run_tasks(math.sqrt, [4.0, -1.0, 9.0], workers=2, progress=False), key=lambda o: o.index
    )
    assert [o.value for o in outcomes] == [2.0, None, 3.0]
    assert isinstance(outcomes[1].error, ValueError)
    assert multiprocessing.active_children() == []
