"""Label fusion of warped atlases: per-voxel probabilities of each label averaged (``majority``) or weighed
by the softmax over atlases of ``sharpness × LCC`` (``weighted``), and the fused distribution's
normalised entropy as the uncertainty. Pure NumPy on arrays; tested on hand-built votes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# chosen by measurement with the default fusion (svfnet.segmentation.multi_atlas.DEFAULT_FUSION, docs/segment.md)
DEFAULT_SHARPNESS = 30.0

FUSIONS = ("majority", "weighted")


def fuse(probabilities: Any, weights: Any | None = None) -> np.ndarray:
    """Fuses per-atlas label distributions into one: ``p(l, x) = Σ_a w_a(x) p_a(l, x) / Σ_a w_a(x)``.

    Args:
        probabilities: ``(A, L, ...)``: atlas ``a``'s probability of label ``l`` at each voxel (each
            atlas's warped one-hot labels; hard votes are one-hot).
        weights: ``(A, ...)`` non-negative weights of each atlas at each voxel, or ``None``: equal
            weights (the majority vote).

    Returns:
        ``(L, ...)`` float32 fused distribution; where every weight is 0, the equal-weight average.
    """
    p = atlas_array("fuse", "probabilities", probabilities, 2)
    if weights is None:
        return p.mean(axis=0).astype(np.float32)
    w = atlas_array("fuse", "weights", weights, 1)
    if w.shape != (p.shape[0], *p.shape[2:]):
        raise ValueError(
            f"fuse(): 'weights' must be (A, ...) = {(p.shape[0], *p.shape[2:])} for 'probabilities' "
            f"{p.shape}, "
            f"got {w.shape}"
        )
    if np.any(w < 0):
        raise ValueError("fuse(): 'weights' must be non-negative")
    total = w.sum(axis=0)
    equal = total <= 0
    w = np.where(equal[None], 1.0, w)
    total = np.where(equal, float(p.shape[0]), total)
    return (np.einsum("a...,al...->l...", w, p) / total[None]).astype(np.float32)


def lcc_weights(lcc: Any, sharpness: float = DEFAULT_SHARPNESS) -> np.ndarray:
    """Per-voxel atlas weights from local correlations: ``w_a(x) = softmax_a(sharpness · LCC_a(x))``.

    ``sharpness = 0`` gives equal weights (the majority vote); large values keep the locally best
    atlas only. The weights sum to 1 over atlases at every voxel.

    Args:
        lcc: ``(A, ...)`` local correlation of each warped atlas image with the target, in ``[-1, 1]``.
        sharpness: the softmax's inverse temperature (≥ 0).

    Returns:
        ``(A, ...)`` float32 weights.
    """
    values = atlas_array("lcc_weights", "lcc", lcc, 1)
    if not (math.isfinite(sharpness) and sharpness >= 0):
        raise ValueError(f"lcc_weights(): 'sharpness' must be a non-negative number, got {sharpness}")
    scaled = sharpness * values
    scaled -= scaled.max(axis=0, keepdims=True)
    e = np.exp(scaled)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def normalised_entropy(probabilities: Any) -> np.ndarray:
    """``H(p) / log L`` of a label distribution ``(L, ...)`` (``0 log 0 = 0``): 0 where one label is
    certain, 1 where all ``L`` labels are equally likely. float32 in ``[0, 1]``; zeros when ``L = 1``."""
    p = atlas_array("normalised_entropy", "probabilities", probabilities, 1)
    if np.any(p < -1e-6):
        raise ValueError("normalised_entropy(): 'probabilities' must be non-negative")
    count = p.shape[0]
    if count < 2:
        return np.zeros(p.shape[1:], np.float32)
    p = np.clip(p, 0.0, None)
    p = p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.clip(terms.sum(axis=0) / math.log(count), 0.0, 1.0).astype(np.float32)


def argmax_labels(probabilities: np.ndarray, label_values: tuple[int, ...]) -> np.ndarray:
    """The label of the largest probability (ties to the smaller label); uint8."""
    return np.asarray(label_values, np.uint8)[np.argmax(probabilities, axis=0)]


# ----------------------------------------------------------------------------- fusion (pure functions)
def atlas_array(func: str, name: str, x: Any, ndim: int) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim < ndim:
        raise ValueError(f"{func}(): '{name}' must have at least {ndim} axes, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{func}(): '{name}' holds NaN or infinite values")
    return array
