"""Argument checks for the NumPy-side arrays the public functions take: one home for them.

Every public function that takes an image, a label map, a mask, a displacement or velocity field or a
voxel spacing checks it here before any work, and a bad one raises an error that names the function
and the argument (``dice(): 'mask_b' has shape (4, 4, 4) but 'mask_a' has (4, 4, 5): ...``). Inputs
may be NumPy arrays or torch tensors (detached and brought to the CPU; torch is not imported here).
The torch-side checks of the compiled operations live with them (:mod:`svfnet.ops.backend`).

Conventions (README.md): volumes ``(I, J, K)``; fields ``(3, I, J, K)`` in voxels; spacing in mm
along ``(i, j, k)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_numpy", "checked_field", "checked_real_array", "checked_spacing", "checked_volume"]

VOLUME_KINDS = ("image", "labels", "mask")


def as_numpy(func: str, name: str, x: Any) -> np.ndarray:
    """``x`` as a NumPy array: torch tensors are detached and moved to the CPU, lists and tuples
    converted; anything else is a TypeError naming ``func`` and ``name``."""
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
    dtype: Any = np.float64,
    what: str = "volume",
) -> np.ndarray:
    """A checked, non-empty ``(I, J, K)`` volume.

    Args:
        func, name: the public function and its argument, for the error messages.
        x: a NumPy array or a torch tensor.
        kind: ``"image"`` (real-valued, finite; returned as ``dtype``), ``"labels"`` (integer or
            boolean; returned as int64) or ``"mask"`` (boolean, returned as is).
        shape, shape_of: the grid ``x`` must be on, and the argument that set it.
        dtype: the floating dtype an image is returned as.
        what: the noun of the shape error ("volume", "image").

    Raises:
        TypeError: ``x`` is not an array.
        ValueError: wrong dimensions or grid, wrong dtype for ``kind``, or (images) NaN or infinite values.
    """
    if kind not in VOLUME_KINDS:
        raise ValueError(f"checked_volume(): 'kind' must be one of {VOLUME_KINDS}, got {kind!r}")
    a = as_numpy(func, name, x)
    if a.ndim != 3 or min(a.shape) == 0:
        raise ValueError(
            f"{func}(): '{name}' must be a non-empty (I, J, K) {what}, got shape {tuple(a.shape)}"
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
    a = np.ascontiguousarray(a, dtype=dtype)
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"{func}(): '{name}' holds {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite values"
        )
    return a


def checked_field(func: str, name: str, x: Any, grid: tuple[int, ...], grid_of: str) -> np.ndarray:
    """A checked ``(3, I, J, K)`` float field in voxels on ``grid`` (the grid of ``grid_of``), as
    contiguous float32 with no NaN or infinite value."""
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


def checked_real_array(func: str, name: str, value: Any, ndim: int | tuple[int, ...]) -> np.ndarray:
    """A non-empty NumPy array of real numbers (floats finite) with one of the given numbers of
    dimensions, returned as is."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{func}(): '{name}' must be a NumPy array, got {type(value).__name__}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{func}(): '{name}' must be {expected}, got shape {value.shape}")
    if value.size == 0:
        raise ValueError(f"{func}(): '{name}' must not be empty, got shape {value.shape}")
    if value.dtype.kind not in "fiub":
        raise ValueError(f"{func}(): '{name}' must hold real numbers, got dtype {value.dtype}")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError(f"{func}(): '{name}' must be finite (it holds NaN or inf)")
    return value
