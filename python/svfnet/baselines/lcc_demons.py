"""LCC Log-Demons: symmetric log-domain diffeomorphic demons with the local correlation criterion.

The registration of a moving image ``M`` to a fixed image ``F`` is the stationary velocity field
(SVF) ``v`` whose exponential ``φ = exp(v)`` makes ``M ∘ φ`` look like ``F``, as measured by the
local correlation coefficient Λ (Gaussian window; one definition for this method and the metric,
:func:`svfnet.evaluation.metrics.local_moments`). Each iteration, on each level of a multi-resolution pyramid:

1. **Forward force** (fixed space): with ``W = M ∘ exp(v)``, the derivative ``∇Λ`` of the local
   correlation of ``(F, W)`` when ``W`` moves by ``+u/2`` and ``F`` by ``−u/2`` (a symmetric,
   ESM-like gradient), uniformly over the window; in mm. The demons step is
   ``u = ∇Λ / (|∇Λ|² + σ_I / Λ²) = Λ² ∇Λ / (Λ² |∇Λ|² + σ_I)``: the step that would raise the
   linearised Λ by one, damped where the local correlation is weak. Its length is at most
   ``|Λ| / (2 √σ_I)`` mm.
2. **Backward force** (moving space): the same with ``(M, F ∘ exp(−v))``, giving ``u_b``.
3. **Fluid-like regularisation**: both updates are smoothed by a Gaussian ``K_fluid``.
4. **Symmetric BCH update**: ``v_f = Z(v, u_f)``, ``v_b = Z(−v, u_b)`` with the
   Baker–Campbell–Hausdorff approximation ``Z(v, u) = v + u + ½ [v, u]``
   (``exp(v) ∘ exp(u) ≈ exp(Z(v, u))``, :func:`svfnet.ops.fields.lie_bracket`), and
   ``v ← (v_f − v_b) / 2``, so that registering ``F`` to ``M`` gives ``−v``.
5. **Elastic-like regularisation**: ``v ← K_elastic * v``.

The pyramid halves the axes whose voxel size is within 1.5× of the finest one (so thick slices
are not downsampled until the in-plane voxels have caught up with them) and never below
``min_size`` voxels. Lengths are given in millimetres for the finest grid and kept constant in
voxels on coarser levels (the usual coarse-to-fine behaviour); ``σ_I`` is scaled so that the
largest step is the same number of voxels on every level along the halved axes (along an axis
that is not halved, as thick slices, it grows with the level's downsampling factor).

References:
    Lorenzi, Ayache, Frisoni, Pennec. LCC-Demons: a robust and accurate symmetric diffeomorphic
    registration algorithm. NeuroImage 81 (2013) 470–483.
    Vercauteren, Pennec, Perchant, Ayache. Symmetric log-domain diffeomorphic registration: a
    demons-based approach. MICCAI 2008.
    Vercauteren, Pennec, Perchant, Ayache. Diffeomorphic demons: efficient non-parametric image
    registration. NeuroImage 45 (2009) S61–S72.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates

from svfnet.common.arrays import checked_field, checked_spacing, checked_volume
from svfnet.evaluation.metrics import (
    LCC_VARIANCE_FLOOR,
    gaussian_sigma_vox,
    local_moments,
    smooth,
    standardised,
)
from svfnet.ops import fields

__all__ = ["LCCDemonsInfo", "LCCDemonsParams", "LevelInfo", "register"]

logger = logging.getLogger(__name__)


_DEFAULT_ITERATIONS = (30, 30, 40)


@dataclass(frozen=True)
class LCCDemonsParams:
    """Parameters of LCC Log-Demons. Lengths in mm on the finest grid.

    The defaults were chosen by a grid search on synthetic training pairs
    (``benchmarks/tune_lcc_demons.py``; the record is in ``docs/evaluation.md``).

    Attributes:
        levels: resolution levels (the pyramid may stop earlier when no axis can be halved).
        iterations: iterations per level, coarsest first; an int gives every level the same. The
            default (30, 30, 40) follows ``levels``: 40 on the finest level, 30 on the others.
        sigma_lcc_mm: standard deviation of the Gaussian window of the local correlation.
        sigma_fluid_mm: standard deviation of the Gaussian smoothing of each update (fluid-like).
        sigma_elastic_mm: standard deviation of the Gaussian smoothing of the velocity
            (elastic-like); 0 switches it off.
        sigma_i: weight ``σ_I`` of the step length, in mm⁻²: the largest step is
            ``|Λ| / (2 √σ_I)`` mm on the finest level (0.71 mm where ``Λ = 1`` for the default 0.5).
        symmetric: use both the forward and the backward forces (otherwise forward only).
        bch_bracket: keep the Lie bracket term of the BCH update (otherwise ``v ← v + u``).
        tolerance: a level stops when the best mean Λ over the grid of its last ``patience``
            iterations beats the best before them by less than this.
        patience: see ``tolerance``.
        min_size: the pyramid never makes an axis shorter than this many voxels.
    """

    levels: int = 3
    iterations: int | tuple[int, ...] = _DEFAULT_ITERATIONS
    sigma_lcc_mm: float = 5.0
    sigma_fluid_mm: float = 2.0
    sigma_elastic_mm: float = 1.5
    sigma_i: float = 0.5
    symmetric: bool = True
    bch_bracket: bool = True
    tolerance: float = 1e-4
    patience: int = 5
    min_size: int = 8

    def __post_init__(self) -> None:
        # the default iterations are per level of the default 3 levels; with another number of
        # levels the finest keeps its 40 and every coarser level 30, so that `levels` alone works
        levels = self.levels
        if (
            self.iterations == _DEFAULT_ITERATIONS
            and isinstance(levels, int | np.integer)
            and not isinstance(levels, bool)
            and 1 <= levels != len(_DEFAULT_ITERATIONS)
        ):
            spread = (_DEFAULT_ITERATIONS[:1] * int(levels) + _DEFAULT_ITERATIONS)[-int(levels) :]
            object.__setattr__(self, "iterations", tuple(spread))

    def iterations_per_level(self) -> tuple[int, ...]:
        """Iterations of each level, coarsest first (length ``levels``)."""
        if isinstance(self.iterations, int | np.integer):
            return (int(self.iterations),) * self.levels
        return tuple(int(count) for count in self.iterations)

    def checked(self) -> LCCDemonsParams:
        """Returns ``self`` after checking every value; ValueError naming the bad one."""
        func = "LCCDemonsParams"

        def whole(name: str, value: Any, minimum: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
                raise ValueError(f"{func}: '{name}' must be an integer >= {minimum}, got {value!r}")

        def real(name: str, value: Any, *, zero_ok: bool = False) -> None:
            ok = (
                isinstance(value, int | float | np.floating)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value >= 0 if zero_ok else value > 0)
            )
            if not ok:
                raise ValueError(
                    f"{func}: '{name}' must be a {'non-negative' if zero_ok else 'positive'} "
                    f"number, got {value!r}"
                )

        whole("levels", self.levels, 1)
        if isinstance(self.iterations, int | np.integer) and not isinstance(self.iterations, bool):
            whole("iterations", self.iterations, 0)
        else:
            try:
                per_level = tuple(self.iterations)
            except TypeError:
                raise ValueError(
                    f"{func}: 'iterations' must be an int or one int per level, got {self.iterations!r}"
                ) from None
            if len(per_level) != self.levels:
                raise ValueError(
                    f"{func}: 'iterations' must give one count per level ({self.levels}), got {per_level!r}"
                )
            for count in per_level:
                whole("iterations", count, 0)
        real("sigma_lcc_mm", self.sigma_lcc_mm)
        real("sigma_fluid_mm", self.sigma_fluid_mm, zero_ok=True)
        real("sigma_elastic_mm", self.sigma_elastic_mm, zero_ok=True)
        real("sigma_i", self.sigma_i)
        real("tolerance", self.tolerance, zero_ok=True)
        whole("patience", self.patience, 1)
        whole("min_size", self.min_size, 2)
        return self


@dataclass(frozen=True)
class LevelInfo:
    """How one level went. ``lcc_*`` are the mean Λ over the grid (forward direction)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    iterations: int
    converged: bool  # stopped on the tolerance before its iteration budget
    lcc_start: float
    lcc_end: float


@dataclass(frozen=True)
class LCCDemonsInfo:
    """How a registration went: the levels, coarsest first, and the wall time."""

    levels: tuple[LevelInfo, ...]
    seconds: float
    params: LCCDemonsParams

    @property
    def iterations(self) -> int:
        return sum(level.iterations for level in self.levels)


# ----------------------------------------------------------------------------- inputs
def _as_volume(name: str, x: Any) -> tuple[np.ndarray, str]:
    """A checked ``(I, J, K)`` image as float32 NumPy (:mod:`svfnet.common.arrays`), and its kind
    ("numpy" or "torch"); a constant image is refused too (nothing to register)."""
    func = "lcc_demons.register"
    kind = "torch" if not isinstance(x, np.ndarray) and hasattr(x, "detach") else "numpy"
    volume = checked_volume(func, name, x, dtype=np.float32, what="image")
    if float(volume.max()) <= float(volume.min()):
        raise ValueError(
            f"{func}(): '{name}' is constant ({float(volume.min())}): there is nothing to register"
        )
    return volume, kind


# ----------------------------------------------------------------------------- grids
def pyramid(
    shape: tuple[int, ...], spacing: tuple[float, ...], levels: int, min_size: int
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """``(shape, spacing)`` of each level, finest first.

    A level halves the axes that stay at least ``min_size`` long and whose voxel size is within
    1.5× of the smallest among those; samples sit at ``c (n − 1) / (n_c − 1)`` of the finer grid.
    """
    grids = [(tuple(shape), tuple(spacing))]
    for _ in range(levels - 1):
        n, s = grids[-1]
        shrinkable = [a for a in range(3) if (n[a] + 1) // 2 >= min_size]
        if not shrinkable:
            break  # nothing left to halve: fewer levels
        finest = min(s[a] for a in shrinkable)
        coarse_n, coarse_s = list(n), list(s)
        for a in shrinkable:
            if s[a] <= 1.5 * finest:
                coarse_n[a] = (n[a] + 1) // 2
                coarse_s[a] = s[a] * (n[a] - 1) / (coarse_n[a] - 1)
        grids.append((tuple(coarse_n), tuple(coarse_s)))
    return grids


def _resample(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resampling of ``volume`` onto ``shape``, corners aligned (see :func:`pyramid`)."""
    if tuple(volume.shape) == tuple(shape):
        return volume.copy()
    axes = [
        np.linspace(0.0, n_in - 1.0, n_out, dtype=np.float32) if n_out > 1 else np.zeros(1, np.float32)
        for n_in, n_out in zip(volume.shape, shape, strict=True)
    ]
    coordinates = np.stack(np.meshgrid(*axes, indexing="ij"))
    return map_coordinates(volume, coordinates, order=1, mode="nearest").astype(np.float32)


def _downsample(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` on a coarser ``shape``, Gaussian-prefiltered along the shrunk axes (σ = factor / 2)."""
    factors = [(n - 1) / max(c - 1, 1) for n, c in zip(image.shape, shape, strict=True)]
    sigma = [f / 2.0 if f > 1.0 else 0.0 for f in factors]
    return _resample(smooth(image, sigma), shape)


def _upsample_field(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A ``(3, ...)`` field in coarse voxels onto ``shape``, in the finer grid's voxels."""
    out = np.empty((3, *shape), dtype=np.float32)
    for a in range(3):
        scale = (shape[a] - 1) / (field.shape[a + 1] - 1) if field.shape[a + 1] > 1 else 1.0
        out[a] = _resample(field[a], shape) * np.float32(scale)
    return out


def _downsample_field(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A ``(3, ...)`` field in fine voxels onto the coarser ``shape``, in the coarse grid's voxels
    (each component prefiltered as :func:`_downsample` does, then scaled by ``(n_c − 1) / (n − 1)``)."""
    out = np.empty((3, *shape), dtype=np.float32)
    for a in range(3):
        scale = (shape[a] - 1) / (field.shape[a + 1] - 1) if field.shape[a + 1] > 1 else 1.0
        out[a] = _downsample(field[a], shape) * np.float32(scale)
    return out


def _as_initial_svf(x: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A checked ``(3, I, J, K)`` starting velocity as float32 NumPy (voxels of the fixed grid)."""
    func = "lcc_demons.register"
    if not isinstance(x, np.ndarray) and not hasattr(x, "detach"):  # a list is not a field here
        raise TypeError(
            f"{func}(): 'initial_svf' must be a NumPy array or a torch tensor, got {type(x).__name__}"
        )
    return checked_field(func, "initial_svf", x, shape, "fixed")


# ----------------------------------------------------------------------------- the force
def _gradient_mm(volume: np.ndarray, spacing: Sequence[float]) -> list[np.ndarray]:
    """Central differences (one-sided at the border) per mm along each axis; 0 along flat axes."""
    return [
        np.gradient(volume, spacing[a], axis=a) if volume.shape[a] > 1 else np.zeros_like(volume)
        for a in range(3)
    ]


def _smooth_field(field: np.ndarray, sigma_vox: Sequence[float]) -> np.ndarray:
    if max(sigma_vox) <= 0:
        return field
    return smooth(field, sigma_vox)  # the three components in one call


def _demons_update(
    target: np.ndarray,
    source: np.ndarray,
    sigma_vox: Sequence[float],
    spacing: Sequence[float],
    sigma_i: float,
    floors: tuple[float, float],
) -> tuple[np.ndarray, float]:
    """The LCC demons step that moves ``source`` (already warped) towards ``target``.

    Returns:
        ``(u, mean Λ)``: ``u`` ``(3, I, J, K)`` float32 in voxels, to be composed on the right of
        the current transformation (``source(x + u(x))`` is closer to ``target``).
    """
    m = local_moments(target, source, sigma_vox, floor_a=floors[0], floor_b=floors[1])
    lcc = m.lcc
    source_gradient = _gradient_mm(source, spacing)
    grad_mean_t, grad_mean_s = _gradient_mm(m.mean_a, spacing), _gradient_mm(m.mean_b, spacing)
    # G * (target · source) = cov + mean_t mean_s; its gradient turns G * (source ∇target) into a
    # difference: G*(s ∇t) = ∇G*(t s) − G*(t ∇s), one vector convolution instead of two
    grad_cross = _gradient_mm(m.cov + m.mean_a * m.mean_b, spacing)
    grad_var_t, grad_var_s = _gradient_mm(m.var_a, spacing), _gradient_mm(m.var_b, spacing)
    norm = 1.0 / np.sqrt(m.var_a * m.var_b)
    grad_lcc = np.empty((3, *target.shape), dtype=np.float32)
    targets_times_grad_source = smooth(target * np.stack(source_gradient), sigma_vox)  # one call, 3 volumes
    for a in range(3):
        target_times_grad_source = targets_times_grad_source[a]
        # d cov / du with the source moved by +u/2 and the target by −u/2 (the two one-sided
        # derivatives averaged: an ESM-like symmetric gradient)
        d_cov = (
            target_times_grad_source
            - 0.5 * grad_cross[a]
            - 0.5 * (m.mean_a * grad_mean_s[a] - m.mean_b * grad_mean_t[a])
        )
        d_var = 0.5 * (grad_var_s[a] / m.var_b - grad_var_t[a] / m.var_a)
        grad_lcc[a] = d_cov * norm - 0.5 * lcc * d_var
    lcc2 = lcc * lcc
    squared_norm = np.einsum("a...,a...->...", grad_lcc, grad_lcc)
    step_mm = grad_lcc * (lcc2 / (lcc2 * squared_norm + np.float32(sigma_i)))
    update = step_mm / np.asarray(spacing, dtype=np.float32).reshape(3, 1, 1, 1)
    return update.astype(np.float32, copy=False), float(np.mean(lcc, dtype=np.float64))


# ----------------------------------------------------------------------------- registration
def register(
    moving: Any,
    fixed: Any,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    params: LCCDemonsParams | None = None,
    initial_svf: Any = None,
    return_info: bool = False,
    **overrides: Any,
) -> Any:
    """Registers ``moving`` to ``fixed`` with LCC Log-Demons; returns the SVF.

    Args:
        moving, fixed: ``(I, J, K)`` images of one grid (NumPy arrays or CPU torch tensors, any
            real dtype; not constant).
        spacing: voxel size in mm along ``(i, j, k)`` (e.g. ``(1.8, 1.8, 8.0)`` for short-axis
            stacks with ``k`` the slice axis).
        params: an :class:`LCCDemonsParams`; default ``LCCDemonsParams()``.
        initial_svf: the velocity to start from, ``(3, I, J, K)`` in voxels of the grid (an SVF
            another method found, e.g. SVF-Net's: refinement); None starts from zero. It is carried
            to the coarsest level that runs (prefiltered, in that level's voxels); a zero field gives
            exactly the registration from zero.
        return_info: also return an :class:`LCCDemonsInfo`.
        **overrides: fields of :class:`LCCDemonsParams` replacing those of ``params``
            (e.g. ``sigma_elastic_mm=4.0``).

    Returns:
        The stationary velocity field ``v`` ``(3, I, J, K)`` float32 in voxels, of ``fixed``'s kind:
        ``warp(moving, exp(v))`` is ``moving`` aligned on ``fixed`` (and the
        :class:`LCCDemonsInfo` when ``return_info``).

    Raises:
        ValueError: images of different shapes, non-finite or constant images, bad spacing or
            parameters (the message names the argument).
        TypeError: an unknown parameter name or array kind.
    """
    func = "lcc_demons.register"
    started = time.perf_counter()
    moving_np, _ = _as_volume("moving", moving)
    fixed_np, kind = _as_volume("fixed", fixed)
    if moving_np.shape != fixed_np.shape:
        raise ValueError(
            f"{func}(): 'moving' {moving_np.shape} and 'fixed' {fixed_np.shape} must be on the same "
            "grid (resample them first, e.g. with `svfnet prepare`)"
        )
    spacing_mm = checked_spacing(func, spacing)
    params = _checked_params(func, params, overrides)
    initial = None if initial_svf is None else _as_initial_svf(initial_svf, fixed_np.shape)

    moving_np, fixed_np = standardised(moving_np), standardised(fixed_np)
    grids = pyramid(fixed_np.shape, spacing_mm, params.levels, params.min_size)[::-1]  # coarsest first
    iterations = params.iterations_per_level()[-len(grids) :]  # dropped levels are the coarsest ones
    if len(grids) < params.levels:
        logger.info(
            "LCC demons: %d level(s) instead of %d (no axis left to halve)", len(grids), params.levels
        )

    velocity, level_infos = _run_levels(moving_np, fixed_np, initial, grids, iterations, spacing_mm, params)

    assert velocity is not None
    svf = np.ascontiguousarray(velocity, dtype=np.float32)
    result: Any = svf
    if kind == "torch":
        import torch

        result = torch.from_numpy(svf)
    if not return_info:
        return result
    return result, LCCDemonsInfo(tuple(level_infos), time.perf_counter() - started, params)


def _checked_params(
    func: str, params: LCCDemonsParams | None, overrides: Mapping[str, Any]
) -> LCCDemonsParams:
    """``params`` (default ``LCCDemonsParams()``) with ``overrides``, checked; TypeError for unknown names."""
    params = params if params is not None else LCCDemonsParams()
    if not isinstance(params, LCCDemonsParams):
        raise TypeError(f"{func}(): 'params' must be an LCCDemonsParams, got {type(params).__name__}")
    known = {f.name for f in dataclasses.fields(LCCDemonsParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"{func}(): unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return dataclasses.replace(params, **overrides).checked()


def _run_levels(
    moving_np: np.ndarray,
    fixed_np: np.ndarray,
    initial: np.ndarray | None,
    grids: Sequence[tuple[tuple[int, ...], tuple[float, ...]]],
    iterations: Sequence[int],
    spacing_mm: tuple[float, float, float],
    params: LCCDemonsParams,
) -> tuple[np.ndarray | None, list[LevelInfo]]:
    """The pyramid, coarsest level first: each level starts from the previous one's velocity
    (upsampled), the first from ``initial`` (or zero); returns the finest velocity and each level's info."""
    # lengths in mm on the finest grid, kept constant in voxels across levels
    sigma_lcc = gaussian_sigma_vox(params.sigma_lcc_mm, spacing_mm)
    sigma_fluid = gaussian_sigma_vox(params.sigma_fluid_mm, spacing_mm)
    sigma_elastic = gaussian_sigma_vox(params.sigma_elastic_mm, spacing_mm)

    velocity: np.ndarray | None = None
    level_infos: list[LevelInfo] = []
    for (shape, level_spacing), budget in zip(grids, iterations, strict=True):
        fixed_level = _downsample(fixed_np, shape)
        moving_level = _downsample(moving_np, shape)
        if velocity is not None:
            velocity = _upsample_field(velocity, shape)
        elif initial is not None:
            velocity = initial.copy() if shape == fixed_np.shape else _downsample_field(initial, shape)
        else:
            velocity = np.zeros((3, *shape), dtype=np.float32)
        factor = max(ls / s for ls, s in zip(level_spacing, spacing_mm, strict=True))
        info = _register_level(
            moving_level,
            fixed_level,
            velocity,
            level_spacing,
            params,
            budget,
            sigma_lcc,
            sigma_fluid,
            sigma_elastic,
            params.sigma_i / factor**2,
        )
        velocity = info[0]
        level_infos.append(info[1])
        logger.info(
            "LCC demons level %s at %s mm: %d iterations%s, mean LCC %.4f -> %.4f",
            shape,
            tuple(round(s, 2) for s in level_spacing),
            info[1].iterations,
            " (converged)" if info[1].converged else "",
            info[1].lcc_start,
            info[1].lcc_end,
        )
    return velocity, level_infos


def _register_level(
    moving: np.ndarray,
    fixed: np.ndarray,
    velocity: np.ndarray,
    spacing: tuple[float, ...],
    params: LCCDemonsParams,
    budget: int,
    sigma_lcc: tuple[float, ...],
    sigma_fluid: tuple[float, ...],
    sigma_elastic: tuple[float, ...],
    sigma_i: float,
) -> tuple[np.ndarray, LevelInfo]:
    """Runs the demons iterations of one level from ``velocity``; returns the new velocity and its info."""
    # variance floors from the unwarped images, fixed for the level (a warp barely changes them)
    floor_fixed = LCC_VARIANCE_FLOOR * float(np.var(fixed))
    floor_moving = LCC_VARIANCE_FLOOR * float(np.var(moving))
    history: list[float] = []
    converged = False
    iteration = 0
    for iteration in range(1, budget + 1):
        warped_moving = np.asarray(fields.warp(moving, fields.exp(velocity)))
        forward, lcc = _demons_update(
            fixed, warped_moving, sigma_lcc, spacing, sigma_i, (floor_fixed, floor_moving)
        )
        history.append(lcc)
        # stop when the last `patience` iterations brought no new best by `tolerance` (Λ oscillates a
        # little around its optimum, so the best, not the last, value is compared)
        if len(history) > params.patience and (
            max(history[-params.patience :]) - max(history[: -params.patience]) < params.tolerance
        ):
            converged = True
            iteration -= 1  # this iteration only measured
            break
        forward = _smooth_field(forward, sigma_fluid)
        if params.symmetric:
            warped_fixed = np.asarray(fields.warp(fixed, fields.exp(-velocity)))
            backward, _ = _demons_update(
                moving, warped_fixed, sigma_lcc, spacing, sigma_i, (floor_moving, floor_fixed)
            )
            backward = _smooth_field(backward, sigma_fluid)
            # ½ (Z(v, u_f) − Z(−v, u_b)) = v + ½ (u_f − u_b) + ¼ [v, u_f + u_b]  (the bracket is bilinear)
            step = 0.5 * (forward - backward)
            bracket_with = forward + backward
            bracket_weight = 0.25
        else:
            step, bracket_with, bracket_weight = forward, forward, 0.5
        if params.bch_bracket:
            step = step + bracket_weight * np.asarray(fields.lie_bracket(velocity, bracket_with))
        velocity = _smooth_field(velocity + step, sigma_elastic)
        logger.debug(
            "LCC demons %s iteration %d: mean LCC %.5f, max step %.3f voxel",
            fixed.shape,
            iteration,
            lcc,
            float(np.sqrt((step * step).sum(axis=0)).max()),
        )
    if not history:  # a level with no iterations
        history.append(_mean_lcc(moving, fixed, velocity, sigma_lcc, (floor_fixed, floor_moving)))
    elif not converged:
        history.append(_mean_lcc(moving, fixed, velocity, sigma_lcc, (floor_fixed, floor_moving)))
    info = LevelInfo(
        tuple(int(n) for n in fixed.shape),
        tuple(float(s) for s in spacing),
        iteration,
        converged,
        history[0],
        history[-1],
    )
    return velocity, info


def _mean_lcc(
    moving: np.ndarray,
    fixed: np.ndarray,
    velocity: np.ndarray,
    sigma_lcc: tuple[float, ...],
    floors: tuple[float, float],
) -> float:
    warped = np.asarray(fields.warp(moving, fields.exp(velocity)))
    lcc = local_moments(fixed, warped, sigma_lcc, floor_a=floors[0], floor_b=floors[1]).lcc
    return float(np.mean(lcc, dtype=np.float64))
