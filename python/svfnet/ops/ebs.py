"""Elastic body spline (EBS) interpolation: landmark displacements spread over a whole grid.

For the pair (moving i, fixed j) the references stage fits an EBS on the fixed subject's
landmarks ``φ_j(p_k)`` (source, mm) to the displacements ``φ_i(p_k) − φ_j(p_k)`` (mm) and
evaluates it on every voxel of j's grid:

    u(x) = Σ_k G(x − s_k) c_k + A x + t,    G(r) = (α |r|² I − 3 r rᵀ) |r|,    α = 12 (1 − ν) − 1,

with ``Σ_k c_k = 0`` and ``Σ_k c_k s_kᵀ = 0`` so that the affine part is exactly that of the
data. The (3K + 12)-square system depends only on the source landmarks: :func:`factorize_ebs`
factorises it once per fixed subject and :meth:`EBSFactorization.solve` fits all its moving
subjects at once. Positions are normalised (centred, unit RMS radius) before the system is built,
which keeps it well conditioned; displacements stay in millimetres. Grid evaluation runs in
svfnet's compiled kernel, in float64.

References:
    Davis, Khotanzad, Flamig, Harms, "A physics-based coordinate transformation for 3-D image
    matching", IEEE TMI 16(3), 1997. ITK's ``ElasticBodySplineKernelTransform`` (same kernel).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from svfnet import _core
from svfnet.ops.backend import cpu_threads, cuda_entry

__all__ = ["EBSFactorization", "ElasticBodySpline", "ebs_alpha", "factorize_ebs", "fit_ebs"]


def ebs_alpha(nu: float) -> float:
    """α = 12 (1 − ν) − 1 of the EBS kernel for Poisson's ratio ν."""
    return 12.0 * (1.0 - nu) - 1.0


def _points(func: str, name: str, value, count: int | None = None) -> np.ndarray:
    points = np.asarray(value, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{func}(): '{name}' must be (K, 3) points in mm, got shape {points.shape}")
    if count is not None and points.shape[0] != count:
        raise ValueError(f"{func}(): '{name}' must have {count} points, got {points.shape[0]}")
    if not np.isfinite(points).all():
        raise ValueError(f"{func}(): '{name}' has non-finite values")
    return np.ascontiguousarray(points)


def _kernel_matrix(points: np.ndarray, alpha: float) -> np.ndarray:
    """The (3K, 3K) matrix of blocks G(p_k − p_l), dense float64."""
    r = points[:, None, :] - points[None, :, :]  # (K, K, 3)
    r2 = np.einsum("klc,klc->kl", r, r)
    norm = np.sqrt(r2)
    blocks = alpha * (r2 * norm)[:, :, None, None] * np.eye(3) - 3.0 * norm[:, :, None, None] * (
        r[:, :, :, None] * r[:, :, None, :]
    )
    count = points.shape[0]
    return blocks.transpose(0, 2, 1, 3).reshape(3 * count, 3 * count)


def _affine_matrix(points: np.ndarray) -> np.ndarray:
    """(3K, 12): row 3k + c maps the affine parameters (rows of Aᵀ, then t) to component c at p_k."""
    count = points.shape[0]
    matrix = np.zeros((3 * count, 12))
    for c in range(3):
        rows = np.arange(count) * 3 + c
        for b in range(3):
            matrix[rows, 3 * b + c] = points[:, b]
        matrix[rows, 9 + c] = 1.0
    return matrix


@dataclass(frozen=True)
class EBSFactorization:
    """The LU factorisation of one source landmark set's EBS system (see :func:`factorize_ebs`)."""

    source_mm: np.ndarray  # (K, 3)
    center_mm: np.ndarray  # (3,)
    scale_mm: float
    alpha: float
    lu: tuple[np.ndarray, np.ndarray]

    @property
    def count(self) -> int:
        return self.source_mm.shape[0]

    def solve(self, displacement_mm) -> ElasticBodySpline:
        """Fits the displacements ``(K, 3)`` — or ``(M, K, 3)`` for M fits at once — in mm."""
        displacement = np.asarray(displacement_mm, dtype=np.float64)
        batched = displacement.ndim == 3
        if displacement.ndim not in (2, 3) or displacement.shape[-2:] != (self.count, 3):
            raise ValueError(
                f"solve(): 'displacement_mm' must be ({self.count}, 3) or (M, {self.count}, 3), "
                f"got shape {displacement.shape}"
            )
        if not np.isfinite(displacement).all():
            raise ValueError("solve(): 'displacement_mm' has non-finite values")
        fits = displacement.reshape(-1, self.count, 3)
        rhs = np.zeros((3 * self.count + 12, fits.shape[0]))
        rhs[: 3 * self.count] = fits.reshape(fits.shape[0], -1).T
        solution = scipy.linalg.lu_solve(self.lu, rhs, check_finite=False)
        coefficients = np.ascontiguousarray(solution[: 3 * self.count].T.reshape(-1, self.count, 3))
        affine = np.ascontiguousarray(solution[3 * self.count :].T.reshape(-1, 4, 3))
        normalised = (self.source_mm - self.center_mm) / self.scale_mm
        return ElasticBodySpline(
            np.ascontiguousarray(normalised),
            coefficients,
            affine,
            self.center_mm,
            self.scale_mm,
            self.alpha,
            batched,
        )


def factorize_ebs(source_mm, *, nu: float = 0.25, smoothing: float = 0.0) -> EBSFactorization:
    """Builds and LU-factorises the EBS system of ``source_mm`` (K, 3) once.

    Args:
        source_mm: source landmarks in mm (the fixed subject's ``φ_j(p_k)``); at least 4, not coplanar.
        nu: Poisson's ratio, in [0, 0.5) (0.25 as ITK's default).
        smoothing: λ ≥ 0 added to the kernel matrix's diagonal (in the units of the normalised
            frame): 0 interpolates the landmarks exactly, larger values approximate them smoothly.
    """
    func = "factorize_ebs"
    source = _points(func, "source_mm", source_mm)
    if source.shape[0] < 4:
        raise ValueError(f"{func}(): 'source_mm' needs at least 4 landmarks, got {source.shape[0]}")
    if not (0.0 <= nu < 0.5):
        raise ValueError(f"{func}(): 'nu' must be in [0, 0.5), got {nu!r}")
    if not (math.isfinite(smoothing) and smoothing >= 0.0):
        raise ValueError(f"{func}(): 'smoothing' must be >= 0, got {smoothing!r}")
    center = source.mean(axis=0)
    scale = float(np.sqrt(((source - center) ** 2).sum(axis=1).mean()))
    if scale == 0.0:
        raise ValueError(f"{func}(): 'source_mm' landmarks all coincide")
    normalised = (source - center) / scale
    alpha = ebs_alpha(nu)
    count = source.shape[0]
    system = np.zeros((3 * count + 12, 3 * count + 12))
    system[: 3 * count, : 3 * count] = _kernel_matrix(normalised, alpha) + smoothing * np.eye(3 * count)
    affine = _affine_matrix(normalised)
    system[: 3 * count, 3 * count :] = affine
    system[3 * count :, : 3 * count] = affine.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        lu, pivots = scipy.linalg.lu_factor(system, check_finite=False)
    diagonal = np.abs(np.diag(lu))
    if diagonal.min() <= 1e-12 * diagonal.max():
        raise ValueError(
            f"{func}(): the EBS system of 'source_mm' is singular: landmarks repeated, or all coplanar"
        )
    return EBSFactorization(source, center, scale, alpha, (lu, pivots))


def fit_ebs(source_mm, displacement_mm, *, nu: float = 0.25, smoothing: float = 0.0) -> ElasticBodySpline:
    """Fits an EBS mapping ``source_mm`` (K, 3) to ``displacement_mm`` (K, 3) or (M, K, 3), in mm.

    Returns an :class:`ElasticBodySpline`, callable on points (mm) and evaluable on a grid.
    """
    return factorize_ebs(source_mm, nu=nu, smoothing=smoothing).solve(displacement_mm)


@dataclass(frozen=True)
class ElasticBodySpline:
    """One or M fitted EBS displacement fields sharing their landmarks (from :func:`fit_ebs`)."""

    landmarks: np.ndarray  # (K, 3) normalised frame
    coefficients: np.ndarray  # (M, K, 3)
    affine: np.ndarray  # (M, 4, 3): rows of Aᵀ, then t, in the normalised frame, output in mm
    center_mm: np.ndarray
    scale_mm: float
    alpha: float
    batched: bool

    @property
    def fits(self) -> int:
        return self.coefficients.shape[0]

    def __call__(self, points_mm) -> np.ndarray:
        """Displacements (mm) at ``points_mm`` (P, 3): ``(P, 3)``, or ``(M, P, 3)`` for a batch."""
        points = (_points("ElasticBodySpline", "points_mm", points_mm) - self.center_mm) / self.scale_mm
        out = np.empty((self.fits, points.shape[0], 3))
        _core.ebs_points_cpu(
            self.landmarks,
            self.coefficients,
            self.affine,
            self.alpha,
            np.ascontiguousarray(points),
            out,
            cpu_threads(),
        )
        return out if self.batched else out[0]

    def on_grid(self, shape, spacing, *, device=None):
        """The displacement on every voxel of a grid, in voxels of that grid.

        Voxel ``(i, j, k)`` sits at ``(i, j, k) · spacing`` mm (the prepared grid's frame).

        Args:
            shape: ``(I, J, K)``.
            spacing: voxel size in mm along ``(i, j, k)``.
            device: None for a NumPy array computed on the CPU; a CUDA device (``"cuda"``,
                ``"cuda:1"``, a ``torch.device``) for a torch tensor computed there by the same
                svfcore kernel.

        Returns:
            float32 ``(3, I, J, K)`` (or ``(M, 3, I, J, K)`` for a batch), in voxels.
        """
        shape = tuple(int(s) for s in shape)
        spacing = tuple(float(s) for s in spacing)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"on_grid(): 'shape' must be three positive sizes, got {shape}")
        if len(spacing) != 3 or min(spacing) <= 0 or not all(map(math.isfinite, spacing)):
            raise ValueError(f"on_grid(): 'spacing' must be three positive numbers (mm), got {spacing}")
        if device is not None:
            return self._on_cuda(shape, spacing, device)
        out = np.empty((self.fits, 3, *shape), dtype=np.float32)
        _core.ebs_grid_cpu(
            self.landmarks,
            self.coefficients,
            self.affine,
            self.alpha,
            tuple(-self.center_mm / self.scale_mm),
            tuple(np.asarray(spacing) / self.scale_mm),
            tuple(1.0 / np.asarray(spacing)),
            out,
            cpu_threads(),
        )
        return out if self.batched else out[0]

    def _on_cuda(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], device):
        import torch

        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(
                f"on_grid(): 'device' must be None (NumPy on the CPU) or a CUDA device, got {device}"
            )
        from svfnet import cuda_available

        if not cuda_available():
            raise RuntimeError(
                "on_grid(): no usable CUDA device (svfnet.cuda_available() is False: svfnet built "
                "without nvcc, or no device visible); call on_grid() without 'device'"
            )

        def on_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(device)

        with torch.cuda.device(device):
            landmarks, coefficients = on_device(self.landmarks), on_device(self.coefficients)
            affine = on_device(self.affine)
            out = torch.empty((self.fits, 3, *shape), dtype=torch.float32, device=device)
            cuda_entry("ebs_grid_cuda")(
                landmarks.data_ptr(),
                landmarks.shape[0],
                coefficients.data_ptr(),
                affine.data_ptr(),
                self.fits,
                self.alpha,
                shape,
                tuple(-self.center_mm / self.scale_mm),
                tuple(np.asarray(spacing) / self.scale_mm),
                tuple(1.0 / np.asarray(spacing)),
                out.data_ptr(),
                torch.cuda.current_stream(device).cuda_stream,
            )
        return out if self.batched else out[0]
