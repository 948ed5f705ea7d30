"""Shapes: surfaces from label maps, currents, and LDDMM registration of a template to subjects.

Submodules load on first use: :mod:`svfnet.shapes.surfaces`, :mod:`svfnet.shapes.currents`,
:mod:`svfnet.shapes.lddmm`, :mod:`svfnet.shapes.stage` (the ``svfnet shapes`` stage).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "LddmmParameters",
    "LddmmResult",
    "Surface",
    "currents_distance",
    "currents_inner",
    "load_surfaces",
    "register_surfaces",
    "run_shapes",
    "save_surfaces",
    "surfaces_from_labels",
    "triangle_centres_normals",
]

_WHERE = {
    "Surface": "surfaces",
    "surfaces_from_labels": "surfaces",
    "save_surfaces": "surfaces",
    "load_surfaces": "surfaces",
    "currents_distance": "currents",
    "currents_inner": "currents",
    "triangle_centres_normals": "currents",
    "LddmmParameters": "parameters",
    "LddmmResult": "lddmm",
    "register_surfaces": "lddmm",
    "run_shapes": "stage",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"svfnet.shapes.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'svfnet.shapes' has no attribute {name!r}")
