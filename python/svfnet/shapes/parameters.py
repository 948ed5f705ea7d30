"""Parameters of LDDMM registration (no torch here: the command line reads the defaults)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LddmmParameters"]


@dataclass(frozen=True)
class LddmmParameters:
    """Parameters of one template-to-subject registration (defaults for the prepared cardiac grid).

    Attributes:
        sigma_v_mm: width σ_V of the deformation kernel: the scale at which the deformation varies.
        sigma_w_mm: width σ_W of the currents kernel: the scale at which surfaces are compared.
        sigma_noise: the currents distance (mm²) counted as noise: the data term is d²/σ_noise².
        control_spacing_mm: spacing of the control point grid (default: σ_V).
        control_margin_mm: how far the grid extends beyond the template's bounding box
            (default: σ_V / 2).
        time_steps: integration steps of the geodesic shooting over t ∈ [0, 1].
        integrator: "rk2" (midpoint) or "euler".
        max_iterations: L-BFGS iterations at most.
        tolerance: stop when the energy changes by less than this fraction of itself.
        region_weights: weight of each region's squared distance (default 1 each).
        dtype: "float32" (fast; kernel sums accumulate in float64) or "float64".
    """

    sigma_v_mm: float = 20.0
    sigma_w_mm: float = 10.0
    sigma_noise: float = 10.0
    control_spacing_mm: float | None = None
    control_margin_mm: float | None = None
    time_steps: int = 10
    integrator: str = "rk2"
    max_iterations: int = 100
    tolerance: float = 1e-6
    region_weights: Mapping[int, float] | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        cls = "LddmmParameters"
        for name in ("sigma_v_mm", "sigma_w_mm", "sigma_noise"):
            value = getattr(self, name)
            # kernel widths: 1/σ² must be a float32; the noise level: σ² must not underflow
            smallest = 1.0 / 3.0e38 if name != "sigma_noise" else 1e-300
            if not _positive(value) or float(value) ** 2 <= smallest:
                raise ValueError(f"{cls}: '{name}' must be positive and finite, got {value!r}")
        for name in ("control_spacing_mm", "control_margin_mm"):
            value = getattr(self, name)
            if value is not None and not (_positive(value) or (name == "control_margin_mm" and value == 0)):
                raise ValueError(f"{cls}: '{name}' must be positive (or None for the default), got {value!r}")
        if isinstance(self.time_steps, bool) or not isinstance(self.time_steps, int) or self.time_steps < 1:
            raise ValueError(f"{cls}: 'time_steps' must be an integer >= 1, got {self.time_steps!r}")
        if self.integrator not in ("rk2", "euler"):
            raise ValueError(f"{cls}: 'integrator' must be 'rk2' or 'euler', got {self.integrator!r}")
        if (
            isinstance(self.max_iterations, bool)
            or not isinstance(self.max_iterations, int)
            or self.max_iterations < 0
        ):
            raise ValueError(f"{cls}: 'max_iterations' must be an integer >= 0, got {self.max_iterations!r}")
        if not (_positive(self.tolerance) or self.tolerance == 0):
            raise ValueError(f"{cls}: 'tolerance' must be >= 0, got {self.tolerance!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{cls}: 'dtype' must be 'float32' or 'float64', got {self.dtype!r}")
        if self.region_weights is not None:
            weights = {int(r): float(w) for r, w in dict(self.region_weights).items()}
            if any(not (math.isfinite(w) and w >= 0) for w in weights.values()):
                raise ValueError(f"{cls}: 'region_weights' must be >= 0, got {self.region_weights!r}")
            object.__setattr__(self, "region_weights", weights)

    @property
    def spacing_mm(self) -> float:
        return float(self.control_spacing_mm or self.sigma_v_mm)

    @property
    def margin_mm(self) -> float:
        return float(self.sigma_v_mm / 2 if self.control_margin_mm is None else self.control_margin_mm)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["region_weights"] is not None:
            out["region_weights"] = {str(r): w for r, w in sorted(out["region_weights"].items())}
        return out


def _positive(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False
