"""The references store (``WORKDIR/references/``): its format, why a pair is left out of training,
and :class:`ReferenceStore`, which reads the SVFs and records that :func:`svfnet.references.stage.run_references` wrote."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.staging import load_npy
from svfnet.common.workdir import WorkDir

__all__ = [
    "EXCLUSION_REASONS",
    "FOLDED",
    "NON_FINITE",
    "NOT_CONVERGED",
    "OUT_OF_RANGE",
    "STORE_FORMAT",
    "USABLE_RESIDUAL_MAX_VOX",
    "USABLE_RESIDUAL_MEAN_VOX",
    "ReferenceStore",
    "exclusion",
]

# Why a pair is left out of training: a record's "excluded" (None: usable).
FOLDED = "folded"  # id + u folds: it has no logarithm
NOT_CONVERGED = "not converged"  # the logarithm's residual is above the usable limits below
NON_FINITE = "non-finite"  # the spline or the logarithm produced a non-finite value
OUT_OF_RANGE = "out of range"  # the storage dtype cannot hold the SVF (float16 tops out at 65504)
EXCLUSION_REASONS = (FOLDED, NOT_CONVERGED, NON_FINITE, OUT_OF_RANGE)
# A usable pair's logarithm residual |exp(v) - u|, voxels, over the voxels id + u maps into the
# grid: at most this anywhere and on average (ReferenceStore.pairs' defaults).
USABLE_RESIDUAL_MAX_VOX = 1.0
USABLE_RESIDUAL_MEAN_VOX = 0.05
# The store's layout: 1 had no "excluded" in its records (derived when read, see exclusion());
# 2 says why each pair is left out and never holds a non-finite value.
STORE_FORMAT = 2


def exclusion(record: dict[str, Any]) -> str | None:
    """Why a pair's record leaves it out of training (one of :data:`EXCLUSION_REASONS`), or None.

    Records of format 2 say it (``"excluded"``); for a store written before (format 1) it is
    derived from the fields those records have, with the same limits, so that an old store reads
    the same way (an SVF whose float16 storage overflowed, recorded with an infinite
    ``float16_error``, is out of range).
    """
    if "excluded" in record:
        return record["excluded"]
    if record.get("folds"):
        return FOLDED
    residual_max, residual_mean = record.get("residual_max"), record.get("residual_mean")
    if residual_max is None or residual_mean is None or not math.isfinite(residual_max + residual_mean):
        return NON_FINITE
    error = record.get("float16_error")
    if error is not None and not math.isfinite(error):
        return OUT_OF_RANGE
    if residual_max > USABLE_RESIDUAL_MAX_VOX or residual_mean > USABLE_RESIDUAL_MEAN_VOX:
        return NOT_CONVERGED
    return None


class ReferenceStore:
    """Reads the reference SVFs written by :func:`svfnet.references.stage.run_references` (memory-mapped, fast)."""

    def __init__(self, workdir: str | Path) -> None:
        self.folder = WorkDir(workdir).references
        if not (self.folder / "pairs").is_dir():
            raise FileNotFoundError(f"no references in {self.folder}: run `svfnet references` first")

    @cache  # noqa: B019 - one store per work folder, kept for the process
    def _record(self, fixed: str) -> dict[str, Any]:
        return json.loads((self.folder / "pairs" / f"{fixed}.json").read_text())

    @cache  # noqa: B019
    def _svfs(self, fixed: str) -> np.ndarray:
        return load_npy(self.folder / "svf" / f"{fixed}.npy")  # a truncated file is named

    def fixed_subjects(self) -> list[str]:
        return sorted(path.stem for path in (self.folder / "pairs").glob("*.json"))

    def records(self) -> list[dict[str, Any]]:
        """Every pair's record: moving, fixed, ``excluded`` (why it is left out of training, or
        None), residuals, folds, iterations, timings."""
        return [
            {"fixed": fixed, **pair, "excluded": exclusion(pair)}
            for fixed in self.fixed_subjects()
            for pair in self._record(fixed)["pairs"]
        ]

    def pairs(
        self,
        *,
        max_residual_vox: float | None = USABLE_RESIDUAL_MAX_VOX,
        max_mean_residual_vox: float = USABLE_RESIDUAL_MEAN_VOX,
    ) -> list[tuple[str, str]]:
        """(moving, fixed) pairs whose reference is usable for training.

        A pair is left out when its record excludes it for anything but its residual: ``id + u``
        folded (no logarithm), a value was non-finite, or the store could not hold the SVF (see
        :data:`EXCLUSION_REASONS`); and when the logarithm's residual ``|exp(v) − u|`` exceeds
        ``max_residual_vox`` anywhere (None: no limit) or ``max_mean_residual_vox`` on average, both
        over the voxels that ``id + u`` maps into the grid (elsewhere a warp reads the fill and no
        SVF reaches an outward stretch: see :func:`svfnet.ops.fields.log`). With the default limits
        these are exactly the pairs whose record has ``excluded: null``.
        """
        return [
            (r["moving"], r["fixed"])
            for r in self.records()
            if r["excluded"] in (None, NOT_CONVERGED)
            and (max_residual_vox is None or r["residual_max"] <= max_residual_vox)
            and r["residual_mean"] <= max_mean_residual_vox
        ]

    def svf(self, moving: str, fixed: str) -> np.ndarray:
        """The reference SVF of (moving, fixed), float32 ``(3, I, J, K)`` in voxels of the fixed grid.

        Raises:
            KeyError: no such pair.
            ValueError: the stored SVF holds non-finite values (a store written before format 2,
                where float16 could overflow; :meth:`pairs` leaves such pairs out).
        """
        try:
            index = self._record(fixed)["moving"].index(moving)
        except (FileNotFoundError, ValueError):
            raise KeyError(f"no reference for moving {moving!r}, fixed {fixed!r}") from None
        svf = np.asarray(self._svfs(fixed)[index], dtype=np.float32)
        if not np.isfinite(svf).all():
            raise ValueError(
                f"the reference SVF of moving {moving!r}, fixed {fixed!r} in {self.folder} holds non-finite values "
                "(written by an older svfnet): remove the folder and run `svfnet references` again"
            )
        return svf
