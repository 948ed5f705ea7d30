"""Gaussian kernel sums on point sets, with gradients, in svfnet's compiled kernels.

With ``k(x, y) = exp(-|x - y|² / σ²)``, targets ``x`` ``(N, 3)`` and sources ``y`` ``(M, 3)``:

- :func:`gaussian_sum` ``out_i = Σ_j k(x_i, y_j) b_j`` for ``b`` ``(M, D)``;
- :func:`gaussian_gradient` ``∇_{x_i} Σ_j k(x_i, y_j) (a_i · b_j)`` for ``a`` ``(N, D)``;
- :func:`gaussian_sum_and_gradient` both in one pass over the pairs (the Hamiltonian of LDDMM
  shooting: ``q̇ = K(q, q) p`` and ``∂H/∂q`` with ``a = b = p``);
- :func:`gaussian_bilinear` the scalar ``Σ_ij k(x_i, y_j) (a_i · b_j)`` (currents inner
  products, kinetic energies), whose gradients come out of the same pass as its value.

All take NumPy arrays or torch tensors (CPU; CUDA where the launchers are built and a device is
present) and return the same kind. float64 inputs compute in float64 throughout; anything else
computes in float32 with float64 accumulation across tiles of 256 sources. torch inputs are
differentiable in every argument but ``sigma``: the gradients are kernel sums computed by the
same compiled kernels (``gaussian_sum`` twice — its backward is ``gaussian_sum_and_gradient``,
which is differentiable once more — so shooting with ``create_graph`` works).

The kernel sums never build the ``N × M`` matrix: memory is ``O(N + M)``, time ``O(N M)``.

References:
    Glaunès, Trouvé, Younes: "Diffeomorphic matching of distributions" (CVPR 2004), and the
    KeOps library (Charlier, Feydy, Glaunès, Collin, Durif, JMLR 2021) for the tiled reduction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from svfnet import _core
from svfnet.ops.backend import cpu_threads, cuda_entry

__all__ = ["gaussian_bilinear", "gaussian_gradient", "gaussian_sum", "gaussian_sum_and_gradient"]

Array = Any  # numpy.ndarray | torch.Tensor

# Formulas of the compiled reduction (svfcore/gauss.h), with k = k(x_i, y_j), r = x_i - y_j:
_SUM = 0  # out_w = Σ k w
_SUM_GRAD = 1  # out_w = Σ k w,        out_r = Σ k (a_i·b_j) r
_TANGENT_SUM = 2  # out_w = Σ k ((c_i - e_j)·r) w
_SUM_AND_TANGENT_GRAD = 3  # out_w = Σ k (a_i·b_j) w, out_r = Σ k (a_i·b_j) ((c_i - e_j)·r) r


# -------------------------------------------------------------------- launching
def _launch(
    formula: int,
    x: torch.Tensor,
    y: torch.Tensor,
    inv_sigma2: float,
    *,
    w: torch.Tensor | None = None,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    e: torch.Tensor | None = None,
    want_r: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Runs one compiled reduction on contiguous tensors of one dtype and device.

    Returns ``(out_w (N, DW), out_r (N, 3) or None)``; ``w=None`` means ``DW = 0``.
    """
    n, m = x.shape[0], y.shape[0]
    dtype, device = x.dtype, x.device
    if formula == _SUM_GRAD and not want_r:
        formula = _SUM  # the same sums without the offsets
    want_r = want_r or formula == _SUM_AND_TANGENT_GRAD
    if w is None:
        w = x.new_empty((m, 0))
    out_w = torch.empty((n, w.shape[1]), dtype=dtype, device=device)
    out_r = torch.empty((n, 3), dtype=dtype, device=device) if want_r else x.new_empty((0, 0))
    unused = x.new_empty((0, 0))
    arrays = [t.detach() if t is not None else unused for t in (x, y, a, b, c, e, w)]
    arrays = [t if t.is_contiguous() else t.contiguous() for t in arrays]
    if device.type == "cpu":
        _core.gauss_cpu(
            formula, *[t.numpy() for t in arrays], out_w.numpy(), out_r.numpy(), inv_sigma2, cpu_threads()
        )
    else:
        entry = cuda_entry(f"gauss_cuda_{'float64' if dtype == torch.float64 else 'float32'}", "tensors")
        da = a.shape[1] if a is not None else 0
        with torch.cuda.device(device):
            entry(
                formula,
                *[t.data_ptr() if t.numel() else 0 for t in arrays],
                out_w.data_ptr() if out_w.numel() else 0,
                out_r.data_ptr() if out_r.numel() else 0,
                n,
                m,
                da,
                w.shape[1],
                inv_sigma2,
                torch.cuda.current_stream(device).cuda_stream,
            )
    return out_w, (out_r if want_r else None)


def _inv_sigma2(sigma: float) -> float:
    return 1.0 / (sigma * sigma)


# -------------------------------------------------------------------- autograd functions
class GaussianSumFunction(torch.autograd.Function):
    """out_i = Σ_j k(x_i, y_j) b_j; backward through SumAndGradientFunction (so twice differentiable)."""

    @staticmethod
    def forward(ctx, x, y, b, sigma):
        ctx.sigma = sigma
        ctx.save_for_backward(x, y, b)
        return _launch(_SUM, x, y, _inv_sigma2(sigma), w=b)[0]

    @staticmethod
    def backward(ctx, grad_out):
        x, y, b = ctx.saved_tensors
        grad_x = grad_y = grad_b = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            # ∂/∂x_i Σ_j k(x_i, y_j) (g_i · b_j)
            grad_x = SumAndGradientFunction.apply(x, y, grad_out, b, ctx.sigma, False)[1]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # sources become targets: ∂b_j = Σ_i k g_i, ∂y_j = ∇_{y_j} Σ_i k (b_j · g_i)
            grad_b, grad_y = SumAndGradientFunction.apply(y, x, b, grad_out, ctx.sigma, True)
        return grad_x, grad_y, grad_b, None


class SumAndGradientFunction(torch.autograd.Function):
    """(S_i, G_i) = (Σ_j k b_j, ∇_{x_i} Σ_j k (a_i·b_j)) = (Σ_j k b_j, -2/σ² Σ_j k (a_i·b_j) r_ij).

    S is computed only when ``want_sum`` (else it is ``(N, 0)``). The backward pass is made of the
    second-order reductions (TSum, MSumTGrad); it is not differentiable again.
    """

    @staticmethod
    def forward(ctx, x, y, a, b, sigma, want_sum):
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no pass for it
        ctx.sigma, ctx.want_sum = sigma, want_sum
        ctx.save_for_backward(x, y, a, b)
        s = _inv_sigma2(sigma)
        sums, offsets = _launch(_SUM_GRAD, x, y, s, w=b if want_sum else None, a=a, b=b, want_r=True)
        return sums, offsets.mul_(-2.0 * s)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums, grad_gradient):
        x, y, a, b = ctx.saved_tensors
        s = _inv_sigma2(ctx.sigma)
        need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_y = grad_a = grad_b = None

        def add(total, term):
            return term if total is None else total + term

        if ctx.want_sum and grad_sums is not None and grad_sums.numel():
            g = grad_sums.contiguous()
            if need_x:
                grad_x = add(grad_x, _launch(_SUM_GRAD, x, y, s, a=g, b=b, want_r=True)[1].mul_(-2.0 * s))
            if need_y or need_b:
                sums, offsets = _launch(_SUM_GRAD, y, x, s, w=g, a=b, b=g, want_r=need_y)
                if need_b:
                    grad_b = add(grad_b, sums)
                if need_y:
                    grad_y = add(grad_y, offsets.mul_(-2.0 * s))
        if grad_gradient is not None:
            h = grad_gradient.contiguous()
            zeros_y = torch.zeros_like(y)
            if need_a:
                grad_a = add(grad_a, _launch(_TANGENT_SUM, x, y, s, w=b, c=h, e=zeros_y)[0].mul_(-2.0 * s))
            if need_b:
                grad_b = add(grad_b, _launch(_TANGENT_SUM, y, x, s, w=a, c=zeros_y, e=h)[0].mul_(-2.0 * s))
            if need_x:
                ones = torch.ones((y.shape[0], 1), dtype=x.dtype, device=x.device)
                weight, offsets = _launch(
                    _SUM_AND_TANGENT_GRAD, x, y, s, w=ones, a=a, b=b, c=h, e=zeros_y, want_r=True
                )
                grad_x = add(grad_x, (h * weight - 2.0 * s * offsets).mul_(-2.0 * s))
            if need_y:
                weighted, offsets = _launch(
                    _SUM_AND_TANGENT_GRAD, y, x, s, w=h, a=b, b=a, c=zeros_y, e=h, want_r=True
                )
                grad_y = add(grad_y, (weighted + 2.0 * s * offsets).mul_(2.0 * s))
        return grad_x, grad_y, grad_a, grad_b, None, None


class BilinearFormFunction(torch.autograd.Function):
    """Σ_ij k(x_i, y_j) (a_i·b_j) as a float64 scalar; x's and a's gradients come from the forward pass.

    When ``y is x`` and ``b is a`` (a squared norm), the gradients of the second slot equal those
    of the first and no further pass runs.
    """

    @staticmethod
    def forward(ctx, x, a, y, b, sigma, symmetric):
        s = _inv_sigma2(sigma)
        need_x = ctx.needs_input_grad[0]
        sums, offsets = _launch(_SUM_GRAD if need_x else _SUM, x, y, s, w=b, a=a, b=b, want_r=need_x)
        value = (a.double() * sums.double()).sum()
        ctx.sigma, ctx.symmetric = sigma, symmetric
        grad_x = offsets.mul_(-2.0 * s) if need_x else None
        ctx.save_for_backward(x, a, y, b, sums, grad_x)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value):
        x, a, y, b, sums, grad_x = ctx.saved_tensors
        need_x, need_a, need_y, need_b = ctx.needs_input_grad[:4]
        scale = grad_value.to(x.dtype)
        out_x = grad_x * scale if need_x else None
        out_a = sums * scale if need_a else None
        out_y = out_b = None
        if need_y or need_b:
            if ctx.symmetric:
                out_y = grad_x * scale if grad_x is not None else None
                out_b = sums * scale
                if need_y and out_y is None:
                    s = _inv_sigma2(ctx.sigma)
                    out_y = _launch(_SUM_GRAD, y, x, s, a=b, b=a, want_r=True)[1].mul_(-2.0 * s * scale)
            else:
                s = _inv_sigma2(ctx.sigma)
                sums_y, offsets_y = _launch(_SUM_GRAD, y, x, s, w=a, a=b, b=a, want_r=need_y)
                out_b = sums_y * scale
                out_y = offsets_y.mul_(-2.0 * s * scale) if need_y else None
        return out_x, out_a, out_y, out_b, None, None


# -------------------------------------------------------------------- argument handling
def _checked(func: str, sigma: Any, **arrays: Array) -> tuple[list[torch.Tensor], float, bool]:
    """Checks kinds, shapes, dtypes, devices and values; returns the arrays as torch tensors of one
    compute dtype (views of NumPy inputs), sigma as a float, and whether the caller gave NumPy."""
    kinds = {name: _kind(x) for name, x in arrays.items()}
    for name, kind in kinds.items():
        if kind is None:
            raise TypeError(
                f"{func}(): '{name}' must be a numpy.ndarray or torch.Tensor, "
                f"got {type(arrays[name]).__name__}"
            )
    if len(set(kinds.values())) > 1:
        first, *_ = arrays
        other = next(name for name in arrays if kinds[name] != kinds[first])
        raise TypeError(
            f"{func}(): '{other}' is a {kinds[other]} array but '{first}' is a {kinds[first]} array"
        )
    numpy_given = next(iter(kinds.values())) == "numpy"
    tensors = {}
    for name, x in arrays.items():
        if numpy_given:
            if np.dtype(x.dtype).kind != "f":
                raise TypeError(f"{func}(): '{name}' must have a floating point dtype, got {x.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif not x.dtype.is_floating_point:
            raise TypeError(f"{func}(): '{name}' must have a floating point dtype, got {x.dtype}")
        tensors[name] = x
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices))
    for name, device in devices.items():
        if device != devices[first]:
            raise TypeError(f"{func}(): '{name}' is on {device} but '{first}' is on {devices[first]}")
    if devices[first].type not in ("cpu", "cuda"):
        raise TypeError(f"{func}(): tensors on {devices[first]} are not supported (CPU or CUDA)")
    compute = torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32
    out = []
    for name, t in tensors.items():
        if t.dtype != compute:
            t = t.to(compute)
        if t.numel() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{func}(): '{name}' has non-finite values (NaN or infinity)")
        out.append(t)
    return out, _sigma(func, sigma), numpy_given


def _kind(x: Array) -> str | None:
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, torch.Tensor):
        return "torch"
    return None


def _sigma(func: str, sigma: Any) -> float:
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != 1 or sigma.requires_grad:
            raise TypeError(
                f"{func}(): 'sigma' must be a number (not differentiable), got a tensor of shape "
                f"{tuple(sigma.shape)}"
            )
        sigma = sigma.item()
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"{func}(): 'sigma' must be a real number, got {sigma!r}") from None
    if not valid_sigma(value):
        raise ValueError(
            f"{func}(): 'sigma' must be positive and finite, with 1/sigma² within float32's range, "
            f"got {sigma!r}"
        )
    return value


def valid_sigma(value: float) -> bool:
    """Whether a kernel width is usable: positive, finite, and 1/σ² finite in float32."""
    return math.isfinite(value) and value > 0 and value * value > 1.0 / 3.0e38


def _points(func: str, name: str, t: torch.Tensor) -> int:
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"{func}(): '{name}' must be (N, 3) points, got shape {tuple(t.shape)}")
    return t.shape[0]


def _rows(func: str, name: str, t: torch.Tensor, rows: int, rows_of: str, columns: int | None = None) -> int:
    if t.ndim != 2 or t.shape[0] != rows or (columns is not None and t.shape[1] != columns):
        expected = f"({rows}, {columns if columns is not None else 'D'})"
        raise ValueError(
            f"{func}(): '{name}' must be {expected}, one row per point of '{rows_of}', "
            f"got shape {tuple(t.shape)}"
        )
    return t.shape[1]


def _returned(t: torch.Tensor, numpy_given: bool) -> Array:
    return t.detach().numpy() if numpy_given else t


# -------------------------------------------------------------------- public functions
def gaussian_sum(x: Array, y: Array, b: Array, sigma: float) -> Array:
    """Gaussian kernel sum ``out_i = Σ_j exp(-|x_i - y_j|² / σ²) b_j``.

    Args:
        x: targets ``(N, 3)``.
        y: sources ``(M, 3)``, in the unit of ``x``.
        b: source values ``(M, D)``.
        sigma: kernel width σ, in the unit of ``x`` (a number; not differentiable).

    Returns:
        ``(N, D)`` of the inputs' kind; float64 if any input is float64, else float32. torch inputs
        are differentiable (twice) in ``x``, ``y`` and ``b``.
    """
    func = "gaussian_sum"
    (x, y, b), sigma, numpy_given = _checked(func, sigma, x=x, y=y, b=b)
    n, m = _points(func, "x", x), _points(func, "y", y)
    _rows(func, "b", b, m, "y")
    del n
    return _returned(GaussianSumFunction.apply(x, y, b, sigma), numpy_given)


def gaussian_sum_and_gradient(x: Array, y: Array, a: Array, b: Array, sigma: float) -> tuple[Array, Array]:
    """``Σ_j k(x_i, y_j) b_j`` and ``∇_{x_i} Σ_j k(x_i, y_j) (a_i · b_j)`` in one pass over the pairs.

    With ``x = y = q`` and ``a = b = p`` these are the velocity ``q̇ = K(q, q) p`` of LDDMM control
    points and the gradient ``∂H/∂q`` of the Hamiltonian ``H = ½ pᵀ K(q, q) p`` (so ``ṗ = -∂H/∂q``).

    Args:
        x: targets ``(N, 3)``; y: sources ``(M, 3)``.
        a: target weights ``(N, D)``; b: source values ``(M, D)``.
        sigma: kernel width σ, in the unit of ``x``.

    Returns:
        ``((N, D), (N, 3))``; the gradient is ``-2/σ² Σ_j k (a_i·b_j)(x_i - y_j)``, in units of
        ``a·b`` per unit of ``x``. torch inputs are differentiable (once) in all four.
    """
    func = "gaussian_sum_and_gradient"
    (x, y, a, b), sigma, numpy_given = _checked(func, sigma, x=x, y=y, a=a, b=b)
    n, m = _points(func, "x", x), _points(func, "y", y)
    d = _rows(func, "b", b, m, "y")
    _rows(func, "a", a, n, "x", d)
    sums, gradient = SumAndGradientFunction.apply(x, y, a, b, sigma, True)
    return _returned(sums, numpy_given), _returned(gradient, numpy_given)


def gaussian_gradient(x: Array, y: Array, a: Array, b: Array, sigma: float) -> Array:
    """``∇_{x_i} Σ_j exp(-|x_i - y_j|² / σ²) (a_i · b_j)``, ``(N, 3)``.

    See :func:`gaussian_sum_and_gradient` (this computes its second output alone).
    """
    func = "gaussian_gradient"
    (x, y, a, b), sigma, numpy_given = _checked(func, sigma, x=x, y=y, a=a, b=b)
    n, m = _points(func, "x", x), _points(func, "y", y)
    d = _rows(func, "b", b, m, "y")
    _rows(func, "a", a, n, "x", d)
    return _returned(SumAndGradientFunction.apply(x, y, a, b, sigma, False)[1], numpy_given)


def gaussian_bilinear(x: Array, a: Array, y: Array, b: Array, sigma: float) -> Array:
    """The scalar ``Σ_ij exp(-|x_i - y_j|² / σ²) (a_i · b_j)`` (a currents inner product), in float64.

    Its gradients in ``x`` and ``a`` come out of the pass that computes it; those in ``y`` and
    ``b`` take one more pass, none when ``y is x and b is a`` (a squared norm ``aᵀ K(x, x) a``).

    Args:
        x: ``(N, 3)`` points with ``a`` ``(N, D)`` values.
        y: ``(M, 3)`` points with ``b`` ``(M, D)`` values.
        sigma: kernel width σ, in the unit of the points.

    Returns:
        A float64 scalar: a 0-d tensor (differentiable once) for torch inputs, a float for NumPy.
    """
    func = "gaussian_bilinear"
    symmetric = y is x and b is a
    (x, a, y, b), sigma, numpy_given = _checked(func, sigma, x=x, a=a, y=y, b=b)
    n, m = _points(func, "x", x), _points(func, "y", y)
    d = _rows(func, "a", a, n, "x")
    _rows(func, "b", b, m, "y", d)
    if symmetric:
        y, b = x, a  # one tensor each, so that autograd adds the two slots' (equal) gradients
    value = BilinearFormFunction.apply(x, a, y, b, sigma, symmetric)
    return float(value) if numpy_given else value
