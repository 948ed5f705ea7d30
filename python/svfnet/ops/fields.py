"""Dense displacement and velocity fields: warping, composition, exponential, logarithm, Jacobians.

Conventions (README.md, Conventions): a field is ``(3, I, J, K)`` — or ``(N, 3, I, J, K)`` for a batch —
with components in axis order ``(u_i, u_j, u_k)``, in voxels of the grid it lives on. Fields pull
back: ``φ(x) = x + u(x)`` maps a voxel ``x`` of the fixed grid to a position in the moving image,
and ``warp(moving, u)(x) = moving(x + u(x))``. Sampling is trilinear with voxel centres at integer
indices; fields read outside the grid are clamped to the border, images read ``fill``.

Every function takes NumPy arrays or torch tensors (CPU; CUDA tensors and CuPy arrays where the
CUDA launchers are built) and returns the same kind, in float32 (labels keep their dtype). The
arithmetic runs in svfnet's compiled kernels (``svfnet._core``), on as many threads as torch uses.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from svfnet.ops.backend import (
    Array,
    Backend,
    backend_of,
    labels_int32,
    require_dtype,
    require_finite,
    shape_text,
)

__all__ = [
    "LogConvergenceWarning",
    "LogInfo",
    "LogNotConverged",
    "compose",
    "exp",
    "exp_steps",
    "jacobian_det",
    "lie_bracket",
    "log",
    "warp",
    "warp_labels",
]


# -------------------------------------------------------------------- argument handling
@dataclass(frozen=True)
class _Field:
    """A checked field in compute form: ``data5`` is (N, 3, I, J, K); ``batched`` says whether the
    caller gave a batch dimension."""

    data5: Array
    batched: bool

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data5.shape[2:])

    def unbatched(self, a: Array) -> Array:
        return a if self.batched else a.reshape(a.shape[1:])


def _field(func: str, name: str, backend: Backend, x: Array) -> _Field:
    """Checks a field argument and returns it as compute-form (N, 3, I, J, K) float32."""
    shape = tuple(x.shape)
    if len(shape) not in (4, 5) or shape[-4] != 3:
        raise ValueError(
            f"{func}(): '{name}' must be (3, I, J, K) or (N, 3, I, J, K), got {shape_text(shape)}"
        )
    if min(shape) == 0:
        raise ValueError(f"{func}(): '{name}' must not be empty, got {shape_text(shape)}")
    require_dtype(func, name, x, ("float",))
    data = backend.to_compute(func, name, x, "float32")
    require_finite(func, name, backend, data)
    batched = len(shape) == 5
    return _Field(data if batched else data.reshape((1, *shape)), batched)


def _same_shape(func: str, a_name: str, a: Array, b_name: str, b: Array) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{func}(): '{a_name}' {shape_text(tuple(a.shape))} and '{b_name}' {shape_text(tuple(b.shape))} "
            "must have the same shape"
        )


def _real_scalar(func: str, name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{func}(): '{name}' must be a real number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{func}(): '{name}' must be finite, got {value!r}")
    return number


def _count(func: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{func}(): '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def _image_layout(
    func: str, image_shape: tuple[int, ...], disp_shape: tuple[int, ...], image_name: str
) -> tuple:
    """(N, C, I, J, K) of an image given with a field, per the layouts warp accepts."""
    grid = disp_shape[-3:]
    if len(disp_shape) == 4 and len(image_shape) == 3:
        layout = (1, 1, *image_shape)
    elif len(disp_shape) == 4 and len(image_shape) == 4:
        layout = (1, *image_shape)
    elif len(disp_shape) == 5 and len(image_shape) == 5:
        layout = image_shape
        if image_shape[0] != disp_shape[0]:
            raise ValueError(
                f"{func}(): '{image_name}' {shape_text(image_shape)} and 'disp' {shape_text(disp_shape)} "
                "must have the same batch size"
            )
    else:
        raise ValueError(
            f"{func}(): '{image_name}' {shape_text(image_shape)} does not go with 'disp' {shape_text(disp_shape)}; "
            "expected (I, J, K) or (C, I, J, K) with (3, I, J, K), or (N, C, I, J, K) with (N, 3, I, J, K)"
        )
    if tuple(layout[2:]) != tuple(grid):
        raise ValueError(
            f"{func}(): '{image_name}' {shape_text(image_shape)} and 'disp' {shape_text(disp_shape)} "
            "must be on the same grid"
        )
    return tuple(int(s) for s in layout)


# -------------------------------------------------------------------- warping
def warp(image: Array, disp: Array, *, order: int = 1, fill: float = 0.0) -> Array:
    """Resamples ``image`` through ``disp``: ``out(x) = image(x + disp(x))``.

    Args:
        image: ``(I, J, K)`` or ``(C, I, J, K)`` with ``disp`` ``(3, I, J, K)``; or a batch
            ``(N, C, I, J, K)`` with ``(N, 3, I, J, K)``. Any real dtype; computed in float32.
        disp: displacement in voxels of the same grid.
        order: 1 trilinear, 0 nearest voxel (halves round up).
        fill: value read outside the grid; trilinear stencils blend it in over the last half
            voxel, like SciPy's ``mode="grid-constant"`` and torch's ``padding_mode="zeros"``.

    Returns:
        float32 array of ``image``'s shape and kind.
    """
    func = "warp"
    backend = backend_of(func, image=image, disp=disp)
    if order not in (0, 1) or isinstance(order, bool):
        raise ValueError(f"{func}(): 'order' must be 0 (nearest) or 1 (trilinear), got {order!r}")
    fill = _real_scalar(func, "fill", fill)
    require_dtype(func, "image", image, ("float", "int", "bool"))
    layout = _image_layout(func, tuple(image.shape), tuple(disp.shape), "image")
    field = _field(func, "disp", backend, disp)
    data = backend.to_compute(func, "image", image, "float32")
    require_finite(func, "image", backend, data)
    out = backend.empty(layout, "float32")
    backend.launch("warp", [data.reshape(layout), field.data5, out], order, fill)
    return backend.from_compute(out.reshape(tuple(image.shape)))


def warp_labels(labels: Array, disp: Array, *, mode: str = "nearest", fill: int = 0) -> Array:
    """Resamples an integer label map through ``disp``: ``out(x) = labels(x + disp(x))``.

    Args:
        labels: ``(I, J, K)`` or ``(1, I, J, K)`` with ``disp`` ``(3, I, J, K)``; or a batch
            ``(N, I, J, K)`` or ``(N, 1, I, J, K)`` with ``(N, 3, I, J, K)``. Integer or bool dtype,
            values within int32.
        disp: displacement in voxels of the same grid.
        mode: "nearest" takes the label of the nearest voxel; "onehot" interpolates each label's
            indicator trilinearly and takes the argmax (ties to the smaller label), which keeps
            thin structures and smooth boundaries better under sub-voxel shifts.
        fill: the label outside the grid (background by default).

    Returns:
        Label map of ``labels``'s shape, dtype and kind.
    """
    func = "warp_labels"
    backend = backend_of(func, labels=labels, disp=disp)
    if mode not in ("nearest", "onehot"):
        raise ValueError(f"{func}(): 'mode' must be 'nearest' or 'onehot', got {mode!r}")
    if isinstance(fill, bool) or not isinstance(fill, int) or not -(2**31) <= fill < 2**31:
        raise ValueError(f"{func}(): 'fill' must be an int32 label, got {fill!r}")
    require_dtype(func, "labels", labels, ("int", "bool"))
    shape, disp_shape = tuple(labels.shape), tuple(disp.shape)
    with_channel = len(shape) == len(disp_shape)
    image_shape = shape if with_channel else (*shape[:-3], 1, *shape[-3:])
    if len(disp_shape) == 4 and not with_channel:
        image_shape = shape  # (I, J, K)
    layout = _image_layout(func, image_shape, disp_shape, "labels")
    if layout[1] != 1:
        raise ValueError(f"{func}(): 'labels' must hold one label map per pair, got {shape_text(shape)}")
    field = _field(func, "disp", backend, disp)
    data = labels_int32(func, backend, labels)
    out = backend.empty(layout, "int32")
    backend.launch("warp_labels", [data.reshape(layout), field.data5, out], mode == "onehot", fill)
    result = backend.from_compute(out.reshape(shape))
    return (
        result
        if result.dtype == labels.dtype
        else result.astype(labels.dtype)
        if backend.kind != "torch"
        else result.to(labels.dtype)
    )


# -------------------------------------------------------------------- composition, exp, log
def compose(u: Array, w: Array) -> Array:
    """Displacement of ``φ_u ∘ φ_w``: ``w(x) + u(x + w(x))``, ``u`` clamped at the border.

    Args:
        u, w: fields ``(3, I, J, K)`` or ``(N, 3, I, J, K)`` of one shape, in voxels.
    """
    func = "compose"
    backend = backend_of(func, u=u, w=w)
    _same_shape(func, "u", u, "w", w)
    fu, fw = _field(func, "u", backend, u), _field(func, "w", backend, w)
    out = backend.empty(tuple(fu.data5.shape), "float32")
    backend.launch("compose", [fu.data5, fw.data5, out])
    return backend.from_compute(fu.unbatched(out))


# The most squarings exp() takes: 2^64 scales any float32 field below half a voxel, and beyond ~126 the
# scaled field underflows float32.
MAX_EXP_STEPS = 64


def exp_steps(max_norm_vox: float, *, max_step_vox: float = 0.5, min_steps: int = 4) -> int:
    """The number of squarings ``s`` so that ``max_norm_vox / 2^s <= max_step_vox``, at least ``min_steps``."""
    steps = min_steps
    while max_norm_vox > max_step_vox * 2.0**steps and steps < 60:
        steps += 1
    return steps


def exp(v: Array, *, steps: int | None = None) -> Array:
    """Exponential of a stationary velocity field by scaling and squaring.

    ``u₀ = v / 2^steps``, then ``steps`` times ``u ← u ⊕ u`` (see :func:`compose`).

    Args:
        v: velocity ``(3, I, J, K)`` or ``(N, 3, I, J, K)`` in voxels.
        steps: number of squarings, 0 to :data:`MAX_EXP_STEPS` (64); None picks the smallest
            ``s >= 4`` with ``max|v| / 2^s <= 0.5`` voxel (over the whole batch).

    Returns:
        The displacement of ``exp(v)``, like ``v``.
    """
    func = "exp"
    backend = backend_of(func, v=v)
    fv = _field(func, "v", backend, v)
    if steps is not None:
        steps = _count(func, "steps", steps, 0)
        if steps > MAX_EXP_STEPS:
            # v / 2^steps underflows float32 (to 0 beyond ~150 steps): the result would be a zero
            # displacement, said by nothing; no field needs more (exp_steps reaches 0.5 voxel by 60)
            raise ValueError(
                f"{func}(): 'steps' must be at most {MAX_EXP_STEPS}, got {steps}: v / 2^{steps} underflows float32 "
                "and the exponential would be a zero displacement"
            )
    return backend.from_compute(fv.unbatched(_exp_batched(backend, fv.data5, steps)))


def _exp_batched(backend: Backend, v5: Array, steps: int | None) -> Array:
    if steps is None:
        steps = exp_steps(backend.norm_stats(v5)[0])
    out = backend.empty(tuple(v5.shape), "float32")
    scratch = backend.empty(tuple(v5.shape), "float32")
    backend.launch("exp", [v5, out, scratch], steps)
    return out


def _lie_bracket_batched(backend: Backend, v5: Array, w5: Array) -> Array:
    out = backend.empty(tuple(v5.shape), "float32")
    backend.launch("lie_bracket", [v5, w5, out])
    return out


def lie_bracket(v: Array, w: Array) -> Array:
    """Lie bracket ``[v, w] = (∇v) w − (∇w) v`` of two fields (finite differences, in voxels).

    It is the second-order term of ``exp(v) ∘ exp(w) = exp(v + w + ½[v, w] + …)``.
    """
    func = "lie_bracket"
    backend = backend_of(func, v=v, w=w)
    _same_shape(func, "v", v, "w", w)
    fv, fw = _field(func, "v", backend, v), _field(func, "w", backend, w)
    return backend.from_compute(fv.unbatched(_lie_bracket_batched(backend, fv.data5, fw.data5)))


@dataclass(frozen=True)
class LogInfo:
    """How a logarithm went. Residuals are ``|exp(v)(x) − u(x)|`` in voxels.

    ``residual_max`` and ``residual_mean`` are taken over the voxels that ``x ↦ x + u(x)`` maps
    into the grid (``domain_fraction`` of them), which is where a warp reads the moving image;
    ``residual_max_grid`` is the maximum over every voxel (see :func:`log` for why they differ).
    """

    iterations: int
    residual_max: float
    residual_mean: float
    converged: bool
    residual_max_grid: float = float("nan")
    domain_fraction: float = 1.0
    polish_iterations: int = 0  # of ``iterations``, the gradient steps after the fixed-point steps stalled


class LogConvergenceWarning(RuntimeWarning):
    """The logarithm stopped above its tolerance."""


class LogNotConverged(RuntimeError):
    """Raised by ``log(..., strict=True)`` when the tolerance is not reached."""


def _log_residual(backend: Backend, target: Array, exp_v: Array) -> tuple[Array, float, float, float]:
    """``u − exp(v)``, its (max, mean) over the voxels mapped into the grid, and the fraction of
    those voxels (the whole grid's maximum is measured once, for the ``v`` returned)."""
    remaining = target - exp_v
    domain_max, domain_mean, count = backend.launch("norm_stats_within", [remaining, target])
    if count == 0:  # u maps nothing into the grid: every voxel counts
        grid_max, grid_mean = backend.norm_stats(remaining)
        return remaining, float(grid_max), float(grid_mean), 0.0
    total = math.prod(int(s) for s in target.shape) // 3
    return remaining, float(domain_max), float(domain_mean), count / total


def exp_batched_with_levels(backend: Backend, v5: Array) -> tuple[Array, Array, int]:
    """``exp(v)`` keeping every squaring's result for :func:`exp_batched_vjp`: (levels, exp(v), steps)."""
    steps = exp_steps(backend.norm_stats(v5)[0])
    n = int(v5.shape[0])
    levels = backend.empty((steps * n, *tuple(v5.shape)[1:]), "float32")
    backend.launch("exp_levels", [v5, levels], steps)
    return levels, levels[(steps - 1) * n :], steps


def exp_batched_vjp(backend: Backend, v5: Array, levels: Array, grad_exp: Array, steps: int) -> Array:
    """``∂L/∂v`` from ``∂L/∂exp(v)``: the exact adjoint of the discrete scaling and squaring."""
    grad_v = backend.empty(tuple(v5.shape), "float32")
    accumulator = backend.empty(tuple(v5.shape), "float64")
    backend.launch("exp_vjp", [v5, levels, grad_exp, grad_v, accumulator], steps)
    return grad_v


# The polishing phase of the logarithm (see log): the loss is ‖r‖₄ + mean|r| over the domain (‖·‖₄
# the power mean), the 4-norm standing in for the maximum (smooth, and weighted towards the worst
# voxels), the mean keeping the rest in place. Adam, because its per-voxel step size (about
# tol / 5 voxel) suits a loss whose gradient is large on a few trajectories and tiny elsewhere;
# written out here because it has to run on whichever arrays the caller gave (NumPy, torch, CuPy).
# Values chosen on the demo's 306 pairs (tol 0.1, 30 iterations) and 40 exponentials like the
# tests' stalling_exponential (tol 0.05, 40 iterations). The 4-norm needs fewer iterations than
# the 8- or 16-norm; steps of tol/10 or tol/2 converge less often. Polishing as soon as both
# steps are refused: 306/306 and 35/40 converge; after one halving (kept): 306/306 and 39/40;
# after halving below 1/4: 304/306 and 39/40; below 1/16: 295/306 and 37/40.
_POLISH_POWER = 4
_POLISH_STEP_PER_TOL = 0.2
_POLISH_BELOW_SCALE = 1 / 2  # polish once the fixed-point steps were halved below this
_POLISH_PATIENCE = 10  # gradient steps without a new best before giving up
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


def _polish_loss_gradient(backend: Backend, target: Array, remaining: Array, count: int) -> Array:
    """``∂L/∂exp(v)`` of ``L = (mean |r|^p)^(1/p) + mean |r|`` over the domain, ``r = u − exp(v)``."""
    n, _, *grid = remaining.shape
    norms = backend.empty((int(n), 1, *grid), "float32")
    backend.launch("norm_within", [remaining, target, norms])  # 0 outside the domain
    largest = float(norms.max())
    if largest == 0:
        return remaining * 0
    # the power mean of |r| / largest: |r|^p itself would underflow float32 for small residuals
    p, relative = _POLISH_POWER, norms / largest
    power_mean = float((relative**p).sum()) / count
    positive = norms > 0
    safe = norms + (~positive)  # 1 where the norm is 0; those voxels get no gradient
    weight = (power_mean ** (1.0 / p - 1.0) * relative ** (p - 2) / largest + 1.0 / safe) * positive / count
    return -(weight * remaining)


def _log_step(backend: Backend, v: Array, exp_v: Array, remaining: Array, scale: float, plain: bool) -> Array:
    """One candidate step of :func:`log` from ``v`` (``remaining = u − exp(v)``): the BCH step to third
    order, ``v + scale (d + ½[v, d] + (1/12)[v, [v, d]])`` with ``d = (I + ∇exp(v))⁻¹ remaining``, or with
    ``plain`` the fixed-point step ``v + scale remaining`` (slower, but it goes on where BCH stalls)."""
    if plain:
        return v + scale * remaining
    d = backend.empty(tuple(v.shape), "float32")
    backend.launch("jacobian_solve", [exp_v, remaining, d])
    bracket = _lie_bracket_batched(backend, v, d)
    return v + scale * (d + 0.5 * bracket + _lie_bracket_batched(backend, v, bracket) / 12.0)


# Long on purpose: one iteration whose state (v, its exponential, the residual, the step scale, the
# BCH/plain/polishing mode) is shared by every branch; its docstring documents the algorithm.
def log(
    u: Array,
    *,
    tol: float = 1e-3,
    tol_mean: float | None = None,
    max_iter: int = 50,
    strict: bool = False,
    return_info: bool = False,
    initial: Array | None = None,
) -> Array | tuple[Array, LogInfo]:
    """Stationary velocity field ``v`` with ``exp(v) ≈ id + u`` (iterative logarithm).

    Starting from ``v = u`` (or ``initial``), each iteration takes the remaining deformation ``d`` with
    ``exp(v) ∘ (id + d) ≈ id + u`` to first order, ``d = (I + ∇exp(v))⁻¹ (u − exp(v))``, and
    moves ``v`` by the BCH formula to third order, ``d + ½[v, d] + (1/12)[v, [v, d]]``. Unlike
    ``d = exp(−v) ∘ φ_u − id``, this ``d`` never reads a field outside the grid, where clamping
    makes that form diverge at the border; the third-order term roughly halves the iterations on
    large deformations. A step that does not lower the residual (``max(max/tol, mean/tol_mean)``)
    is refused, and the plain fixed-point step ``v + (u − exp(v))`` is tried in its place; if it
    is refused too, the step is halved (and doubled back after a success).

    When the steps have been halved once and are still refused, the linearisation behind them is
    wrong somewhere (typically on the few voxels of a strong local expansion or shear): the
    iteration switches to *polishing*,
    gradient steps (Adam, about ``tol / 5`` voxel per voxel and step) on ``‖r‖₄ + mean|r|`` with
    the exact gradient of the discrete exponential (the adjoint of its squarings). It moves only
    what the worst voxels' trajectories depend on, and reaches the tolerance in a few to a few
    tens of steps where the fixed-point steps stall. The best ``v`` seen is returned. The loop
    stops when the maximum is at most ``tol`` and the mean at most ``tol_mean``, after
    ``max_iter`` iterations (each one exponential), or after 10 gradient steps without progress.
    On the GPU the gradient's sums arrive in any order, so a polished ``v`` may differ between
    runs in its last bits; on the CPU it is reproducible.

    The residual is measured on the voxels that ``x ↦ x + u(x)`` maps into the grid. Where the
    map leaves the grid and stretches outwards (a spline extrapolating at the corners), no SVF
    reaches it: ``exp`` reads fields clamped outside the grid, so a trajectory that leaves it
    moves rigidly from then on. Those voxels' targets lie outside the moving image, where a warp
    reads the fill, so their residual changes no warped image; it is reported as
    ``LogInfo.residual_max_grid``.

    Args:
        u: displacement ``(3, I, J, K)`` or ``(N, 3, I, J, K)`` in voxels (a batch is solved as
            one: the residual is the maximum over the batch).
        tol: tolerance on the maximum residual, in voxels.
        tol_mean: tolerance on the mean residual, in voxels (default ``tol / 10``).
        max_iter: most iterations (each one exponential).
        strict: raise :class:`LogNotConverged` instead of warning when ``tol`` is not reached.
        return_info: also return a :class:`LogInfo`.
        initial: where the iteration starts, like ``u`` (default ``u`` itself). Where the inverse
            map's displacement ``u⁻¹`` is known, ``(u − u⁻¹) / 2`` is exact to second order
            (``exp(±v) = id ± v + ½ (∇v) v + ...``): far closer than ``u`` on large deformations.

    Returns:
        ``v`` like ``u`` (and the :class:`LogInfo` when ``return_info``).
    """
    func = "log"
    backend = backend_of(func, u=u) if initial is None else backend_of(func, u=u, initial=initial)
    tol = _real_scalar(func, "tol", tol)
    if tol <= 0:
        raise ValueError(f"{func}(): 'tol' must be > 0, got {tol!r}")
    tol_mean = tol / 10 if tol_mean is None else _real_scalar(func, "tol_mean", tol_mean)
    if tol_mean <= 0:
        raise ValueError(f"{func}(): 'tol_mean' must be > 0, got {tol_mean!r}")
    max_iter = _count(func, "max_iter", max_iter, 0)
    fu = _field(func, "u", backend, u)
    target = fu.data5

    def merit(res_max: float, res_mean: float) -> float:  # <= 1 when both tolerances hold
        return max(res_max / tol, res_mean / tol_mean)

    if initial is None:
        v = backend.copy(target)
    else:
        _same_shape(func, "initial", initial, "u", u)
        v = backend.copy(_field(func, "initial", backend, initial).data5)
    exp_v = _exp_batched(backend, v, None)
    remaining, best_max, best_mean, fraction = _log_residual(backend, target, exp_v)
    iterations, scale, plain, polish, since_best = 0, 1.0, False, None, 0
    while merit(best_max, best_mean) > 1 and iterations < max_iter:
        if polish is not None and since_best >= _POLISH_PATIENCE:
            break  # the gradient steps no longer improve either: no closer logarithm in reach
        iterations += 1
        if polish is not None:  # gradient steps from where the fixed-point steps stalled
            candidate = polish.step()
            if backend.count_nonfinite(candidate):
                break  # cannot happen with finite residuals; stop rather than carry NaNs on
            exp_c = polish.exp_v
        else:
            candidate = _log_step(backend, v, exp_v, remaining, scale, plain)
            exp_c = None
            if not backend.count_nonfinite(candidate):  # NaN/inf: a near-singular Jacobian, refused
                exp_c = _exp_batched(backend, candidate, None)
        accepted = False
        if exp_c is not None:
            remaining_c, res_max, res_mean, fraction_c = _log_residual(backend, target, exp_c)
            accepted = merit(res_max, res_mean) < merit(best_max, best_mean)
            if polish is not None:
                polish.remaining = remaining_c
        if accepted:
            # a copy: the polishing's exp(v) is a view of its squarings, which would stay alive
            v, exp_v = candidate, backend.copy(exp_c) if polish is not None else exp_c
            remaining = remaining_c
            best_max, best_mean, fraction = res_max, res_mean, fraction_c
            scale, plain, since_best = min(1.0, 2 * scale), False, 0
        elif polish is not None:
            since_best += 1
        elif not plain:
            plain = True  # a refused BCH step: try the plain step at the same scale
        else:
            plain, scale = False, scale / 2
            if scale < _POLISH_BELOW_SCALE and iterations < max_iter and fraction > 0:
                polish = _Polish(backend, target, v, remaining, fraction, lr=_POLISH_STEP_PER_TOL * tol)
            elif scale < 1 / 16:
                break  # nothing lands in the grid, so nothing to polish: the steps have stalled
    converged = merit(best_max, best_mean) <= 1
    polished = polish.t if polish is not None else 0
    grid_max = float(backend.norm_stats(remaining)[0])
    info = LogInfo(
        iterations, float(best_max), float(best_mean), converged, float(grid_max), float(fraction), polished
    )
    if not info.converged:
        message = (
            f"{func}(): residual max|exp(v) - u| = {best_max:.3g} voxel (mean {best_mean:.3g}) after "
            f"{iterations} iterations, above tol = {tol:g} (tol_mean = {tol_mean:g})"
        )
        if strict:
            raise LogNotConverged(message)
        warnings.warn(message, LogConvergenceWarning, stacklevel=2)
    result = backend.from_compute(fu.unbatched(v))
    return (result, info) if return_info else result


class _Polish:
    """Adam on the logarithm's polishing loss (see log), one step per call of :meth:`step`."""

    def __init__(
        self, backend: Backend, target: Array, v: Array, remaining: Array, fraction: float, lr: float
    ) -> None:
        self.backend, self.target, self.lr = backend, target, lr
        self.v, self.remaining = v, remaining
        # voxels in the domain (it depends on u only), for the means of the loss
        self.count = max(1, round(fraction * (math.prod(int(s) for s in target.shape) // 3)))
        self.levels, self.exp_v, self.steps = exp_batched_with_levels(backend, v)
        self.first = self.second = None
        self.t = 0

    def step(self) -> Array:
        """Moves ``v`` one Adam step; returns it, its exponential in ``self.exp_v``."""
        grad_exp = _polish_loss_gradient(self.backend, self.target, self.remaining, self.count)
        grad = exp_batched_vjp(self.backend, self.v, self.levels, grad_exp, self.steps)
        (b1, b2), self.t = _ADAM_BETAS, self.t + 1
        square = grad * grad
        self.first = (1 - b1) * grad if self.first is None else b1 * self.first + (1 - b1) * grad
        self.second = (1 - b2) * square if self.second is None else b2 * self.second + (1 - b2) * square
        m_hat, s_hat = self.first / (1 - b1**self.t), self.second / (1 - b2**self.t)
        self.v = self.v - self.lr * m_hat / (s_hat**0.5 + _ADAM_EPS)
        self.levels, self.exp_v, self.steps = exp_batched_with_levels(self.backend, self.v)
        return self.v


# -------------------------------------------------------------------- Jacobian
def jacobian_det(u: Array, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Array:
    """Determinant of the Jacobian of ``x ↦ x + u(x)``: ``det(I + ∇u)``.

    Derivatives by central differences (one-sided at the border, as ``numpy.gradient``).

    Args:
        u: displacement ``(3, I, J, K)`` or ``(N, 3, I, J, K)`` in voxels.
        spacing: voxel size in mm along ``(i, j, k)``. The map in millimetres has the Jacobian
            ``S (I + ∇u) S⁻¹`` with ``S = diag(spacing)``, a similar matrix: the determinant does
            not depend on the spacing when ``u`` is in voxels. It is checked and accepted so that
            callers working in millimetres state their grid.

    Returns:
        float32 ``(I, J, K)`` or ``(N, I, J, K)``, like ``u``'s kind. Values ``<= 0`` mark folds.
    """
    func = "jacobian_det"
    backend = backend_of(func, u=u)
    if len(tuple(spacing)) != 3 or any(_real_scalar(func, "spacing", s) <= 0 for s in spacing):
        raise ValueError(f"{func}(): 'spacing' must be three positive numbers, got {spacing!r}")
    fu = _field(func, "u", backend, u)
    n, _, *grid = fu.data5.shape
    out = backend.empty((n, 1, *grid), "float32")
    backend.launch("jacobian_det", [fu.data5, out])
    out = out.reshape((n, *grid))
    return backend.from_compute(out if fu.batched else out.reshape(tuple(grid)))
