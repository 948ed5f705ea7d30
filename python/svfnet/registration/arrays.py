"""Registering a new pair with a trained SVF-Net: one forward pass, one exponential, one warp.

``register(moving, fixed, model)`` (also ``svfnet.register``) takes two images already on the model's grid (prepared, as by
``svfnet prepare``) and returns the SVF, its displacement and the warped moving image (and labels).
Images in their own geometry go through :mod:`svfnet.registration.files` (the ``svfnet register``
command), which prepares them exactly as training data was prepared and maps results back.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svfnet.baselines import lcc_demons
from svfnet.baselines.lcc_demons import LCCDemonsParams
from svfnet.ops import fields
from svfnet.training.model import SVFNet, as_model, check_grid

__all__ = [
    "REFINEMENT",
    "ModelGridWarning",
    "Registration",
    "predict_both_directions",
    "predict_svf",
    "register",
]

# LCC Log-Demons started from SVF-Net's SVF (register(..., refine=True)): the two finest levels and
# few iterations, since the start is already close; the other parameters are the demons' own
# (LCCDemonsParams). Measured on the demo's test pairs (docs/register.md, benchmarks/refinement.py):
# Dice 0.916/0.826/0.724/0.352 against LCC Log-Demons' 0.925/0.826/0.716/0.374 at 0.45 of its time;
# 20 + 25 iterations were closer (0.922/0.834/0.721/0.359) at 0.74, 3 levels faster but lower.
REFINEMENT: dict[str, Any] = {"levels": 2, "iterations": (10, 15)}


class ModelGridWarning(UserWarning):
    """The images are not on the grid (shape or voxel size) the model was trained on: it runs, but
    sees anatomy at another scale than it learnt, and its accuracy is unknown."""


@dataclass(frozen=True)
class Registration:
    """The result of one registration, on the fixed image's (prepared) grid.

    Attributes:
        svf: the stationary velocity field ``(3, I, J, K)``, in voxels.
        displacement: ``exp(svf)``, ``(3, I, J, K)`` in voxels: ``x ↦ x + displacement(x)``
            maps a fixed voxel to its position in the moving image.
        warped: the moving image resampled onto the fixed grid, ``(I, J, K)``.
        warped_labels: the moving labels warped likewise (one-hot), or None.
        seconds: wall time of network + exponential + warp (+ refinement).
        refinement_seconds: the part of ``seconds`` the refinement took (0 without it).
    """

    svf: np.ndarray
    displacement: np.ndarray
    warped: np.ndarray
    warped_labels: np.ndarray | None
    seconds: float
    refinement_seconds: float = 0.0


def predict_svf(
    model: SVFNet, moving: torch.Tensor, fixed: torch.Tensor, *, symmetric: bool = True
) -> torch.Tensor:
    """The SVF registering each ``moving`` to its ``fixed`` (``(N, I, J, K)`` each): ``(N, 3, I, J, K)``.

    ``symmetric``: ``(net(moving, fixed) − net(fixed, moving)) / 2``, both directions in one batch.
    The reversed pair's SVF is that of the inverse map (``exp(−v) = exp(v)⁻¹``) on the same voxel
    grid, so its negation estimates the same field; the average cancels what the network gets
    wrong in opposite ways in the two directions. Measured on the demo's 30 test pairs (overlap
    recipe, 1,000 steps): Dice 0.784 → 0.793 (LV myocardium), 0.714 → 0.728 (RV blood pool), 0.318
    → 0.336 (RV myocardium), LV blood pool unchanged, for a second forward pass (README.md).
    """
    if not symmetric:
        return model(torch.stack([moving, fixed], dim=1))
    forward, backward = predict_both_directions(model, torch.stack([moving, fixed], dim=1))
    return (forward - backward) / 2


def predict_both_directions(model: SVFNet, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's SVFs for ``pairs`` ``(N, 2, I, J, K)`` (moving, fixed) and for the reversed
    pairs, in one batch: ``(net(moving, fixed), net(fixed, moving))``."""
    both = model(torch.cat([pairs, pairs.flip(1)]))
    return both[: len(pairs)], both[len(pairs) :]


def refinement_params(refine: Any, func: str) -> dict[str, Any] | None:
    """The demons' overrides for ``refine`` (False/None: no refinement, True: :data:`REFINEMENT`, a
    mapping: :data:`REFINEMENT` updated by it), checked before any work; TypeError/ValueError naming
    ``refine`` otherwise."""
    if refine is None or refine is False:
        return None
    if refine is True:
        overrides = dict(REFINEMENT)
    elif isinstance(refine, Mapping):
        overrides = {**REFINEMENT, **dict(refine)}
    else:
        raise TypeError(
            f"{func}: 'refine' must be a bool or a mapping of LCCDemonsParams fields, got {refine!r}"
        )
    import dataclasses

    try:
        dataclasses.replace(LCCDemonsParams(), **overrides).checked()
    except TypeError as error:
        raise TypeError(
            f"{func}: bad 'refine' {dict(refine) if isinstance(refine, Mapping) else refine!r}: {error}"
        ) from None
    except ValueError as error:
        raise ValueError(
            f"{func}: bad 'refine' {dict(refine) if isinstance(refine, Mapping) else refine!r}: {error}"
        ) from None
    return overrides


def _device_of(model: SVFNet) -> torch.device:
    return next(model.parameters()).device


def _checked_images(moving, fixed, moving_labels) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """:func:`register`'s images as float32, refused where they are not finite volumes on one grid (with
    the moving labels on it)."""
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    if moving.ndim != 3 or moving.shape != fixed.shape:
        raise ValueError(
            f"register(): 'moving' {moving.shape} and 'fixed' {fixed.shape} must be (I, J, K) volumes on one grid"
        )
    for name, image in (("moving", moving), ("fixed", fixed)):
        if not np.isfinite(image).all():
            raise ValueError(f"register(): '{name}' has non-finite values")
    if moving_labels is not None and np.shape(moving_labels) != moving.shape:
        raise ValueError(
            f"register(): 'moving_labels' {np.shape(moving_labels)} must match 'moving' {moving.shape}"
        )
    return moving, fixed


def _warn_other_grid(model: SVFNet, shape: tuple[int, ...], spacing_mm) -> None:  # noqa: ANN001
    """:class:`ModelGridWarning` (for :func:`register`'s caller) where the images' grid or ``spacing_mm``
    is not the one the model was trained on."""
    trained_grid, trained_spacing = tuple(model.config.grid), tuple(model.config.spacing_mm)
    if tuple(shape) != trained_grid or (
        spacing_mm is not None and not np.allclose(spacing_mm, trained_spacing, rtol=1e-3, atol=0)
    ):
        here = "x".join(map(str, shape)) + (
            f" at {' x '.join(f'{s:g}' for s in spacing_mm)} mm" if spacing_mm is not None else ""
        )
        warnings.warn(
            f"register(): the images are on a {here} grid, the model was trained on "
            f"{'x'.join(map(str, trained_grid))} at {' x '.join(f'{s:g}' for s in trained_spacing)} mm: it sees the "
            "anatomy at another scale than it learnt (prepare the images on the model's grid, e.g. with "
            "svfnet.registration.files)",
            ModelGridWarning,
            stacklevel=3,  # register()'s caller
        )


def _refined(
    svf: torch.Tensor,
    moving: np.ndarray,
    fixed: np.ndarray,
    spacing: tuple[float, ...],
    overrides: dict[str, Any],
    device: torch.device,
) -> tuple[torch.Tensor, float]:
    """SVF-Net's SVF refined by LCC Log-Demons started from it (on the CPU), and the seconds it took."""
    refine_started = time.perf_counter()
    svf = torch.from_numpy(
        lcc_demons.register(moving, fixed, spacing=spacing, initial_svf=svf.cpu().numpy(), **overrides)
    ).to(device)
    return svf, time.perf_counter() - refine_started


def register(
    moving: np.ndarray,
    fixed: np.ndarray,
    model: SVFNet | str | Path,
    *,
    moving_labels: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    symmetric: bool = True,
    refine: bool | Mapping[str, Any] = False,
) -> Registration:
    """Registers ``moving`` to ``fixed`` with SVF-Net (both ``(I, J, K)`` on one model-compatible grid).

    The SVF is :func:`predict_svf`'s: by default the network's prediction for the pair averaged
    with the negated prediction for the reversed pair (``symmetric``).

    Args:
        moving, fixed: float images on the same grid, intensities normalised as in preparation
            (``[0, 1]`` between the 0.5th and 99.5th percentiles).
        model: a loaded :class:`SVFNet` (on CPU or CUDA) or the path of a checkpoint.
        moving_labels: optional integer label map of the moving image, warped along.
        spacing_mm: the images' voxel size, when known: compared with the model's.
        symmetric: average the two directions (see :func:`predict_svf`); False runs the network once.
        refine: refine SVF-Net's SVF with LCC Log-Demons started from it
            (:func:`svfnet.baselines.lcc_demons.register` with ``initial_svf``), with the
            parameters :data:`REFINEMENT` (True) or those updated by a mapping of
            :class:`~svfnet.baselines.lcc_demons.LCCDemonsParams` fields (e.g.
            ``{"iterations": (5, 10)}``). It runs on the CPU, at the images' voxel size
            (``spacing_mm``, else the model's).

    Warns:
        ModelGridWarning: the images' grid (or ``spacing_mm``) is not the one the model was
            trained on (its checkpoint records both); ``svfnet.registration.files`` prepares images on
            exactly that grid.
    """
    model = as_model(model)
    moving, fixed = _checked_images(moving, fixed, moving_labels)
    overrides = refinement_params(refine, "register()")

    check_grid(moving.shape, "register()")
    _warn_other_grid(model, moving.shape, spacing_mm)
    device = _device_of(model)
    started = time.perf_counter()
    with torch.no_grad():
        svf = predict_svf(
            model.eval(),
            torch.from_numpy(moving[None]).to(device),
            torch.from_numpy(fixed[None]).to(device),
            symmetric=symmetric,
        )[0]
    refinement_seconds = 0.0
    if overrides is not None:
        spacing = tuple(spacing_mm if spacing_mm is not None else model.config.spacing_mm)
        svf, refinement_seconds = _refined(svf, moving, fixed, spacing, overrides, device)
    with torch.no_grad():
        displacement = fields.exp(svf)
        warped = fields.warp(torch.from_numpy(moving).to(device), displacement)
    seconds = time.perf_counter() - started
    warped_labels = None
    if moving_labels is not None:
        labels = np.asarray(moving_labels)
        warped_labels = fields.warp_labels(labels, displacement.cpu().numpy(), mode="onehot")
    return Registration(
        svf.cpu().numpy(),
        displacement.cpu().numpy(),
        warped.cpu().numpy(),
        warped_labels,
        seconds,
        refinement_seconds,
    )
