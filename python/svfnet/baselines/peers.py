"""The optional peers of the evaluation, each a registration a user would otherwise call: SimpleITK's
diffeomorphic demons (SSD) and ANTs SyN with the neighbourhood cross-correlation (antspyx, an optional
extra). Each takes two prepared images and returns a displacement ``(3, I, J, K)`` in voxels.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from svfnet.evaluation.metrics import standardised

logger = logging.getLogger(__name__)

# SimpleITK's diffeomorphic demons (sum of squared differences): iterations, update smoothing (voxels).
SITK_DEFAULTS = {"iterations": 50, "smoothing_sigma_vox": 1.5}


# ANTs SyN, deformable stage only (the pairs are rigidly aligned by preparation), neighbourhood
# cross-correlation: iterations per level, coarsest first (three levels, shrunk in plane by 4, 2, 1
# and never across the thick slices, Gaussian smoothing 2, 1, 0 voxels); the correlation window's
# radius in voxels, the same along every axis in ANTs: 2 (5 voxels: 9 mm in plane, 36-40 mm across
# slices) rather than SyNCC's 4, whose 9 voxels span 9 of 16 slices, scored lower on synthetic
# 64x64x16 pairs and takes twice as long; SyN's gradient step (voxels), update and total field
# variances (voxels²); the random seed. See docs/experiment.md for the measurements.
ANTS_DEFAULTS = {
    "iterations": [60, 40, 20],
    "cc_radius": 2,
    "grad_step": 0.2,
    "flow_sigma": 3.0,
    "total_sigma": 0.0,
    "random_seed": 1,
}


ANTS_INSTALL = "pip install antspyx (or the extra: pip install 'svfnet[ants]')"


def ants_settings(ants_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """ANTs SyN's settings: :data:`ANTS_DEFAULTS` with ``ants_params`` replacing some, checked."""
    func = "run_evaluation"
    overrides = dict(ants_params or {})
    unknown = set(overrides) - set(ANTS_DEFAULTS)
    if unknown:
        raise ValueError(f"{func}(): unknown 'ants_params' {sorted(unknown)}; known: {sorted(ANTS_DEFAULTS)}")
    settings = {**ANTS_DEFAULTS, **overrides}
    iterations = settings["iterations"]
    if isinstance(iterations, int | np.integer) and not isinstance(iterations, bool):
        iterations = [iterations]
    if (
        not isinstance(iterations, Sequence)
        or not iterations
        or any(isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0 for n in iterations)
    ):
        raise ValueError(
            f"{func}(): 'ants_params' iterations must be non-negative integers per level, got {iterations!r}"
        )
    settings["iterations"] = [int(n) for n in iterations]
    radius = settings["cc_radius"]
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 1:
        raise ValueError(f"{func}(): 'ants_params' cc_radius must be an integer >= 1, got {radius!r}")
    for name in ("grad_step", "flow_sigma", "total_sigma"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{func}(): 'ants_params' {name} must be a finite number, got {value!r}")
        if value < 0 or (name == "grad_step" and value == 0):
            bound = "> 0" if name == "grad_step" else ">= 0"
            raise ValueError(f"{func}(): 'ants_params' {name} must be {bound}, got {value!r}")
        settings[name] = float(value)
    seed = settings["random_seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ValueError(f"{func}(): 'ants_params' random_seed must be an integer or None, got {seed!r}")
    settings["random_seed"] = None if seed is None else int(seed)
    settings["cc_radius"] = int(radius)
    return settings


# ------------------------------------------------------------------------------------------ methods
def sitk_demons(
    moving: np.ndarray,
    fixed: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    iterations: int = 50,
    smoothing_sigma_vox: float = 1.5,
) -> np.ndarray:
    """SimpleITK's diffeomorphic demons (SSD criterion, one level); displacement ``(3, I, J, K)`` in voxels.

    Arrays are handed to ITK transposed, so that ITK's x, y, z are our i, j, k; ITK's displacement
    (in mm, pull-back like ours: ``fixed(x) ≈ moving(x + d(x))``) is divided by the spacing.
    """
    import SimpleITK as sitk
    import torch

    def to_itk(volume: np.ndarray) -> Any:
        image = sitk.GetImageFromArray(
            np.ascontiguousarray(np.transpose(volume, (2, 1, 0)), dtype=np.float32)
        )
        image.SetSpacing(tuple(float(s) for s in spacing_mm))
        return image

    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetStandardDeviations(float(smoothing_sigma_vox))
    demons.SetNumberOfThreads(torch.get_num_threads())  # the worker's share of the cores
    field = demons.Execute(to_itk(standardised(fixed)), to_itk(standardised(moving)))
    disp_mm = np.transpose(sitk.GetArrayFromImage(field), (3, 2, 1, 0))  # (K, J, I, 3) -> (3, I, J, K)
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3, 1, 1, 1)
    return np.ascontiguousarray(disp_mm / spacing, dtype=np.float32)


def require_ants() -> Any:
    """The ``ants`` module (antspyx), or an ImportError that says how to install it."""
    try:
        import ants
    except ImportError as error:
        raise ImportError(
            f"ANTs SyN (--ants, include_ants=True) needs the package antspyx, which is not importable "
            f"({error}): {ANTS_INSTALL}"
        ) from error
    return ants


# The thread count this process's ITK (antspyx's own copy) was started with: ITK reads
# ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once, at its first multithreaded filter, and keeps it.
_ants_threads: int | None = None


def pin_ants_threads(threads: int) -> None:
    """Gives antspyx's ITK ``threads`` threads (the worker's share of the cores), before its first use."""
    global _ants_threads
    if _ants_threads is None:
        for name in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ITK_NUMBER_OF_THREADS"):
            os.environ[name] = str(int(threads))
        _ants_threads = int(threads)
    elif _ants_threads != threads:
        logger.warning(
            "ANTs already runs on %d threads in this process; %d were asked for", _ants_threads, threads
        )


def ants_syn(
    moving: np.ndarray,
    fixed: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    iterations: Sequence[int] = (60, 40, 20),
    cc_radius: int = 2,
    grad_step: float = 0.2,
    flow_sigma: float = 3.0,
    total_sigma: float = 0.0,
    random_seed: int | None = 1,
) -> np.ndarray:
    """ANTs SyN with the neighbourhood cross-correlation (antspyx); displacement ``(3, I, J, K)`` in voxels.

    One deformable stage (``type_of_transform="SyNOnly"``, identity initial transform: the pairs
    are rigidly aligned by preparation), ``n = len(iterations)`` levels shrunk by ``2^(n-1) ... 1``
    (ANTs shrinks an axis of larger voxels less: ``[4, 4, 1], [2, 2, 1], [1, 1, 1]`` at
    1.96 × 1.96 × 7.1 mm) with Gaussian smoothing ``n-1 ... 0`` voxels, metric
    ``CC[fixed, moving, 1, cc_radius]`` (window ``2 cc_radius + 1`` voxels along each axis),
    transform ``SyN[grad_step, flow_sigma, total_sigma]``.

    Geometry: ``ants.from_numpy`` keeps the array's axis order, so with origin 0, identity
    direction and ``spacing_mm`` the physical point of voxel ``(i, j, k)`` is
    ``(i s_i, j s_j, k s_k)`` mm. ANTs' forward warp (``fwdtransforms[0]``, what
    ``ants.apply_transforms(fixed, moving, fwdtransforms)`` uses to resample the moving image onto
    the fixed grid) holds at each fixed voxel the physical displacement to the moving point: our
    pull-back convention, ``fixed(x) ≈ moving(x + d(x))``; its millimetres are divided by the spacing.

    Args:
        moving, fixed: ``(I, J, K)`` images on the same grid.
        spacing_mm: voxel size along ``(i, j, k)``.
        iterations: iterations per level, coarsest first.
        cc_radius: radius of the correlation window, in voxels.
        grad_step: SyN's gradient step (largest update per iteration, voxels).
        flow_sigma, total_sigma: variances (voxels²) of the Gaussian smoothing of the update and of
            the total field (0: none).
        random_seed: ANTs' ``--random-seed`` (the dense CC metric samples nothing at random; the
            result is deterministic for a given thread count); None leaves ANTs' default.

    Returns:
        float32 ``(3, I, J, K)`` displacement in voxels of the fixed grid.
    """
    import torch

    pin_ants_threads(torch.get_num_threads())  # the worker's share of the cores, before ITK starts
    ants = require_ants()
    moving, fixed = np.asarray(moving), np.asarray(fixed)
    if moving.ndim != 3 or moving.shape != fixed.shape:
        raise ValueError(
            f"ants_syn(): 'moving' and 'fixed' must be (I, J, K) images of one grid, got {moving.shape} "
            f"and {fixed.shape}"
        )
    spacing = tuple(float(s) for s in spacing_mm)
    settings = {
        "type_of_transform": "SyNOnly",
        "initial_transform": "Identity",
        "syn_metric": "CC",
        "syn_sampling": int(cc_radius),
        "reg_iterations": tuple(int(n) for n in iterations),
        "grad_step": float(grad_step),
        "flow_sigma": float(flow_sigma),
        "total_sigma": float(total_sigma),
    }
    with tempfile.TemporaryDirectory(prefix="svfnet-ants-") as folder:
        result = _seeded_registration(
            ants,
            _to_ants(ants, fixed, spacing),
            _to_ants(ants, moving, spacing),
            folder,
            settings,
            random_seed,
        )
        disp_mm = _forward_warp_mm(ants, list(result["fwdtransforms"]), fixed.shape, spacing)
    scale = np.asarray(spacing, dtype=np.float64).reshape(3, 1, 1, 1)
    return np.ascontiguousarray(disp_mm / scale, dtype=np.float32)


def _to_ants(ants: Any, volume: np.ndarray, spacing: tuple[float, ...]) -> Any:
    """``volume`` as an ANTs image: float32, origin 0, identity direction, ``spacing`` mm."""
    return ants.from_numpy(
        np.ascontiguousarray(volume, dtype=np.float32),
        origin=(0.0, 0.0, 0.0),
        spacing=spacing,
        direction=np.eye(3),
    )


def _seeded_registration(
    ants: Any, fixed: Any, moving: Any, folder: str, settings: Mapping[str, Any], random_seed: int | None
) -> Any:
    """``ants.registration`` writing into ``folder``, with ANTs' random seed set to ``random_seed``
    for the call (where this antspyx has one) and restored after."""
    config = getattr(ants, "config", None)  # ants.registration reads its seed from there
    seeded = random_seed is not None and hasattr(config, "_random_seed")
    previous_seed = config._random_seed if seeded else None
    try:
        if seeded:
            config._random_seed = int(random_seed)
        return ants.registration(fixed, moving, outprefix=os.path.join(folder, "syn_"), **settings)
    finally:
        if seeded:
            config._random_seed = previous_seed


def _forward_warp_mm(
    ants: Any, transforms: list[str], shape: tuple[int, ...], spacing: tuple[float, ...]
) -> np.ndarray:
    """ANTs' one forward warp, checked (identity initial transform, on the fixed grid), as a
    ``(3, I, J, K)`` float64 displacement in mm; RuntimeError otherwise."""
    warps = [path for path in transforms if path.endswith("Warp.nii.gz")]
    others = [path for path in transforms if path not in warps]
    if len(warps) != 1:
        raise RuntimeError(f"ants_syn(): expected one forward warp from ANTs, got {transforms}")
    for path in others:  # the identity initial transform, written as an affine
        matrix = np.asarray(ants.read_transform(path).parameters, dtype=np.float64)
        if not np.allclose(matrix, [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], atol=1e-6):
            raise RuntimeError(f"ants_syn(): ANTs' initial transform {path} is not the identity")
    warp = ants.image_read(warps[0])
    if tuple(warp.shape) != shape or warp.components != 3:
        raise RuntimeError(
            f"ants_syn(): ANTs' warp is {tuple(warp.shape)} with {warp.components} components, "
            f"expected {shape} with 3"
        )
    if not (
        np.allclose(warp.spacing, spacing, rtol=1e-5)
        and np.allclose(warp.origin, 0.0, atol=1e-5)
        and np.allclose(warp.direction, np.eye(3), atol=1e-6)
    ):
        raise RuntimeError(
            f"ants_syn(): ANTs' warp has spacing {warp.spacing}, origin {warp.origin}, direction "
            f"{np.asarray(warp.direction).tolist()}: not the fixed grid"
        )
    return np.moveaxis(np.asarray(warp.numpy(), dtype=np.float64), -1, 0)  # (I, J, K, 3) -> (3, ...)
