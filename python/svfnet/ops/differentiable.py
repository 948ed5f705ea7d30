"""The field operations a training loss differentiates through: ``exp`` and ``warp`` for torch autograd.

:mod:`svfnet.ops.fields` refuses tensors that require grad: its operations are the fast forward
kernels. A loss that compares *warped labels* with the fixed labels (the ``overlap`` training
recipe) needs the gradient of ``warp(moving, exp(v))`` in ``v``; these two functions give it with
svfnet's compiled kernels:

- :func:`exp` keeps every squaring (``exp_levels``) and runs the exact adjoint of the discrete
  scaling and squaring backwards (``exp_vjp``, the kernel the logarithm's polishing uses);
- :func:`warp` is trilinear with a fill, differentiable in the displacement: its adjoint is a
  gather, ``∂L/∂disp(x) = Σ_c ∂L/∂out_c(x) · ∇image_c(x + disp(x))`` (``warp_disp_vjp``, one
  svfcore body for the CPU and CUDA launchers). Gradients do not flow into the image: the images
  and labels a loss warps are data.

Written by hand rather than with torch's ``grid_sample`` because the squarings are what a step
costs: the compiled exponential and its adjoint are several times faster than autograd through a
``grid_sample`` loop (``benchmarks/bm_fields.py``), and they are the very kernels registration
runs, so what training optimises is what registration computes. Both functions take float32 torch
tensors ``(N, C, I, J, K)`` on the CPU (and CUDA where svfnet's launchers are built).
"""

from __future__ import annotations

import torch

from svfnet.ops.backend import backend_of, shape_text
from svfnet.ops.fields import exp_batched_vjp, exp_batched_with_levels

__all__ = ["exp", "warp"]


def _check(func: str, name: str, x: torch.Tensor, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{func}(): '{name}' must be a torch tensor, got {type(x).__name__}")
    shape = tuple(x.shape)
    if len(shape) != 5 or (channels is not None and shape[1] != channels) or min(shape) == 0:
        expected = f"(N, {channels}, I, J, K)" if channels is not None else "(N, C, I, J, K)"
        raise ValueError(f"{func}(): '{name}' must be {expected}, got {shape_text(shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"{func}(): '{name}' must be float32, got {x.dtype}")
    if not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{func}(): '{name}' has {bad} non-finite values (of {x.numel()})")


class _Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - torch's signature
        v = v.detach().contiguous()
        backend = backend_of("exp", v=v)
        data = backend.to_compute("exp", "v", v, "float32")
        levels, last, steps = exp_batched_with_levels(backend, data)
        ctx.state = (backend, data, levels, steps)
        return backend.from_compute(backend.copy(last))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        backend, data, levels, steps = ctx.state
        grad = backend.to_compute("exp", "grad", grad_out.detach().contiguous(), "float32")
        return backend.from_compute(exp_batched_vjp(backend, data, levels, grad, steps))


class _Warp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image: torch.Tensor, disp: torch.Tensor, fill: float) -> torch.Tensor:  # noqa: ANN001
        image, disp = image.detach().contiguous(), disp.detach().contiguous()
        backend = backend_of("warp", image=image, disp=disp)
        image_c = backend.to_compute("warp", "image", image, "float32")
        disp_c = backend.to_compute("warp", "disp", disp, "float32")
        out = backend.empty(tuple(image_c.shape), "float32")
        backend.launch("warp", [image_c, disp_c, out], 1, float(fill))
        ctx.state = (backend, image_c, disp_c, float(fill))
        return backend.from_compute(out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        backend, image_c, disp_c, fill = ctx.state
        grad = backend.to_compute("warp", "grad", grad_out.detach().contiguous(), "float32")
        grad_disp = backend.empty(tuple(disp_c.shape), "float32")
        backend.launch("warp_disp_vjp", [image_c, disp_c, grad, grad_disp], fill)
        return None, backend.from_compute(grad_disp), None


def exp(v: torch.Tensor) -> torch.Tensor:
    """``svfnet.ops.fields.exp(v)`` (scaling and squaring, default number of squarings), differentiable in ``v``.

    Args:
        v: velocity ``(N, 3, I, J, K)`` float32, in voxels.

    Returns:
        The displacement of ``exp(v)``, ``(N, 3, I, J, K)``; its gradient in ``v`` is the exact
        adjoint of the discrete squarings (the number of squarings counts as a constant).
    """
    _check("exp", "v", v, 3)
    return _Exp.apply(v)


def warp(image: torch.Tensor, disp: torch.Tensor, *, fill: float = 0.0) -> torch.Tensor:
    """``svfnet.ops.fields.warp(image, disp)`` (trilinear, ``fill`` outside the grid), differentiable in ``disp``.

    Args:
        image: ``(N, C, I, J, K)`` float32, not requiring grad (gradients flow to ``disp`` only).
        disp: displacement ``(N, 3, I, J, K)`` float32, in voxels of the same grid.
        fill: the value read outside the grid.

    Returns:
        ``image(x + disp(x))``, ``(N, C, I, J, K)``.
    """
    _check("warp", "image", image)
    _check("warp", "disp", disp, 3)
    if image.requires_grad:
        raise ValueError(
            "warp(): 'image' requires grad, but gradients flow to 'disp' only; pass image.detach()"
        )
    if image.shape[0] != disp.shape[0] or tuple(image.shape[2:]) != tuple(disp.shape[2:]):
        raise ValueError(
            f"warp(): 'image' {shape_text(tuple(image.shape))} and 'disp' {shape_text(tuple(disp.shape))} "
            "must have the same batch size and grid"
        )
    fill = float(fill)
    if fill != fill or fill in (float("inf"), float("-inf")):
        raise ValueError(f"warp(): 'fill' must be finite, got {fill!r}")
    return _Warp.apply(image, disp, fill)
