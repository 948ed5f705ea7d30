"""One registration of one test pair by one method, as a task: what it needs (:class:`PairTask`), how it
runs (:func:`evaluate_task`: register, then score with :func:`svfnet.evaluation.metrics.evaluate_pair`),
and the two ways the evaluation runs them — SVF-Net and the identity in this process, the optimisation
methods as tasks of :func:`svfnet.common.parallel.run_tasks` (one thread each).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from svfnet.baselines import lcc_demons
from svfnet.baselines.peers import ants_syn, sitk_demons
from svfnet.common.parallel import run_tasks
from svfnet.evaluation.metrics import evaluate_pair
from svfnet.evaluation.records import Records, error_text
from svfnet.evaluation.tables import METHOD_NAMES
from svfnet.ops import fields
from svfnet.registration.arrays import register

logger = logging.getLogger(__name__)

# Methods run as parallel tasks (optimisation: seconds per pair), the others in this process.
TASK_METHODS = ("svfnet_refined", "lcc_demons", "sitk_demons", "ants_syn")


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class PairTask:
    """One registration to run: a method and the pair's arrays (tasks carry their inputs, so that
    Dask workers need not see the work folder).

    Attributes:
        method: a key of :data:`METHODS` run as a task (one of :data:`TASK_METHODS`).
        moving_id, fixed_id: subject ids.
        moving_image, fixed_image: ``(I, J, K)`` float32.
        moving_labels, fixed_labels: ``(I, J, K)`` uint8.
        spacing_mm: voxel size along ``(i, j, k)``.
        params: the method's parameters (keyword arguments).
        scores: compute the metrics (``True``) or return the displacement (``False``, the gallery).
        initial_svf: SVF-Net + refinement: the network's SVF the demons start from.
        network_seconds: SVF-Net + refinement: the network's time, counted in the pair's time.
    """

    method: str
    moving_id: str
    fixed_id: str
    moving_image: np.ndarray
    fixed_image: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    params: dict[str, Any]
    scores: bool = True
    initial_svf: np.ndarray | None = None
    network_seconds: float = 0.0


def task_displacement(task: PairTask) -> tuple[np.ndarray, float]:
    """Runs an optimisation method on a pair: ``(displacement (3, I, J, K) in voxels, seconds)``.

    The time covers the registration and, for LCC Log-Demons, the exponential of its SVF.
    """
    started = time.perf_counter()
    if task.method in ("lcc_demons", "svfnet_refined"):
        params = dict(task.params)
        if isinstance(params.get("iterations"), list):
            params["iterations"] = tuple(params["iterations"])
        if task.method == "svfnet_refined":
            if task.initial_svf is None:
                raise ValueError("task_displacement(): SVF-Net + refinement needs the network's SVF")
            params["initial_svf"] = task.initial_svf
            started -= task.network_seconds  # the user waits for the network, then the demons
        svf = lcc_demons.register(task.moving_image, task.fixed_image, spacing=task.spacing_mm, **params)
        disp = np.asarray(fields.exp(svf))
    elif task.method == "sitk_demons":
        disp = sitk_demons(task.moving_image, task.fixed_image, task.spacing_mm, **task.params)
    elif task.method == "ants_syn":
        disp = ants_syn(task.moving_image, task.fixed_image, task.spacing_mm, **task.params)
    else:
        raise ValueError(f"task_displacement(): {task.method!r} is not run as a task")
    return disp, time.perf_counter() - started


def evaluate_task(task: PairTask) -> dict[str, Any]:
    """A worker's job: register the pair with ``task.method`` and score it (or return the field).

    Returns:
        ``{"seconds", "threads", "rows"}`` (rows of :func:`svfnet.evaluation.metrics.evaluate_pair`), or with
        ``task.scores`` false ``{"seconds", "threads", "disp"}``.
    """
    import torch

    disp, seconds = task_displacement(task)
    result: dict[str, Any] = {"seconds": seconds, "threads": torch.get_num_threads()}
    if not task.scores:
        result["disp"] = disp
        return result
    result["rows"] = evaluate_pair(
        task.moving_image,
        task.fixed_image,
        task.moving_labels,
        task.fixed_labels,
        spacing=task.spacing_mm,
        disp=disp,
    )
    return result


def svfnet_displacement(model: Any, moving: Any, fixed: Any) -> tuple[np.ndarray, float]:
    """SVF-Net on a pair: ``(displacement, seconds of network + exponential + warp)``."""
    registration = register(moving.image, fixed.image, model, spacing_mm=tuple(moving.spacing_mm))
    return np.asarray(registration.displacement, dtype=np.float32), float(registration.seconds)


def run_in_process(
    method: str,
    pairs: Sequence[tuple[str, str]],
    subjects: Mapping[str, Any],
    problem_of: Callable[[str, str], str | None],
    records: Records,
    key: str,
    model: Any,
    progress: bool,
) -> int:
    """SVF-Net or the identity on each pair, in this process; each pair's record written at once."""
    from tqdm.auto import tqdm

    threads = torch_threads()
    if method == "svfnet":
        # one untimed pass first: the first call pays for thread pools and allocations
        valid = [pair for pair in pairs if problem_of(*pair) is None]
        if valid:
            try:
                svfnet_displacement(model, subjects[valid[0][0]], subjects[valid[0][1]])
            except Exception:  # the pair's own call below reports the error
                pass
    for moving_id, fixed_id in tqdm(
        pairs, desc=METHOD_NAMES[method], disable=not progress or not pairs, unit="pair"
    ):
        problem = problem_of(moving_id, fixed_id)
        if problem is not None:
            records.write(method, moving_id, fixed_id, key, error=problem)
            continue
        moving, fixed = subjects[moving_id], subjects[fixed_id]
        try:
            if method == "identity":
                disp, seconds = np.zeros((3, *fixed.image.shape), dtype=np.float32), 0.0
            else:
                disp, seconds = svfnet_displacement(model, moving, fixed)
            rows = evaluate_pair(
                moving.image, fixed.image, moving.labels, fixed.labels, spacing=fixed.spacing_mm, disp=disp
            )
        except Exception as error:  # a bad pair is reported in the tables, not fatal to the run
            logger.warning(
                "%s failed on %s -> %s: %s", METHOD_NAMES[method], moving_id, fixed_id, error_text(error)
            )
            records.write(method, moving_id, fixed_id, key, error=error_text(error))
            continue
        # the identity computes nothing: no thread count to show
        records.write(
            method,
            moving_id,
            fixed_id,
            key,
            rows=rows,
            seconds=seconds,
            threads=None if method == "identity" else threads,
        )
    return len(pairs)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def make_task(
    method: str, moving: Any, fixed: Any, params: Mapping[str, Any], model: Any, *, scores: bool = True
) -> PairTask:
    initial_svf, network_seconds = None, 0.0
    if method == "svfnet_refined":  # the network here (fast, maybe on the GPU); the demons in the task
        registration = register(moving.image, fixed.image, model, spacing_mm=tuple(moving.spacing_mm))
        initial_svf, network_seconds = registration.svf, float(registration.seconds)
    return PairTask(
        method,
        moving.id,
        fixed.id,
        moving.image,
        fixed.image,
        moving.labels,
        fixed.labels,
        tuple(fixed.spacing_mm),
        dict(params),
        scores,
        initial_svf,
        network_seconds,
    )


def run_as_tasks(
    task_pairs: Sequence[tuple[str, tuple[str, str]]],
    subjects: Mapping[str, Any],
    problem_of: Callable[[str, str], str | None],
    records: Records,
    keys: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    model: Any,
    *,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> dict[str, int]:
    """The optimisation methods' pairs as parallel tasks; each record written as its task completes."""
    computed: dict[str, int] = {}
    tasks, owners = [], []
    for method, (moving_id, fixed_id) in task_pairs:
        computed[method] = computed.get(method, 0) + 1
        problem = problem_of(moving_id, fixed_id)
        if problem is not None:
            records.write(method, moving_id, fixed_id, keys[method], error=problem)
            continue
        try:
            tasks.append(make_task(method, subjects[moving_id], subjects[fixed_id], params[method], model))
        except Exception as error:  # the network failed on this pair: reported in the tables
            records.write(method, moving_id, fixed_id, keys[method], error=error_text(error))
            continue
        owners.append((method, moving_id, fixed_id))
    description = " + ".join(dict.fromkeys(METHOD_NAMES[m] for m, _, _ in owners))
    for outcome in run_tasks(
        evaluate_task, tasks, workers=workers, scheduler=scheduler, progress=progress, description=description
    ):
        method, moving_id, fixed_id = owners[outcome.index]
        if outcome.error is not None:
            logger.warning(
                "%s failed on %s -> %s: %s",
                METHOD_NAMES[method],
                moving_id,
                fixed_id,
                error_text(outcome.error),
            )
            records.write(method, moving_id, fixed_id, keys[method], error=error_text(outcome.error))
        else:
            value = outcome.value
            records.write(
                method,
                moving_id,
                fixed_id,
                keys[method],
                rows=value["rows"],
                seconds=value["seconds"],
                threads=value["threads"],
            )
    return computed
