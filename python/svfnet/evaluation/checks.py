"""The argument checks of the metrics (:mod:`svfnet.evaluation.metrics`) and of LCC Log-Demons: arrays
(NumPy or torch) turned into checked NumPy volumes, fields and voxel sizes, with a ValueError naming
the function and the argument otherwise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_numpy", "checked_field", "checked_spacing", "checked_volume"]


def as_numpy(func: str, name: str, x: Any) -> np.ndarray:
    """``x`` as a NumPy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor: no need to import torch
        return x.detach().cpu().numpy()
    if isinstance(x, list | tuple):
        return np.asarray(x)
    raise TypeError(f"{func}(): '{name}' must be a NumPy array or a torch tensor, got {type(x).__name__}")


def checked_volume(
    func: str,
    name: str,
    x: Any,
    *,
    kind: str = "image",
    shape: tuple[int, ...] | None = None,
    shape_of: str = "",
) -> np.ndarray:
    """A checked ``(I, J, K)`` volume: float64 finite image, int64 labels or bool mask."""
    a = as_numpy(func, name, x)
    if a.ndim != 3 or min(a.shape) == 0:
        raise ValueError(
            f"{func}(): '{name}' must be a non-empty (I, J, K) volume, got shape {tuple(a.shape)}"
        )
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"{func}(): '{name}' has shape {tuple(a.shape)} but '{shape_of}' has {tuple(shape)}: "
            "they must be on the same grid"
        )
    if kind == "mask":
        if a.dtype != np.bool_:
            raise ValueError(f"{func}(): '{name}' must be a boolean mask, got dtype {a.dtype}")
        return a
    if kind == "labels":
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{func}(): '{name}' must hold integer labels, got dtype {a.dtype}")
        return a.astype(np.int64, copy=False)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{func}(): '{name}' must be a real-valued image, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"{func}(): '{name}' holds {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite values"
        )
    return a


def checked_spacing(func: str, spacing: Any) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats (mm); ValueError naming ``func`` otherwise."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(
            f"{func}(): 'spacing' must be three positive numbers (mm), got {spacing!r}"
        ) from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{func}(): 'spacing' must be three positive numbers (mm), got {spacing!r}")
    return values  # type: ignore[return-value]


def checked_field(func: str, name: str, x: Any, grid: tuple[int, ...], grid_of: str) -> np.ndarray:
    """A checked ``(3, I, J, K)`` finite float32 field on ``grid`` (the grid of argument ``grid_of``)."""
    a = as_numpy(func, name, x)
    if a.ndim != 4 or a.shape[0] != 3:
        raise ValueError(
            f"{func}(): '{name}' must be a (3, I, J, K) field in voxels, got shape {tuple(a.shape)}"
        )
    if tuple(a.shape[1:]) != tuple(grid):
        raise ValueError(
            f"{func}(): '{name}' has grid {tuple(a.shape[1:])} but '{grid_of}' has {tuple(grid)}: "
            "they must be on the same grid"
        )
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{func}(): '{name}' must be a floating-point field, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{func}(): '{name}' holds NaN or infinite values")
    return a
