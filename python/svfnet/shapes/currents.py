"""Surfaces as currents: inner products, norms and distances that need no point correspondence.

A triangulated surface ``S`` is represented by the centres ``c_f`` and area-weighted normals
``n_f = ½ (b - a) × (c - a)`` of its triangles; with a Gaussian kernel of width ``σ_W``,

    ⟨S, T⟩ = Σ_f Σ_g exp(-|c_f - d_g|² / σ_W²) n_f · m_g,    d(S, T)² = ⟨S,S⟩ - 2⟨S,T⟩ + ⟨T,T⟩.

Several regions (LV, RV...) are compared region by region and summed with weights. Everything is
differentiable in the vertex positions (torch), through :func:`svfnet.ops.kernels.gaussian_bilinear`.
Units: positions in mm, so normals in mm², inner products in mm⁴, distances in mm².

References:
    Vaillant, Glaunès: "Surface matching via currents" (IPMI 2005).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Union

import numpy as np
import torch

from svfnet.ops.kernels import BilinearFormFunction, valid_sigma
from svfnet.shapes.surfaces import Surface

__all__ = [
    "currents_distance",
    "currents_inner",
    "triangle_centres_normals",
]

SurfaceLike = Union[Surface, tuple[Any, Any]]  # noqa: UP007 (a runtime alias on Python 3.10)  # a Surface or (vertices (V, 3), faces (F, 3))


def triangle_centres_normals(vertices: Any, faces: Any) -> tuple[Any, Any]:
    """Centres ``(F, 3)`` and area-weighted normals ``½ (b - a) × (c - a)`` ``(F, 3)`` of triangles.

    Args:
        vertices: ``(V, 3)`` positions (NumPy or torch; torch stays differentiable).
        faces: ``(F, 3)`` integer vertex indices.

    Returns:
        ``(centres, normals)`` of ``vertices``' kind and dtype.
    """
    func = "triangle_centres_normals"
    torch_given = isinstance(vertices, torch.Tensor)
    v = vertices if torch_given else torch.from_numpy(np.asarray(vertices, dtype=np.float64))
    f = torch.as_tensor(np.asarray(faces) if not isinstance(faces, torch.Tensor) else faces, device=v.device)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{func}(): 'vertices' must be (V, 3), got shape {tuple(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.is_floating_point:
        raise ValueError(
            f"{func}(): 'faces' must be (F, 3) integer indices, got shape {tuple(f.shape)} {f.dtype}"
        )
    if f.shape[0] == 0:
        raise ValueError(f"{func}(): the mesh has no triangles")
    if int(f.min()) < 0 or int(f.max()) >= v.shape[0]:
        raise ValueError(f"{func}(): 'faces' index vertices outside [0, {v.shape[0]})")
    f = f.long()
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    centres = (a + b + c) / 3.0
    normals = 0.5 * torch.linalg.cross(b - a, c - a)
    if torch_given:
        return centres, normals
    return centres.numpy(), normals.numpy()


def as_currents(
    func: str, name: str, surface: SurfaceLike, dtype: torch.dtype | None
) -> tuple[torch.Tensor, ...]:
    if isinstance(surface, Surface):
        vertices, faces = surface.vertices_mm, surface.faces
    else:
        try:
            vertices, faces = surface
        except (TypeError, ValueError):
            raise TypeError(f"{func}(): '{name}' must be a Surface or a (vertices, faces) pair") from None
    vertices = vertices if isinstance(vertices, torch.Tensor) else torch.from_numpy(np.asarray(vertices))
    if dtype is not None:
        vertices = vertices.to(dtype)
    if not vertices.dtype.is_floating_point:
        vertices = vertices.double()
    if not bool(torch.isfinite(vertices.detach()).all()):
        raise ValueError(f"{func}(): '{name}' has non-finite vertex positions")
    centres, normals = triangle_centres_normals(vertices, faces)
    area = float(normals.detach().norm(dim=1).sum())
    if not area > 0:
        raise ValueError(f"{func}(): '{name}' is a degenerate mesh: all its triangles have zero area")
    return centres.contiguous(), normals.contiguous()


def currents_inner(
    a: SurfaceLike, b: SurfaceLike, sigma_mm: float, *, dtype: torch.dtype | None = None
) -> Any:
    """⟨A, B⟩ for two surfaces as currents with a Gaussian kernel of width ``sigma_mm``.

    Args:
        a, b: each a :class:`Surface` or ``(vertices (V, 3), faces (F, 3))`` in mm (torch vertices
            stay differentiable).
        sigma_mm: kernel width σ_W.
        dtype: compute dtype (default: float64 if all vertices are float64 torch tensors, else
            float32 with float64 accumulation).

    Returns:
        float64: a 0-d tensor if any vertices are torch tensors, else a float.
    """
    func = "currents_inner"
    sigma = _sigma(func, sigma_mm)
    dtype = dtype or _common_dtype(a, b)
    ca, na = as_currents(func, "a", a, dtype)
    if a is b:  # a squared norm: one pass, both slots' gradients from it
        value = BilinearFormFunction.apply(ca, na, ca, na, sigma, True)
    else:
        cb, nb = as_currents(func, "b", b, dtype)
        value = BilinearFormFunction.apply(ca, na, cb, nb, sigma, False)
    return value if _any_torch(a, b) else float(value)


def currents_distance(
    a: SurfaceLike | Mapping[int, SurfaceLike],
    b: SurfaceLike | Mapping[int, SurfaceLike],
    sigma_mm: float,
    *,
    weights: Mapping[int, float] | None = None,
    squared: bool = False,
    dtype: torch.dtype | None = None,
) -> Any:
    """Currents distance ``d(A, B)`` (or ``d²`` with ``squared``), summed over regions.

    Args:
        a, b: surfaces, or ``{region: surface}`` mappings with the same regions; ``d² = Σ_r w_r d_r²``.
        sigma_mm: kernel width σ_W in mm.
        weights: per-region weights ``w_r`` (default 1 each).
        squared: return ``d²`` (mm⁴), differentiable everywhere; ``d`` (mm²) has an infinite
            gradient at ``d = 0``.
        dtype: compute dtype (default: float64 if all vertices are float64 torch tensors, else
            float32 with float64 accumulation).

    Returns:
        float64: a 0-d tensor if any vertices are torch tensors, else a float.
    """
    func = "currents_distance"
    sigma = _sigma(func, sigma_mm)
    single = not isinstance(a, Mapping)
    if single != (not isinstance(b, Mapping)):
        raise TypeError(
            f"{func}(): 'a' and 'b' must both be surfaces or both be {{region: surface}} mappings"
        )
    regions_a = {0: a} if single else dict(a)
    regions_b = {0: b} if single else dict(b)
    if set(regions_a) != set(regions_b):
        raise ValueError(
            f"{func}(): 'a' has regions {sorted(regions_a)} but 'b' has {sorted(regions_b)}; they must match"
        )
    if not regions_a:
        raise ValueError(f"{func}(): no surfaces to compare")
    weights = dict(weights or {})
    unknown = set(weights) - set(regions_a)
    if unknown and not single:
        raise ValueError(f"{func}(): 'weights' names regions {sorted(unknown)} that the surfaces do not have")
    dtype = dtype or _common_dtype(*regions_a.values(), *regions_b.values())
    total: Any = 0.0
    for region in sorted(regions_a):
        weight = float(weights.get(region, 1.0)) if not single else 1.0
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{func}(): weight of region {region} must be >= 0, got {weight!r}")
        ca, na = as_currents(func, f"a[{region}]", regions_a[region], dtype)
        cb, nb = as_currents(func, f"b[{region}]", regions_b[region], dtype)
        d2 = (
            BilinearFormFunction.apply(ca, na, ca, na, sigma, True)
            - 2.0 * BilinearFormFunction.apply(ca, na, cb, nb, sigma, False)
            + BilinearFormFunction.apply(cb, nb, cb, nb, sigma, True)
        )
        total = total + weight * d2
    total = torch.clamp(total, min=0.0)  # rounding can take d² of nearly equal surfaces below 0
    value = total if squared else torch.sqrt(total)
    return value if _any_torch(*regions_a.values(), *regions_b.values()) else float(value)


def _sigma(func: str, sigma_mm: Any) -> float:
    try:
        sigma = float(sigma_mm)
    except (TypeError, ValueError):
        raise TypeError(f"{func}(): 'sigma_mm' must be a number, got {sigma_mm!r}") from None
    if not valid_sigma(sigma):
        raise ValueError(f"{func}(): 'sigma_mm' must be positive and finite, got {sigma_mm!r}")
    return sigma


def _vertices_of(surface: Any) -> Any:
    if isinstance(surface, Surface):
        return surface.vertices_mm
    try:
        return surface[0]
    except (TypeError, IndexError, KeyError):
        return None


def _any_torch(*surfaces: Any) -> bool:
    return any(isinstance(_vertices_of(s), torch.Tensor) for s in surfaces)


def _common_dtype(*surfaces: Any) -> torch.dtype:
    """float64 only when every surface gives float64 torch vertices; else float32 (fast, with
    float64 accumulation), NumPy and :class:`Surface` inputs included."""
    for surface in surfaces:
        vertices = _vertices_of(surface)
        if not (isinstance(vertices, torch.Tensor) and vertices.dtype == torch.float64):
            return torch.float32
    return torch.float64
