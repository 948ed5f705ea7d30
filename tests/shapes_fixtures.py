"""Small synthetic hearts and prepared work folders for the shapes tests.

``write_prepared`` writes the prepared layout of svfnet.common.workdir directly with nibabel (affine
``diag(spacing)``, ``prepared/subjects.json``); it stands in for the data stage's writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (48, 48, 12)
SPACING = (2.0, 2.0, 8.0)


def heart_labels(
    shape: tuple[int, int, int] = SHAPE,
    spacing: tuple[float, float, float] = SPACING,
    *,
    to_template=None,
    lv_radii_mm: tuple[float, float, float] = (16.0, 13.0, 30.0),
    wall_mm: float = 7.0,
    with_rv: bool = True,
) -> np.ndarray:
    """A label map of an LV (ellipsoidal blood pool 1 in a myocardium shell 2) and an RV (blood pool
    3 in a thin wall 4) beside it. ``to_template`` maps subject positions (P, 3) in mm to the
    template's, so that the subject is the template deformed by its inverse."""
    positions = np.indices(shape).reshape(3, -1).T * np.asarray(spacing, dtype=np.float64)
    if to_template is not None:
        positions = to_template(positions)
    centre = np.asarray(shape) * np.asarray(spacing) / 2
    radii = np.asarray(lv_radii_mm)

    def inside(c, r):
        return (((positions - c) / r) ** 2).sum(axis=1) < 1

    labels = np.zeros(len(positions), dtype=np.uint8)
    if with_rv:
        rv_centre, rv_radii = centre + np.array([-17.0, 4.0, -3.0]), np.array([12.0, 21.0, 26.0])
        labels[inside(rv_centre, rv_radii + 3.0)] = 4
        labels[inside(rv_centre, rv_radii)] = 3
    labels[inside(centre, radii + wall_mm)] = 2
    labels[inside(centre, radii)] = 1
    return labels.reshape(shape)


def affine_bend(matrix, shift_mm, bend_mm: float, centre_mm):
    """φ(x) = c + A (x - c) + t + (bend·sin((x_k - c_k)/25 mm), 0, 0) and its inverse (fixed point)."""
    matrix, shift, centre = (
        np.asarray(matrix, float),
        np.asarray(shift_mm, float),
        np.asarray(centre_mm, float),
    )
    inverse_matrix = np.linalg.inv(matrix)

    def forward(x):
        y = centre + (x - centre) @ matrix.T + shift
        y[:, 0] += bend_mm * np.sin((x[:, 2] - centre[2]) / 25.0)
        return y

    def inverse(y):
        x = np.array(y, dtype=float)
        for _ in range(40):
            z = np.array(y, dtype=float)
            z[:, 0] -= bend_mm * np.sin((x[:, 2] - centre[2]) / 25.0)
            x = centre + (z - centre - shift) @ inverse_matrix.T
        return x

    return forward, inverse


def write_prepared(root: Path, subjects: dict[str, np.ndarray], spacing=SPACING) -> Path:
    """Writes ``root/prepared`` for label maps ``{id: labels}`` (images are the labels as float)."""
    prepared = root / "prepared"
    for folder in ("images", "labels"):
        (prepared / folder).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    for subject, labels in subjects.items():
        nib.save(
            nib.Nifti1Image(labels.astype(np.float32), affine), prepared / "images" / f"{subject}.nii.gz"
        )
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), prepared / "labels" / f"{subject}.nii.gz")
    record = {
        "subjects": [{"id": s} for s in subjects],
        "shape": list(next(iter(subjects.values())).shape),
        "spacing_mm": list(spacing),
    }
    (prepared / "subjects.json").write_text(json.dumps(record))
    return root


def small_cohort(root: Path, count: int = 4) -> Path:
    """A prepared cohort of ``count`` hearts that differ by size, position and a bend."""
    centre = np.asarray(SHAPE) * np.asarray(SPACING) / 2
    subjects = {}
    for n in range(count):
        scale = 1.0 + 0.04 * ((n % 3) - 1)
        _, inverse = affine_bend(
            np.diag([scale, 2 - scale, 1.0]), [1.5 * n - 2, 1.0 - n, 2.0 * (n % 2)], 1.0 * n, centre
        )
        subjects[f"case{n:02d}"] = heart_labels(to_template=inverse)
    return write_prepared(root, subjects)
