"""Running independent tasks: in this process, in local worker processes, or on a Dask cluster.

Stages with many independent jobs (one registration per subject, one reference per pair) hand
them to :func:`run_tasks`, which yields each outcome as it completes, so that the stage can write
it at once (and a stage interrupted half-way resumes from what is on disk):

- ``workers=1``: in this process, one after the other (debugging, tests, tiny jobs);
- ``workers=N`` (default: one per core): N local processes (``spawn``), each computing with
  ``threads_per_worker`` threads (default: cores / N), which on a busy machine beats one process
  with many threads, whose kernels wait for every thread at each barrier;
- ``scheduler="tcp://host:8786"``: the tasks of a Dask distributed cluster
  (``pip install svfnet[dask]``); svfnet must be importable on its workers, and tasks carry their
  inputs, so the workers need not see the work folder.

``func`` must be a module-level function (it is pickled), and so must its arguments.

Interruption leaves no process behind. Local workers ignore SIGINT (a Ctrl-C reaches the whole
process group; the driver decides) and are killed with the driver: on Linux the kernel sends them
SIGKILL when the thread that started them ends (``PR_SET_PDEATHSIG``; run the tasks from a thread
that outlives them, as the main thread does), elsewhere a thread of each worker polls its parent.
When the driver stops iterating early (KeyboardInterrupt, SIGTERM turned into an exception by the
``svfnet`` command, an error in the caller's loop, a closed generator), the workers are
terminated at once rather than left to finish their running tasks; pending tasks never start. The
multiprocessing resource tracker exits by itself once the driver and the workers are gone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskOutcome", "run_tasks"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskOutcome:
    """The outcome of task ``index``: its ``value``, or the ``error`` it raised (then value is None)."""

    index: int
    value: Any = None
    error: BaseException | None = None


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_POLL_S = 1.0  # how often a worker without PR_SET_PDEATHSIG checks that its parent lives
_TERMINATE_WAIT_S = 5.0  # how long terminated workers get to exit before they are killed


def _init_worker(threads: int, parent_pid: int) -> None:
    # the driver decides what an interruption does: a Ctrl-C reaches the whole process group, and
    # a worker that raised KeyboardInterrupt would only report it as the outcome of its task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)


def _exit_with_parent(parent_pid: int) -> None:
    """Makes this worker end when its driver ``parent_pid`` ends, however it ends (SIGKILL included).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, which the kernel fires when the driver's thread
    that started this process ends; elsewhere, a daemon thread that polls the parent's pid.
    """
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no prctl in this C library: poll instead
            armed = False
    # the parent may have died before the signal was armed (then this process was re-parented)
    if os.getppid() != parent_pid and not _alive(parent_pid):
        os._exit(1)
    if not armed:
        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                threading.Event().wait(_PARENT_POLL_S)
            os._exit(1)

        threading.Thread(target=watch, name="svfnet-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _call(func: Callable[[Any], Any], task: Any) -> Any:
    return func(task)


def run_tasks(
    func: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    threads_per_worker: int | None = None,
    progress: bool = True,
    description: str = "",
) -> Iterator[TaskOutcome]:
    """Runs ``func(task)`` for every task; yields a :class:`TaskOutcome` per task as it completes.

    A task that raises does not stop the others: its outcome carries the error.

    Args:
        func: a module-level function of one argument.
        tasks: its arguments (picklable).
        workers: local processes (default: the number of cores, at most one per task); 1 runs
            in this process. Ignored with ``scheduler``.
        scheduler: address of a Dask distributed scheduler (``tcp://host:port``).
        threads_per_worker: compute threads of each local process (default: cores / workers).
        progress: show a tqdm progress bar (on stderr).
        description: the progress bar's label.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"run_tasks(): 'workers' must be an integer >= 1, got {workers!r}")
    if threads_per_worker is not None and (
        isinstance(threads_per_worker, bool)
        or not isinstance(threads_per_worker, int)
        or threads_per_worker < 1
    ):
        raise ValueError(
            f"run_tasks(): 'threads_per_worker' must be an integer >= 1, got {threads_per_worker!r}"
        )
    if not tasks:
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc=description or None, disable=not progress, unit="task", leave=True)
    try:
        if scheduler is not None:
            outcomes = _on_dask(func, tasks, scheduler)
        else:
            cores = os.cpu_count() or 1
            count = min(workers or cores, len(tasks))
            if count == 1:
                outcomes = _in_process(func, tasks)
            else:
                threads = threads_per_worker or max(1, cores // count)
                outcomes = _in_processes(func, tasks, count, threads)
        for outcome in outcomes:
            bar.update(1)
            yield outcome
    finally:
        bar.close()


def _in_process(func, tasks) -> Iterator[TaskOutcome]:
    for index, task in enumerate(tasks):
        try:
            value = func(task)
        except Exception as error:  # reported to the caller with the task's index
            yield TaskOutcome(index, error=error)
        else:
            yield TaskOutcome(index, value=value)


def _in_processes(func, tasks, workers: int, threads: int) -> Iterator[TaskOutcome]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the parent's OpenMP and torch thread pools do not survive a fork
    context = multiprocessing.get_context("spawn")
    logger.info("running %d tasks in %d processes of %d threads", len(tasks), workers, threads)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads, os.getpid())
    )
    finished = False
    try:
        futures = {pool.submit(_call, func, task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            # forget each future once done: it holds its result, and the caller keeps only
            # what it needs (the driver's memory must not grow with the number of tasks)
            index = futures.pop(future)
            error = future.exception()
            if error is not None:
                yield TaskOutcome(index, error=error)
            else:
                yield TaskOutcome(index, value=future.result())
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            # interrupted, or the caller stopped early: neither wait for running tasks nor start
            # pending ones
            _stop_workers(pool)


def _stop_workers(pool) -> None:
    """Terminates a ProcessPoolExecutor's workers (SIGTERM, then SIGKILL) and waits until they are gone."""
    # the processes are in _processes (Python 3.14 also has pool.terminate_workers())
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if not processes and hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(_TERMINATE_WAIT_S)
        if process.is_alive():
            process.kill()
            process.join(_TERMINATE_WAIT_S)
    # the executor's manager thread sees its workers gone, fails what was pending and ends: no
    # thread of the pool outlives this call
    pool.shutdown(wait=True, cancel_futures=True)


def _on_dask(func, tasks, scheduler: str) -> Iterator[TaskOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ImportError(
            "running on a Dask cluster needs dask.distributed: pip install 'svfnet[dask]'"
        ) from None
    logger.info("running %d tasks on the Dask cluster at %s", len(tasks), scheduler)
    with Client(scheduler) as client:
        tasks = scatter_shared_arrays(client, list(tasks))
        pending = {
            future.key: (index, future) for index, future in enumerate(client.map(func, tasks, pure=False))
        }
        try:
            for future in as_completed([future for _, future in pending.values()]):
                index, _ = pending.pop(future.key)
                if future.status == "error":
                    outcome = TaskOutcome(index, error=future.exception())
                else:
                    outcome = TaskOutcome(index, value=future.result())
                future.release()  # else the cluster keeps every result until the run ends
                yield outcome
        except BaseException:
            client.cancel([future for _, future in pending.values()])
            raise


def scatter_shared_arrays(client, tasks: list) -> list:
    """Tasks whose NumPy arrays that appear in more than one task are sent to the cluster once.

    Tasks are serialised one by one: a subject's landmarks, in every task that pairs it, would be
    shipped (and held by the scheduler) once per task, O(N²) for N subjects. Each shared array is
    scattered once and the tasks carry its future, which Dask replaces by the array on the worker
    (inside dicts, lists and tuples).
    """
    import numpy as np

    seen: dict[int, list] = {}  # id -> [array, count]

    def count(value) -> None:
        if isinstance(value, np.ndarray):
            seen.setdefault(id(value), [value, 0])[1] += 1
        elif isinstance(value, dict):
            for item in value.values():
                count(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                count(item)

    for task in tasks:
        count(task)
    shared = [array for array, uses in seen.values() if uses > 1]
    if not shared:
        return tasks
    futures = dict(zip((id(array) for array in shared), client.scatter(shared), strict=True))

    def replace(value):
        if isinstance(value, np.ndarray):
            return futures.get(id(value), value)
        if isinstance(value, dict):
            return {key: replace(item) for key, item in value.items()}
        if isinstance(value, list):
            return [replace(item) for item in value]
        if isinstance(value, tuple):
            return tuple(replace(item) for item in value)
        return value

    return [replace(task) for task in tasks]
