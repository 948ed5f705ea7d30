"""Data: the built-in synthetic cohort, dataset readers, and preparation onto the common grid.

- :mod:`svfnet.data.synthetic`: ``write_synthetic_dataset`` / ``generate_subject`` (``svfnet synth``).
- :mod:`svfnet.data.readers`: ``read_dataset`` for the plain, nnU-Net/Decathlon and ACDC layouts,
  ``load_subject``.
- :mod:`svfnet.data.labels`: label mappings (``parse_label_mapping``, ``ACDC_LABELS``...).
- :mod:`svfnet.data.prepare`: ``run_prepare`` (``svfnet prepare``): rigid alignment from the
  labels, crop, resampling onto the common grid, intensity normalisation.
- :mod:`svfnet.data.transform`: the recorded transform, and mapping results back to the
  original images (``read_transform``, ``to_original``, ``original_positions``).
- :mod:`svfnet.data.nifti`: checked NIfTI reading (geometry as ITK reads it) and atomic writing.
- :mod:`svfnet.data.inspect`: ``inspect_dataset`` (``svfnet inspect``): what a dataset holds.

See docs/data.md. Submodules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Dataset": "readers",
    "Subject": "readers",
    "SubjectFiles": "readers",
    "read_dataset": "readers",
    "detect_layout": "readers",
    "load_subject": "readers",
    "parse_label_mapping": "labels",
    "ACDC_LABELS": "labels",
    "IDENTITY_LABELS": "labels",
    "run_prepare": "prepare",
    "canonical_frame": "prepare",
    "PreparedTransform": "transform",
    "read_transform": "transform",
    "to_original": "transform",
    "original_positions": "transform",
    "generate_subject": "synthetic",
    "write_synthetic_dataset": "synthetic",
    "read_nifti": "nifti",
    "read_geometry": "nifti",
    "HeaderWarning": "nifti",
    "inspect_dataset": "inspect",
    "write_nifti": "nifti",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"svfnet.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'svfnet.data' has no attribute {name!r}")
