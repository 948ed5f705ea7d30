"""Training losses: the paper's squared difference to the reference SVF, and a label-overlap term.

The paper trains on the squared difference between the predicted and the reference SVF alone
(recipe ``"paper"``). The reference is only a means: what registration is judged on is how well
the warped moving labels overlap the fixed ones. The ``"overlap"`` recipe adds the soft Dice loss
of the moving labels warped by ``exp(prediction)`` (one-hot, trilinear, through
:mod:`svfnet.ops.differentiable`) against the fixed labels, so the gradient says directly where the
predicted deformation misses the fixed heart. The SVF term keeps the prediction near a smooth,
invertible reference where the labels say nothing (inside a region, the background).
"""

from __future__ import annotations

import numpy as np
import torch

from svfnet.common.workdir import REGIONS
from svfnet.ops import differentiable

__all__ = ["label_overlap_loss", "masked_mse", "one_hot_regions", "soft_dice"]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean squared difference (voxel²): the paper's sum of squared differences up to a constant factor.

    ``prediction`` and ``target`` are ``(N, 3, I, J, K)``; ``weights`` ``(N, 1, I, J, K)`` (or None:
    every voxel counts) says where the loss counts.
    """
    squared = (prediction - target).pow(2)
    if weights is None:
        return squared.mean()
    return (squared * weights).sum() / (weights.sum() * squared.shape[1]).clamp_min(1.0)


def one_hot_regions(labels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Indicators of the regions 1–4 (:data:`svfnet.common.workdir.REGIONS`), ``(N, 4, I, J, K)`` float32,
    from label maps ``(N, I, J, K)``; the background is not a channel (it would dominate a Dice)."""
    labels = np.asarray(labels)
    if labels.ndim != 4:
        raise ValueError(f"one_hot_regions(): 'labels' must be (N, I, J, K), got {labels.shape}")
    regions = np.array(sorted(REGIONS), dtype=labels.dtype).reshape(1, -1, 1, 1, 1)
    return torch.from_numpy((labels[:, None] == regions).astype(np.float32)).to(device)


def soft_dice(warped: torch.Tensor, fixed: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice ``2 Σ a·b / (Σ a + Σ b)`` of each (pair, region), ``(N, R)``, from ``(N, R, I, J, K)``
    indicators in [0, 1]; NaN where a region is in neither (no overlap to measure)."""
    intersection = (warped * fixed).sum(dim=(2, 3, 4))
    total = warped.sum(dim=(2, 3, 4)) + fixed.sum(dim=(2, 3, 4))
    dice = 2 * intersection / total.clamp_min(eps)
    return torch.where(total > eps, dice, torch.full_like(dice, float("nan")))


def label_overlap_loss(
    velocity: torch.Tensor,
    moving_regions: torch.Tensor,
    fixed_regions: torch.Tensor,
    disp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 −`` mean soft Dice of the moving regions warped by ``exp(velocity)`` against the fixed regions.

    Args:
        velocity: the predicted SVF ``(N, 3, I, J, K)``, voxels; must be finite.
        moving_regions, fixed_regions: :func:`one_hot_regions` of the pair's labels.
        disp: ``differentiable.exp(velocity)`` where the caller has it already (another term
            uses it too); None computes it.

    Returns:
        A scalar in [0, 1], differentiable in ``velocity``; the mean is over the (pair, region)
        combinations where the region is present in either label map (0 where none is).
    """
    warped = differentiable.warp(moving_regions, differentiable.exp(velocity) if disp is None else disp)
    dice = soft_dice(warped, fixed_regions)
    present = torch.isfinite(dice)
    if not bool(present.any()):
        return velocity.sum() * 0
    return 1 - dice[present].mean()
