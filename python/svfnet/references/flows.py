"""The references stage's LDDMM deformations: each subject's flow (the shapes stage's momenta),
``φ_n⁻¹`` of the grid and ``φ_n`` tabulated over the template space, composed into a pair's
displacement ``u = φ_moving ∘ φ_fixed⁻¹ − id`` on the fixed grid (``deformation="lddmm"``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.parallel import run_tasks
from svfnet.common.workdir import WorkDir
from svfnet.shapes.lddmm import geodesic_flow
from svfnet.shapes.parameters import LddmmParameters

__all__ = ["checked_flows", "composed_flows", "tabulate_flows"]


def _grid_points_mm(shape: tuple[int, int, int], spacing_mm) -> np.ndarray:
    """Every voxel centre of a grid, ``(I·J·K, 3)`` mm, voxel ``(i, j, k)`` at ``(i, j, k) · spacing``."""
    indices = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return indices * np.asarray(spacing_mm, dtype=np.float64)


def _inverse_flow_task(task: dict[str, Any]) -> np.ndarray:
    """``φ_n⁻¹`` of every voxel of the grid, ``(I·J·K, 3)`` mm float32: where subject n's voxels
    come from in the template's space (the grid's points for the template itself)."""
    points = _grid_points_mm(task["shape"], task["spacing_mm"])
    if task["flow"] is None:
        return points.astype(np.float32)
    flow = geodesic_flow(*task["flow"], LddmmParameters(**task["lddmm"]))
    return flow.inverse_transform_points(points).astype(np.float32)


@dataclass(frozen=True)
class _FlowTable:
    """Where the template space's points land, tabulated: ``φ_n`` on a regular grid of the template
    space (``origin_mm + index · step_mm``) as cubic B-spline coefficients, one array per axis."""

    origin_mm: np.ndarray  # (3,)
    step_mm: float
    counts: tuple[int, int, int]

    @staticmethod
    def covering(points_mm: list[np.ndarray], sigma_v_mm: float) -> _FlowTable:
        """A table over the box of all ``points_mm`` plus a margin, its step ``σ_V / 8``: the flows
        vary at the scale σ_V, and cubic interpolation at that step is within 0.1 mm of them."""
        step = sigma_v_mm / 8.0
        low = np.min([p.min(axis=0) for p in points_mm], axis=0) - _TABLE_MARGIN * step
        high = np.max([p.max(axis=0) for p in points_mm], axis=0) + _TABLE_MARGIN * step
        counts = tuple(int(n) for n in np.ceil((high - low) / step).astype(int) + 1)
        return _FlowTable(low.astype(np.float64), float(step), counts)

    def points_mm(self) -> np.ndarray:
        return self.origin_mm + _grid_points_mm(self.counts, (self.step_mm,) * 3)

    def sample(self, coefficients: np.ndarray | None, points_mm: np.ndarray) -> np.ndarray:
        """``φ_n(points)`` (mm, float64) from the coefficients of :func:`_flow_table_task` (None:
        the identity)."""
        if coefficients is None:
            return points_mm.astype(np.float64)
        from scipy.ndimage import map_coordinates

        at = ((points_mm - self.origin_mm) / self.step_mm).T
        return np.stack(
            [
                map_coordinates(coefficients[axis], at, order=3, mode="nearest", prefilter=False)
                for axis in range(3)
            ],
            axis=1,
        )


_TABLE_MARGIN = 4  # table steps beyond the points: the cubic prefilter's border reaches ~0.27^4 of a step in


def _flow_table_task(task: dict[str, Any]) -> np.ndarray | None:
    """``φ_n`` on a :class:`_FlowTable`'s points as cubic B-spline coefficients ``(3, *counts)``
    float32 (None for the template: the identity)."""
    from scipy.ndimage import spline_filter

    if task["flow"] is None:
        return None
    table: _FlowTable = task["table"]
    moved = geodesic_flow(*task["flow"], LddmmParameters(**task["lddmm"])).transform_points(table.points_mm())
    moved = moved.reshape(*table.counts, 3)
    coefficients = [spline_filter(moved[..., axis], order=3, mode="nearest") for axis in range(3)]
    return np.stack(coefficients).astype(np.float32)


def composed_flows(task: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``u = φ_moving ∘ φ_fixed⁻¹ − id`` on the fixed grid (voxels) for every moving subject, and
    ``(u − u⁻¹) / 2`` to start its logarithm from (``u⁻¹ = φ_fixed ∘ φ_moving⁻¹ − id``, its inverse).

    ``φ_n`` is the LDDMM deformation of the template onto subject n (the shapes stage's momenta).
    The task carries, per subject, ``φ_n⁻¹`` of the grid's voxels (:func:`_inverse_flow_task`) and
    ``φ_n`` tabulated over the template space (:func:`_flow_table_task`), both computed once per
    subject: a pair is then two interpolations.
    """
    shape, spacing = tuple(task["shape"]), np.asarray(task["spacing_mm"], dtype=np.float64)
    points = _grid_points_mm(shape, spacing)
    table: _FlowTable = task["table"]
    fixed_inverse, fixed_table = task["fixed"]

    def displacement(moved: np.ndarray) -> np.ndarray:
        return ((moved - points) / spacing).T.reshape(3, *shape).astype(np.float32)

    grids = np.empty((len(task["moving"]), 3, *shape), dtype=np.float32)
    initials = np.empty_like(grids)
    for n, (moving_inverse, moving_table) in enumerate(task["moving"]):
        grids[n] = displacement(table.sample(moving_table, fixed_inverse))
        initials[n] = 0.5 * (grids[n] - displacement(table.sample(fixed_table, moving_inverse)))
    return grids, initials


def tabulate_flows(subjects, flows, lddmm, shape, spacing, workers, scheduler, progress):
    """Every subject's ``φ_n⁻¹`` of the grid and ``φ_n`` tabulated over the template space that
    those cover (two passes of one task per subject)."""
    common = {"lddmm": lddmm, "shape": shape, "spacing_mm": spacing}

    def each(func, description: str, extra: dict[str, Any]) -> dict[str, Any]:
        out = {}
        tasks = [{**common, **extra, "flow": flows[subject]} for subject in subjects]
        for outcome in run_tasks(
            func, tasks, workers=workers, scheduler=scheduler, progress=progress, description=description
        ):
            subject = subjects[outcome.index]
            if outcome.error is not None:
                raise RuntimeError(
                    f"the LDDMM flow of subject {subject} failed: {outcome.error}"
                ) from outcome.error
            out[subject] = outcome.value
        return out

    inverse = each(_inverse_flow_task, "inverse flows", {})
    table = _FlowTable.covering(list(inverse.values()), LddmmParameters(**lddmm).sigma_v_mm)
    tables = each(_flow_table_task, "flow tables", {"table": table})
    return {subject: (inverse[subject], tables[subject]) for subject in subjects}, table


def checked_flows(workdir: Path, stored: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each subject's LDDMM flow from its shapes record ``stored[subject]``, ``(control_points_mm,
    momenta)`` (None for the template, mapped onto itself by the identity), and the flow's parameters."""
    config_path = WorkDir(workdir).shapes / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: run `svfnet shapes` for this work folder first")
    config = json.loads(config_path.read_text())
    settings = config.get("lddmm", {})
    lddmm = {
        key: settings[key] for key in ("sigma_v_mm", "time_steps", "integrator", "dtype") if key in settings
    }
    flows: dict[str, Any] = {}
    for subject, record in stored.items():
        if "momenta" not in record or "control_points_mm" not in record:
            if subject == config.get("template"):
                flows[subject] = None
                continue
            raise ValueError(
                f"the shapes stage stored no LDDMM momenta for subject {subject!r}: re-run `svfnet shapes`"
            )
        control_points = np.asarray(record["control_points_mm"], dtype=np.float64)
        momenta = np.asarray(record["momenta"], dtype=np.float64)
        if control_points.ndim != 2 or control_points.shape[1] != 3 or momenta.shape != control_points.shape:
            raise ValueError(
                f"the LDDMM momenta of subject {subject!r} are malformed: re-run `svfnet shapes`"
            )
        if not (np.isfinite(control_points).all() and np.isfinite(momenta).all()):
            raise ValueError(
                f"the LDDMM momenta of subject {subject!r} have non-finite values: re-run `svfnet shapes`"
            )
        flows[subject] = (control_points, momenta)
    return flows, lddmm
