"""LDDMM registration of a template surface set to a subject's, in the space of currents.

The deformation is the flow of a velocity field ``v_t(x) = Σ_k K(x, q_k(t)) p_k(t)`` carried by
control points ``q`` (a regular grid over the template's bounding box, spaced ``σ_V`` apart) with
momenta ``p``, Gaussian kernel ``K(x, y) = exp(-|x - y|² / σ_V²)``. Geodesics follow Hamilton's
equations for ``H(q, p) = ½ pᵀ K(q, q) p``:

    q̇ = K(q, q) p,    ṗ = -∂H/∂q,    ẋ = K(x, q) p   (every point x of the template),

integrated over t ∈ [0, 1] in ``time_steps`` steps (RK2 midpoint or Euler). The initial momenta
minimise

    E(p₀) = p₀ᵀ K(q₀, q₀) p₀ + d(φ(T), S)² / σ_noise²

(``d`` the currents distance, region by region with weights) by L-BFGS (SciPy), with gradients
by automatic differentiation through the shooting, all kernel sums in svfnet's compiled kernels.

Units: millimetres throughout; ``σ_noise`` is in the unit of the currents distance, mm².

References:
    Durrleman, Prastawa, Charon, Korenberg, Joshi, Gerig, Trouvé: "Morphometry of anatomical
    shape complexes with dense deformations and sparse parameters" (NeuroImage 2014).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from svfnet.ops.kernels import BilinearFormFunction, GaussianSumFunction, SumAndGradientFunction
from svfnet.shapes.parameters import LddmmParameters
from svfnet.shapes.surfaces import Surface

__all__ = [
    "GeodesicFlow",
    "LddmmParameters",
    "LddmmResult",
    "control_point_grid",
    "geodesic_flow",
    "register_surfaces",
]


@dataclass
class LddmmResult:
    """What one registration found.

    Attributes:
        control_points_mm: ``(Q, 3)`` initial control points.
        momenta: ``(Q, 3)`` initial momenta p₀ (mm: velocities are ``K p``).
        initial_distance: currents distance ``d(T, S)`` before registration (mm²).
        final_distance: ``d(φ(T), S)`` after registration (mm²).
        region_distances: ``{region: d_r(φ(T), S)}`` after registration.
        kinetic_energy: ``p₀ᵀ K(q₀, q₀) p₀``.
        energy: the minimised energy.
        iterations, evaluations: L-BFGS iterations and energy evaluations.
        converged: whether L-BFGS stopped on its tolerance rather than on ``max_iterations``.
        message: L-BFGS's reason for stopping.
        seconds: wall time.
    """

    control_points_mm: np.ndarray
    momenta: np.ndarray
    parameters: LddmmParameters
    initial_distance: float
    final_distance: float
    region_distances: dict[int, float]
    kinetic_energy: float
    energy: float
    iterations: int
    evaluations: int
    converged: bool
    message: str
    seconds: float
    _trajectory: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)

    @property
    def distance_reduction(self) -> float:
        """``1 - final / initial``: 1 is a perfect match, 0 no progress."""
        return 1.0 - self.final_distance / self.initial_distance if self.initial_distance > 0 else 0.0

    def transform_points(self, points_mm: Any) -> np.ndarray:
        """Where points of the template's space land in the subject: ``φ(points)``.

        Args:
            points_mm: ``(N, 3)`` positions in mm (the template's frame).

        Returns:
            ``(N, 3)`` float64 positions in mm (the subject's frame).
        """
        points = np.asarray(points_mm, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"transform_points(): 'points_mm' must be (N, 3), got shape {points.shape}")
        if not np.isfinite(points).all():
            raise ValueError("transform_points(): 'points_mm' has non-finite values")
        dtype = _torch_dtype(self.parameters.dtype)
        x = torch.from_numpy(points).to(dtype)
        with torch.no_grad():
            x = _flow(x, self._trajectory, self.parameters)
        return x.double().numpy()

    def summary(self) -> dict[str, Any]:
        """The scalars, JSON-ready."""
        return {
            "initial_distance": self.initial_distance,
            "final_distance": self.final_distance,
            "distance_reduction": self.distance_reduction,
            "region_distances": {str(r): d for r, d in sorted(self.region_distances.items())},
            "kinetic_energy": self.kinetic_energy,
            "energy": self.energy,
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "converged": self.converged,
            "message": self.message,
            "seconds": self.seconds,
            "control_points": int(len(self.control_points_mm)),
        }


def _torch_dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


# -------------------------------------------------------------------- geometry
def control_point_grid(points_mm: np.ndarray, spacing_mm: float, margin_mm: float) -> np.ndarray:
    """A regular grid ``(Q, 3)`` of spacing ``spacing_mm`` centred on the bounding box of
    ``points_mm`` grown by ``margin_mm`` on every side (at least one point per axis)."""
    points_mm = np.asarray(points_mm, dtype=np.float64)
    lo = points_mm.min(axis=0) - margin_mm
    hi = points_mm.max(axis=0) + margin_mm
    counts = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    centre = (lo + hi) / 2
    axes = [centre[a] + spacing_mm * (np.arange(counts[a]) - (counts[a] - 1) / 2) for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


# -------------------------------------------------------------------- shooting
def _hamiltonian_velocity(
    q: torch.Tensor, p: torch.Tensor, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q̇, ṗ) = (K(q, q) p, -∂H/∂q): one pass over the control point pairs."""
    q_dot, dh_dq = SumAndGradientFunction.apply(q, q, p, p, sigma, True)
    return q_dot, -dh_dq


def _shoot(q0: torch.Tensor, p0: torch.Tensor, x0: torch.Tensor, parameters: LddmmParameters):
    """Integrates the geodesic from (q0, p0), carrying the points x0 along.

    Returns the flowed points and the trajectory: for every step the states at which the points'
    velocity was evaluated, ``(q, p)`` (Euler) or ``(q, p, q_mid, p_mid)`` (RK2).
    """
    sigma = parameters.sigma_v_mm
    dt = 1.0 / parameters.time_steps
    q, p, x = q0, p0, x0
    trajectory = []
    for _ in range(parameters.time_steps):
        q_dot, p_dot = _hamiltonian_velocity(q, p, sigma)
        x_dot = GaussianSumFunction.apply(x, q, p, sigma)
        if parameters.integrator == "euler":
            trajectory.append((q.detach(), p.detach()))
            q, p, x = q + dt * q_dot, p + dt * p_dot, x + dt * x_dot
            continue
        q_mid, p_mid, x_mid = q + 0.5 * dt * q_dot, p + 0.5 * dt * p_dot, x + 0.5 * dt * x_dot
        trajectory.append((q.detach(), p.detach(), q_mid.detach(), p_mid.detach()))
        q_dot, p_dot = _hamiltonian_velocity(q_mid, p_mid, sigma)
        x_dot = GaussianSumFunction.apply(x_mid, q_mid, p_mid, sigma)
        q, p, x = q + dt * q_dot, p + dt * p_dot, x + dt * x_dot
    return x, trajectory


def _flow(x: torch.Tensor, trajectory, parameters: LddmmParameters) -> torch.Tensor:
    """Flows points along a stored trajectory, with the integrator that made it."""
    sigma = parameters.sigma_v_mm
    dt = 1.0 / parameters.time_steps
    for state in trajectory:
        state = [s.to(x.dtype) for s in state]
        if parameters.integrator == "euler":
            q, p = state
            x = x + dt * GaussianSumFunction.apply(x, q, p, sigma)
        else:
            q, p, q_mid, p_mid = state
            x_mid = x + 0.5 * dt * GaussianSumFunction.apply(x, q, p, sigma)
            x = x + dt * GaussianSumFunction.apply(x_mid, q_mid, p_mid, sigma)
    return x


def _inverse_flow(
    x: torch.Tensor, trajectory, parameters: LddmmParameters, tol_mm: float, max_iterations: int
) -> torch.Tensor:
    """Undoes :func:`_flow`: each step, last first, inverted by fixed-point iteration.

    A step maps ``y`` to ``x = y + dt·w(y)`` (``w`` the RK2 or Euler increment): ``y = x − dt·w(y)``
    is a contraction when ``dt·|∇w| < 1`` (small steps of a smooth flow), started from ``y = x``;
    it stops when no point moves by more than ``tol_mm``.
    """
    sigma = parameters.sigma_v_mm
    dt = 1.0 / parameters.time_steps

    def increment(y: torch.Tensor, state) -> torch.Tensor:
        if parameters.integrator == "euler":
            q, p = state
            return GaussianSumFunction.apply(y, q, p, sigma)
        q, p, q_mid, p_mid = state
        return GaussianSumFunction.apply(
            y + 0.5 * dt * GaussianSumFunction.apply(y, q, p, sigma), q_mid, p_mid, sigma
        )

    for state in reversed(trajectory):
        state = [s.to(x.dtype) for s in state]
        y = x
        for _ in range(max_iterations):
            updated = x - dt * increment(y, state)
            moved = float((updated - y).abs().max()) if len(y) else 0.0
            y = updated
            if moved <= tol_mm:
                break
        x = y
    return x


@dataclass
class GeodesicFlow:
    """The deformation ``φ`` of one registration, rebuilt from its initial control points and
    momenta (as the shapes stage stores them): points flow forward, ``φ(x)``, or back, ``φ⁻¹(x)``.
    See :func:`geodesic_flow`."""

    parameters: LddmmParameters
    _trajectory: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)

    def _points(self, func: str, points_mm: Any) -> torch.Tensor:
        points = np.asarray(points_mm, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"{func}(): 'points_mm' must be (N, 3), got shape {points.shape}")
        if not np.isfinite(points).all():
            raise ValueError(f"{func}(): 'points_mm' has non-finite values")
        return torch.from_numpy(points).to(_torch_dtype(self.parameters.dtype))

    def transform_points(self, points_mm: Any) -> np.ndarray:
        """``φ(points)``: ``(N, 3)`` mm of the template's frame to float64 mm of the subject's."""
        x = self._points("transform_points", points_mm)
        with torch.no_grad():
            return _flow(x, self._trajectory, self.parameters).double().numpy()

    def inverse_transform_points(
        self, points_mm: Any, *, tol_mm: float = 1e-3, max_iterations: int = 20
    ) -> np.ndarray:
        """``φ⁻¹(points)``: ``(N, 3)`` mm of the subject's frame to float64 mm of the template's.

        Each integration step is inverted exactly (to ``tol_mm`` per step), so that
        ``transform_points(inverse_transform_points(x)) ≈ x`` up to the steps' tolerance.
        """
        x = self._points("inverse_transform_points", points_mm)
        with torch.no_grad():
            back = _inverse_flow(x, self._trajectory, self.parameters, tol_mm, max_iterations)
        return back.double().numpy()


def geodesic_flow(control_points_mm: Any, momenta: Any, parameters: LddmmParameters) -> GeodesicFlow:
    """The flow of the geodesic shot from ``control_points_mm`` ``(Q, 3)`` with ``momenta`` ``(Q, 3)``.

    With the parameters of the registration that found the momenta (width, steps, integrator,
    dtype), it is the same deformation as that registration's :meth:`LddmmResult.transform_points`.
    """
    dtype = _torch_dtype(parameters.dtype)
    q0 = torch.from_numpy(np.asarray(control_points_mm, dtype=np.float64)).to(dtype)
    p0 = torch.from_numpy(np.asarray(momenta, dtype=np.float64)).to(dtype)
    if q0.ndim != 2 or q0.shape[1] != 3 or p0.shape != q0.shape:
        raise ValueError(
            f"geodesic_flow(): 'control_points_mm' and 'momenta' must both be (Q, 3), got {tuple(q0.shape)} "
            f"and {tuple(p0.shape)}"
        )
    with torch.no_grad():
        _, trajectory = _shoot(q0, p0, q0[:0], parameters)
    return GeodesicFlow(parameters, trajectory)


# -------------------------------------------------------------------- registration
@dataclass
class _Problem:
    """Tensors of one registration: the template's concatenated vertices and each region's
    faces into them, the subject's currents, and the data weights."""

    template_vertices: torch.Tensor  # (V, 3)
    template_faces: dict[int, torch.Tensor]  # region -> (F, 3) into template_vertices
    subject_currents: dict[int, tuple[torch.Tensor, torch.Tensor]]  # region -> (centres, normals)
    subject_norms: dict[int, float]  # region -> ⟨S_r, S_r⟩
    weights: dict[int, float]
    sigma_w: float

    def distances_squared(self, vertices: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for region, faces in self.template_faces.items():
            a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
            centres = ((a + b + c) / 3.0).contiguous()
            normals = (0.5 * torch.linalg.cross(b - a, c - a)).contiguous()
            subject_centres, subject_normals = self.subject_currents[region]
            out[region] = (
                BilinearFormFunction.apply(centres, normals, centres, normals, self.sigma_w, True)
                - 2.0
                * BilinearFormFunction.apply(
                    centres, normals, subject_centres, subject_normals, self.sigma_w, False
                )
                + self.subject_norms[region]
            )
        return out

    def data_term(self, vertices: torch.Tensor) -> torch.Tensor:
        distances = self.distances_squared(vertices)
        return sum(self.weights[r] * d for r, d in distances.items())


def _surfaces_checked(func: str, name: str, surfaces: Any) -> dict[int, Surface]:
    if isinstance(surfaces, Surface):
        return {0: surfaces}
    if not isinstance(surfaces, Mapping) or not surfaces:
        raise TypeError(f"{func}(): '{name}' must be a Surface or a non-empty {{region: Surface}} mapping")
    out = {}
    for region, surface in surfaces.items():
        if not isinstance(surface, Surface):
            raise TypeError(f"{func}(): '{name}[{region}]' must be a Surface, got {type(surface).__name__}")
        if surface.n_triangles == 0 or not surface.area_mm2() > 0:
            raise ValueError(
                f"{func}(): '{name}[{region}]' is a degenerate mesh (no triangle of non-zero area)"
            )
        if not np.isfinite(surface.vertices_mm).all():
            raise ValueError(f"{func}(): '{name}[{region}]' has non-finite vertices")
        out[int(region)] = surface
    return out


def register_surfaces(
    template: Mapping[int, Surface] | Surface,
    subject: Mapping[int, Surface] | Surface,
    parameters: LddmmParameters | None = None,
) -> LddmmResult:
    """Registers a template to a subject by LDDMM geodesic shooting in the space of currents.

    Args:
        template: ``{region: Surface}`` (or one Surface), vertices in mm.
        subject: the same regions, in the same frame.
        parameters: see :class:`LddmmParameters`.

    Returns:
        An :class:`LddmmResult`; ``result.transform_points(p)`` maps template points into the subject.

    Raises:
        ValueError: regions that differ, degenerate meshes, or an energy that turns non-finite
            (momenta blowing up: a σ too small or too large for the data).
    """
    func = "register_surfaces"
    parameters = parameters or LddmmParameters()
    template, subject, weights = _checked_inputs(func, template, subject, parameters)
    started = time.perf_counter()
    dtype = _torch_dtype(parameters.dtype)
    problem, template_vertices = _problem(template, subject, weights, parameters, dtype)

    control_points = control_point_grid(
        template_vertices.double().numpy(), parameters.spacing_mm, parameters.margin_mm
    )
    q0 = torch.from_numpy(control_points).to(dtype)
    noise2 = float(parameters.sigma_noise) ** 2

    with torch.no_grad():
        initial_distance = math.sqrt(max(float(problem.data_term(template_vertices)), 0.0))

    evaluations = 0

    def energy_and_gradient(momenta_flat: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evaluations
        evaluations += 1
        p0 = torch.from_numpy(momenta_flat.reshape(-1, 3)).to(dtype).requires_grad_(True)
        flowed, _ = _shoot(q0, p0, template_vertices, parameters)
        kinetic = BilinearFormFunction.apply(q0, p0, q0, p0, parameters.sigma_v_mm, True)
        energy = kinetic + problem.data_term(flowed) / noise2
        (gradient,) = torch.autograd.grad(energy, p0)
        value = float(energy.detach())
        gradient = gradient.double().numpy().reshape(-1)
        if not (math.isfinite(value) and np.isfinite(gradient).all()):
            raise ValueError(
                f"{func}(): the energy or its gradient became non-finite (NaN or infinity) at evaluation "
                f"{evaluations}: the momenta blew up. Check sigma_v_mm={parameters.sigma_v_mm}, "
                f"sigma_w_mm={parameters.sigma_w_mm} and sigma_noise={parameters.sigma_noise} against the "
                "size "
                "of the shapes (mm), or use more time_steps"
            )
        return value, gradient

    momenta, iterations, message, converged = _minimized(func, energy_and_gradient, q0.numel(), parameters)
    with torch.no_grad():
        p0 = torch.from_numpy(momenta.reshape(-1, 3)).to(dtype)
        flowed, trajectory = _shoot(q0, p0, template_vertices, parameters)
        region_d2 = problem.distances_squared(flowed)
        kinetic = float(BilinearFormFunction.apply(q0, p0, q0, p0, parameters.sigma_v_mm, True))
        data = sum(weights[r] * float(d) for r, d in region_d2.items())
    return LddmmResult(
        control_points_mm=control_points,
        momenta=momenta.reshape(-1, 3).copy(),
        parameters=parameters,
        initial_distance=initial_distance,
        final_distance=math.sqrt(max(data, 0.0)),
        region_distances={r: math.sqrt(max(float(d), 0.0)) for r, d in region_d2.items()},
        kinetic_energy=kinetic,
        energy=kinetic + data / noise2,
        iterations=iterations,
        evaluations=evaluations,
        converged=converged,
        message=message,
        seconds=time.perf_counter() - started,
        _trajectory=trajectory,
    )


def _checked_inputs(func: str, template, subject, parameters) -> tuple[dict, dict, dict[int, float]]:
    """The parameters, template and subject checked (same regions), and each region's weight."""
    if not isinstance(parameters, LddmmParameters):
        raise TypeError(f"{func}(): 'parameters' must be LddmmParameters, got {type(parameters).__name__}")
    template = _surfaces_checked(func, "template", template)
    subject = _surfaces_checked(func, "subject", subject)
    if set(template) != set(subject):
        raise ValueError(
            f"{func}(): the template has regions {sorted(template)} but the subject has {sorted(subject)}; "
            "they must be the same"
        )
    weights = {r: 1.0 for r in template}
    if parameters.region_weights:
        weights.update({r: w for r, w in parameters.region_weights.items() if r in weights})
    return template, subject, weights


def _problem(template, subject, weights, parameters: LddmmParameters, dtype) -> tuple[_Problem, torch.Tensor]:
    """The data term's problem (the subject's currents and their norms) and the template's
    vertices of all regions in one array."""
    # template vertices of all regions in one array: one kernel sum flows them all
    offsets, vertices, faces = 0, [], {}
    for region in sorted(template):
        vertices.append(template[region].vertices_mm)
        faces[region] = torch.from_numpy(template[region].faces + offsets)
        offsets += len(template[region].vertices_mm)
    template_vertices = torch.from_numpy(np.concatenate(vertices)).to(dtype)
    subject_currents, subject_norms = {}, {}
    for region in sorted(subject):
        s = subject[region]
        v = torch.from_numpy(s.vertices_mm).to(dtype)
        f = torch.from_numpy(s.faces)
        a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
        centres, normals = (
            ((a + b + c) / 3.0).contiguous(),
            (0.5 * torch.linalg.cross(b - a, c - a)).contiguous(),
        )
        subject_currents[region] = (centres, normals)
        subject_norms[region] = float(
            BilinearFormFunction.apply(centres, normals, centres, normals, parameters.sigma_w_mm, True)
        )
    problem = _Problem(
        template_vertices, faces, subject_currents, subject_norms, weights, parameters.sigma_w_mm
    )
    return problem, template_vertices


def _minimized(func: str, energy_and_gradient, count: int, parameters: LddmmParameters):
    """L-BFGS-B from zero momenta: ``(momenta, iterations, message, converged)``."""
    from scipy.optimize import minimize

    momenta0 = np.zeros(count, dtype=np.float64)
    if parameters.max_iterations > 0:
        solution = minimize(
            energy_and_gradient,
            momenta0,
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": parameters.max_iterations,
                "ftol": parameters.tolerance,
                "gtol": 1e-10,
                "maxcor": 10,
            },
        )
        momenta, iterations, message = solution.x, int(solution.nit), str(solution.message)
        converged = bool(solution.success)
    else:
        momenta, iterations, message, converged = momenta0, 0, "max_iterations is 0", False
    if not np.isfinite(momenta).all():
        raise ValueError(f"{func}(): L-BFGS returned non-finite momenta ({message})")
    return momenta, iterations, message, converged
