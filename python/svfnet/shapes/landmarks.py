"""The shapes stage's files: each subject's landmarks file (``WORKDIR/shapes/landmarks/<id>.npz``),
surfaces stored as npz arrays, and the digest of a prepared subject's inputs that each file records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import atomic_path
from svfnet.common.workdir import WorkDir
from svfnet.shapes.surfaces import Surface

__all__ = [
    "inputs_digest",
    "read_landmarks",
    "stored_inputs",
    "surfaces_arrays",
    "surfaces_from_arrays",
    "write_landmarks",
]


def surfaces_arrays(surfaces: dict[int, Surface]) -> dict[str, np.ndarray]:
    """Surfaces as npz arrays: ``regions``, ``vertices_mm_<r>`` and ``faces_<r>``."""
    out = {"regions": np.array(sorted(surfaces), dtype=np.int64)}
    for region, surface in surfaces.items():
        out[f"vertices_mm_{region}"] = surface.vertices_mm
        out[f"faces_{region}"] = surface.faces
    return out


def surfaces_from_arrays(arrays: Any) -> dict[int, Surface]:
    """The surfaces :func:`surfaces_arrays` stored."""
    return {
        int(r): Surface(arrays[f"vertices_mm_{int(r)}"], arrays[f"faces_{int(r)}"]) for r in arrays["regions"]
    }


def read_landmarks(workdir: str | Path, subject: str) -> dict[str, Any]:
    """The stage's result for one subject: ``landmarks_mm`` ``(K, 3)`` and its residuals."""
    path = WorkDir(workdir).shapes / "landmarks" / f"{subject}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `svfnet shapes` for this work folder first")
    with np.load(path) as data:
        out = {key: data[key] for key in data.files}
    out["summary"] = json.loads(str(out["summary"]))
    return out


def write_landmarks(
    path: Path, landmarks_mm: np.ndarray, summary: dict[str, Any], extra: dict[str, np.ndarray]
) -> None:
    """Writes one subject's landmarks file (atomically): ``landmarks_mm``, its ``summary`` (JSON) and ``extra``."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                landmarks_mm=landmarks_mm,
                summary=np.array(json.dumps(summary, sort_keys=True)),
                **extra,
            )


def inputs_digest(prepared: Any) -> str:
    """What the stage reads of a prepared subject: its labels and voxel size (a digest)."""
    import hashlib

    labels = np.ascontiguousarray(prepared.labels, dtype=np.uint8)
    digest = hashlib.sha256(f"{labels.shape}{[float(np.float32(s)) for s in prepared.spacing_mm]}".encode())
    digest.update(labels.tobytes())
    return digest.hexdigest()[:16]


def stored_inputs(path: Path) -> str | None:
    """The inputs digest a landmarks file was computed from (None: none recorded, or unreadable)."""
    try:
        with np.load(path) as data:
            return str(data["inputs"]) if "inputs" in data.files else None
    except (OSError, ValueError, KeyError):
        return None
