"""Inverse consistency for training (``TrainConfig.inverse_consistency_weight``, issue 14's lever 4).

A pair ``(i, j)`` and its reverse ``(j, i)`` are predicted in the same batch; their deformations
should be each other's inverse: ``exp(v_ij) ∘ exp(v_ji) = id`` (a map of i's grid onto itself) and
``exp(v_ji) ∘ exp(v_ij) = id`` (of j's grid). With the pull-back convention
(``φ(x) = x + u(x)``, fixed grid to moving image), the first composition's displacement is
``u_ji(x) + u_ij(x + u_ji(x))`` (:func:`svfnet.ops.fields.compose`'s ``φ_u ∘ φ_w``). The term is the
mean squared length of both residual displacements (voxel², like the SVF term), counted where the
training's loss mask counts (each composition on its own grid: the heart of the pair's fixed
subject).

The composition is written with torch's ``grid_sample`` (trilinear, the field clamped at the
border as :func:`svfnet.ops.fields.compose` clamps it), so autograd differentiates it in both fields;
the exponentials are :func:`svfnet.ops.differentiable.exp` (svfnet's kernels and their exact adjoint).

Drawing both directions: :func:`both_directions` turns a batch of ``B`` pairs (already augmented)
into ``2B`` inputs: the pairs, then the same pairs reversed with the reverse targets. Geometric
augmentation must be the same for a pair and its reverse (the term compares them voxel by voxel),
so the training loop augments the reversed batch with a copy of the generator state that augmented
the forward one (:func:`augmented_both_directions`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from svfnet.ops import differentiable

__all__ = ["augmented_both_directions", "compose", "inverse_consistency_loss", "reversed_batch"]


def compose(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Displacement of ``φ_u ∘ φ_w``: ``w(x) + u(x + w(x))``, ``u`` trilinear and clamped at the border.

    Args:
        u, w: displacements ``(N, 3, I, J, K)`` in voxels, any floating dtype (both the same);
            differentiable in both.

    Returns:
        ``(N, 3, I, J, K)``, what :func:`svfnet.ops.fields.compose` computes.
    """
    if u.ndim != 5 or u.shape[1] != 3 or u.shape != w.shape:
        raise ValueError(
            f"compose(): 'u' and 'w' must be (N, 3, I, J, K) of one shape, got {tuple(u.shape)} "
            f"and {tuple(w.shape)}"
        )
    if u.dtype != w.dtype or not u.dtype.is_floating_point:
        raise ValueError(f"compose(): 'u' and 'w' must share one floating dtype, got {u.dtype} and {w.dtype}")
    sizes = u.shape[2:]
    axes = [torch.arange(n, dtype=u.dtype, device=u.device) for n in sizes]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, I, J, K) voxel indices
    position = grid.unsqueeze(0) + w  # (N, 3, I, J, K)
    # align_corners=True: index p of n maps to 2p/(n-1) - 1; grid_sample wants (x, y, z) = (k, j, i)
    normalised = [
        2 * position[:, a] / (n - 1) - 1 if n > 1 else torch.zeros_like(position[:, a])
        for a, n in enumerate(sizes)
    ]
    sample_at = torch.stack(normalised[::-1], dim=-1)  # (N, I, J, K, 3)
    sampled = F.grid_sample(u, sample_at, mode="bilinear", padding_mode="border", align_corners=True)
    return w + sampled


def _masked_mean_square(residual: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    squared = residual.pow(2)
    if weights is None:
        return squared.mean()
    return (squared * weights).sum() / (weights.sum() * squared.shape[1]).clamp_min(1.0)


def inverse_consistency_loss(
    forward_disp: torch.Tensor,
    reverse_disp: torch.Tensor,
    forward_weights: torch.Tensor | None = None,
    reverse_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared residual of ``φ_ij ∘ φ_ji`` and ``φ_ji ∘ φ_ij`` against the identity (voxel²).

    Args:
        forward_disp: ``u_ij`` ``(N, 3, I, J, K)``, the displacement of the pairs (moving i, fixed j),
            on j's grid.
        reverse_disp: ``u_ji``, of the reversed pairs (moving j, fixed i), on i's grid.
        forward_weights, reverse_weights: ``(N, 1, I, J, K)`` where the term counts on j's and on
            i's grid (the loss masks of the forward and the reversed pairs), or None (everywhere).

    Returns:
        The average of the two compositions' masked mean squared displacement; differentiable in
        both fields.
    """
    on_i = compose(forward_disp, reverse_disp)  # φ_ij ∘ φ_ji: i's grid onto itself
    on_j = compose(reverse_disp, forward_disp)  # φ_ji ∘ φ_ij: j's grid onto itself
    return (_masked_mean_square(on_i, reverse_weights) + _masked_mean_square(on_j, forward_weights)) / 2


def velocity_inverse_consistency(
    forward_velocity: torch.Tensor,
    reverse_velocity: torch.Tensor,
    forward_weights: torch.Tensor | None = None,
    reverse_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`inverse_consistency_loss` of ``exp(forward_velocity)`` and ``exp(reverse_velocity)``
    (float32 SVFs ``(N, 3, I, J, K)``, voxels; :func:`svfnet.ops.differentiable.exp`)."""
    return inverse_consistency_loss(
        differentiable.exp(forward_velocity),
        differentiable.exp(reverse_velocity),
        forward_weights,
        reverse_weights,
    )


def batch_inverse_consistency(disp: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`inverse_consistency_loss` of a batch of ``2B`` displacements ``exp(v)``: ``B`` pairs then
    their ``B`` reverses (:func:`augmented_both_directions`), with the batch's loss weights (or None)."""
    half = len(disp) // 2
    return inverse_consistency_loss(
        disp[:half],
        disp[half:],
        None if weights is None else weights[:half],
        None if weights is None else weights[half:],
    )


def reversed_batch(batch, reverse_target: np.ndarray):  # noqa: ANN001, ANN201 - svfnet.training.pairs.Batch (no import cycle)
    """The batch's pairs reversed (moving and fixed swapped, labels alike) with ``reverse_target``."""
    return dataclasses.replace(
        batch,
        moving=batch.fixed,
        fixed=batch.moving,
        target=reverse_target,
        moving_labels=batch.fixed_labels,
        fixed_labels=batch.moving_labels,
    )


def augmented_both_directions(forward, reverse, rng: np.random.Generator, augment: Callable):  # noqa: ANN001, ANN201
    """``(augment(forward), augment(reverse))`` with the same geometric draws for both.

    ``augment(batch, rng)`` is run on ``forward`` with ``rng`` (which advances), and on ``reverse``
    with a copy of ``rng`` taken before: pair ``n`` and its reverse get the same shifts and
    rotations (intensity draws go to the images in the same slots, i.e. to the other subject,
    which is as random). Returns the two augmented batches concatenated as one ``2B`` batch.
    """
    before = copy.deepcopy(rng)
    first = augment(forward, rng)
    second = augment(reverse, before)
    return dataclasses.replace(
        first,
        **{
            name: np.concatenate([getattr(first, name), getattr(second, name)])
            for name in ("moving", "fixed", "target", "moving_labels", "fixed_labels")
        },
    )
