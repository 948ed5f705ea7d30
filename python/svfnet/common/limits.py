"""Bounds on every size a run can be given, and estimates of what a stage needs before it starts.

svfnet refuses a request it cannot finish on this machine before it starts work, rather than an
hour later (or when the out-of-memory killer ends it): the grid, the cohort, the training and
the shapes settings have documented limits (:data:`LIMITS_TEXT`, docs/pipeline.md), and the
memory and disk a stage will need are estimated from its inputs and compared with what the
machine has (:func:`check_memory`, :func:`check_disk`). The estimates are measured upper bounds of
the stage's largest arrays, not exact figures; an estimate above what is available refuses the
run with the estimate and what to change.

No torch and no work folder here: the command line checks its flags with these functions before
it imports anything heavy.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_GRID_AXIS",
    "MAX_GRID_VOXELS",
    "MAX_LANDMARKS",
    "MAX_STEPS",
    "MAX_SUBJECTS",
    "MAX_WORKERS",
    "ResourceError",
    "available_memory_bytes",
    "check_disk",
    "check_grid",
    "check_grid_shape",
    "check_memory",
    "check_run_name",
    "check_train_config",
    "check_workers",
    "format_bytes",
    "prepare_memory_bytes",
    "references_disk_bytes",
    "references_memory_bytes",
    "synthetic_disk_bytes",
    "train_memory_bytes",
]

# ---------------------------------------------------------------------------------- the limits
MAX_GRID_AXIS = 1024  # voxels along any axis of the common grid
MAX_GRID_VOXELS = 1 << 24  # 16.8 M voxels (256 x 256 x 256): 64 x 64 x 16 is 65,536
MAX_SUBJECTS = 10_000  # a cohort (synthetic, or a dataset); references grow as its square
MAX_STEPS = 10_000_000  # training steps (and steps between validations or checkpoints)
MAX_BATCH = 1024  # pairs per training step
MAX_WIDTH = 1024  # channels of a U-Net level
MAX_LANDMARKS = 10_000  # the spline's system is (3K + 12)² float64: 7 GB at K = 10,000
MAX_TRIANGLES = 1_000_000
MAX_WORKERS = 1024
MAX_SEED = 2**32 - 1

# What the limits above say, for the documentation and `svfnet config --defaults`.
LIMITS_TEXT = (
    f"grid: each axis 2 to {MAX_GRID_AXIS:,} voxels, at most {MAX_GRID_VOXELS:,} voxels, in-plane sizes "
    f"divisible by 8, slice count by 2; cohort: 2 to {MAX_SUBJECTS:,} subjects; training: 1 to "
    f"{MAX_STEPS:,} steps, batches of 1 to {MAX_BATCH:,}; landmarks: 4 to {MAX_LANDMARKS:,}"
)


class ResourceError(ValueError):
    """A stage would need more memory or disk than the machine has (the message has the estimate)."""


# ---------------------------------------------------------------------------------- grids
def check_grid(grid: Iterable[Any], where: str = "SVFNet") -> None:
    """Raises ValueError unless ``grid`` (I, J, K) has in-plane sizes divisible by 8 and K by 2,
    and the coarsest level of SVF-Net (I/8, J/8, K/2) more than one voxel (normalisation needs two).

    (SVF-Net pools twice in plane, then once in all three axes: :mod:`svfnet.training.model`.)
    """
    grid = tuple(int(s) for s in grid)
    if len(grid) != 3 or grid[0] % 8 or grid[1] % 8 or grid[2] % 2 or min(grid) < 2:
        raise ValueError(
            f"{where}: the grid must have in-plane sizes divisible by 8 and a slice count divisible by 2 "
            f"(e.g. 64x64x16), got {'x'.join(map(str, grid))}"
        )
    if grid[0] // 8 * (grid[1] // 8) * (grid[2] // 2) < 2:
        raise ValueError(
            f"{where}: the grid {'x'.join(map(str, grid))} leaves one voxel at the coarsest level "
            "(I/8 x J/8 x K/2): use a larger grid (e.g. 64x64x16)"
        )


def check_grid_shape(shape: Iterable[Any], where: str = "--shape") -> tuple[int, int, int]:
    """The common grid ``(I, J, K)`` checked against the limits and SVF-Net's divisibility rule
    (a grid prepared for nothing that can train on it is refused by ``svfnet prepare`` already)."""
    values = tuple(shape)
    if len(values) != 3 or any(
        isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) for n in values
    ):
        raise ValueError(f"{where} must be three integers (I J K), got {values}")
    grid = tuple(int(n) for n in values)
    if min(grid) < 2 or max(grid) > MAX_GRID_AXIS:
        raise ValueError(
            f"{where} must have 2 to {MAX_GRID_AXIS:,} voxels along each axis, got {'x'.join(map(str, grid))}"
        )
    if math.prod(grid) > MAX_GRID_VOXELS:
        raise ValueError(
            f"{where} {'x'.join(map(str, grid))} has {math.prod(grid):,} voxels, above the limit of "
            f"{MAX_GRID_VOXELS:,} (256x256x256)"
        )
    check_grid(grid, where)
    return grid  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- small checks
def check_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low:,} to {high:,}, got {value!r}")
    return value


def check_workers(workers: Any, name: str = "--workers") -> int | None:
    """``None`` (one per core) or an integer from 1 to :data:`MAX_WORKERS`."""
    if workers is None:
        return None
    return check_int(workers, name, 1, MAX_WORKERS)


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_name(run: Any) -> str:
    """A training run's name: one folder under ``WORKDIR/models`` (letters, digits, ``._-``, not
    starting with a dot), so that no name reaches outside the work folder."""
    if not isinstance(run, str) or not _RUN_NAME.match(run) or run in (".", ".."):
        raise ValueError(
            f"--run must be a plain folder name (letters, digits, '.', '_', '-'; not starting with '.' "
            f"or holding '/'), got {run!r}: runs live in WORKDIR/models/RUN"
        )
    return run


def check_train_config(config: Any) -> None:
    """A :class:`svfnet.training.train_config.TrainConfig` against the limits (its own checks refuse what is not
    positive or not finite; these refuse what is too large to be meant)."""
    for name, high in (
        ("steps", MAX_STEPS),
        ("batch_size", MAX_BATCH),
        ("validate_every", MAX_STEPS),
        ("checkpoint_every", MAX_STEPS),
    ):
        check_int(getattr(config, name), f"train: '{name}'", 1, high)
    if not config.learning_rate <= 1.0:
        raise ValueError(f"train: 'learning_rate' must be at most 1 (Adam), got {config.learning_rate!r}")
    if any(not 1 <= int(w) <= MAX_WIDTH for w in config.model.widths):
        raise ValueError(
            f"train: 'widths' must be from 1 to {MAX_WIDTH} channels, got {list(config.model.widths)}"
        )


# ---------------------------------------------------------------------------------- the machine
def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def _cgroup_room() -> int | None:
    """What the cgroup (v2) this process runs in still allows, where it sets a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if not limit.isdigit() or not used.isdigit():
        return None  # "max": no limit
    return max(0, int(limit) - int(used))


def available_memory_bytes() -> int | None:
    """Memory this process can still take: the kernel's ``MemAvailable`` (free plus reclaimable
    cache), or less where a cgroup limit says so; None where neither is known."""
    candidates = [v for v in (_meminfo().get("MemAvailable"), _cgroup_room()) if v is not None]
    return min(candidates) if candidates else None


def format_bytes(count: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 1e3:.0f} kB"


def check_memory(estimate_bytes: float, what: str, advice: str) -> None:
    """ResourceError when ``estimate_bytes`` exceeds the memory available now."""
    available = available_memory_bytes()
    if available is not None and estimate_bytes > available:
        raise ResourceError(
            f"{what} would need about {format_bytes(estimate_bytes)} of memory (estimate), this machine has "
            f"{format_bytes(available)} available: {advice}"
        )


def check_disk(estimate_bytes: float, folder: str | os.PathLike, what: str, advice: str) -> None:
    """ResourceError when ``estimate_bytes`` exceeds the free space of the disk holding ``folder``
    (or of its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if estimate_bytes > free:
        raise ResourceError(
            f"{what} would write about {format_bytes(estimate_bytes)} (estimate), the disk holding {path} has "
            f"{format_bytes(free)} free: {advice}"
        )


# ---------------------------------------------------------------------------------- estimates
# Measured peaks (tracemalloc / maxrss, 2026-11-24) with a margin: prepare ~80-150 bytes per voxel
# of the common grid (positions, indices and interpolation buffers in float64) plus the original
# volume and its anti-aliased copy; SVF-Net's training ~82 bytes per channel-voxel per pair of a
# batch (activations kept for the backward pass: 2.35 kB a voxel at the default widths).
_PREPARE_BYTES_PER_GRID_VOXEL = 160
_PREPARE_BYTES_PER_ORIGINAL_VOXEL = 48
_TRAIN_BYTES_PER_CHANNEL_VOXEL = 100
_BASE_BYTES = 300e6  # the interpreter, NumPy, SciPy and torch themselves


def prepare_memory_bytes(grid: Iterable[int], largest_original_voxels: int) -> float:
    """Peak memory of ``svfnet prepare``: one subject at a time, so the grid and the largest volume."""
    return (
        _BASE_BYTES
        + _PREPARE_BYTES_PER_GRID_VOXEL * math.prod(grid)
        + _PREPARE_BYTES_PER_ORIGINAL_VOXEL * largest_original_voxels
    )


def train_memory_bytes(
    grid: Iterable[int], widths: Iterable[int], convs_per_level: int, batch_size: int, subjects: int
) -> float:
    """Peak memory of training: the activations of a batch (forward and backward) and the cohort
    held in memory (float32 images and uint8 labels, loaded twice: training and validation)."""
    voxels = math.prod(grid)
    per_level = (1.0, 1 / 4, 1 / 16, 1 / 128)  # SVF-Net pools 2x2x1, 2x2x1, then 2x2x2
    channel_voxels = sum(w * f for w, f in zip(widths, per_level, strict=False)) * voxels
    activations = _TRAIN_BYTES_PER_CHANNEL_VOXEL * channel_voxels * batch_size * max(1.0, convs_per_level / 2)
    return _BASE_BYTES + activations + 2 * 5 * voxels * subjects


def references_disk_bytes(subjects: int, grid: Iterable[int], dtype: str) -> float:
    """The reference store: one SVF (3 components) per ordered pair of ``subjects``."""
    itemsize = 2 if dtype == "float16" else 4
    return float(subjects) * max(subjects - 1, 0) * 3 * math.prod(grid) * itemsize


def references_memory_bytes(
    landmarks: int, grid: Iterable[int], workers: int, *, deformation: str = "lddmm", subjects: int = 0
) -> float:
    """Peak memory of the references stage: per worker, up to 64 moving subjects' float32
    displacements, starts of the logarithm and SVFs; with the spline ("ebs"), its LU-factorised
    (3K + 12)² float64 system; with the composed flows ("lddmm"), every subject's flows in the
    driver and those of a task's 65 subjects in its worker: φ⁻¹ of the grid and φ tabulated over
    the template space (about 5.4 times the grid's voxels on the 64×64×16 grid at ACDC's voxel size:
    counted as 6), float32."""
    voxels = math.prod(grid)
    fields = 64 * 3 * voxels * 4 * 4
    if deformation == "lddmm":
        flows = 3 * 4 * voxels * (1 + 6)
        return _BASE_BYTES + subjects * flows + workers * (fields + 65 * flows)
    system = 8.0 * (3 * landmarks + 12) ** 2 * 2
    return _BASE_BYTES + workers * (system + fields)


def synthetic_disk_bytes(subjects: int, realism: str) -> float:
    """The built-in cohort on disk: ~0.35 MB a standard subject; a clinical one up to 3 M voxels
    (about 6 MB compressed at most, 2 MB on average)."""
    return float(subjects) * (0.4e6 if realism == "standard" else 2.5e6)
