"""Synthetic registration pairs for the LCC Log-Demons tests, benchmark and tuning script.

Subjects come from the built-in synthetic cohort (:mod:`svfnet.data.synthetic`), prepared onto the
common 64×64×16 grid exactly as ``svfnet synth`` + ``svfnet prepare`` would. Two kinds of pairs:

- inter-subject pairs (moving subject ``i``, fixed subject ``j``), the evaluation's use case;
- a subject and a copy of it deformed by a known smooth SVF (:func:`known_svf`), whose
  registration has a known answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from svfnet.common.workdir import PreparedSubject
from svfnet.ops import fields


def prepared_subjects(folder: str | Path, n_subjects: int, seed: int) -> list[PreparedSubject]:
    """Subjects ``0 .. n_subjects - 1`` of the synthetic cohort ``seed``, prepared on 64×64×16.

    Writes the dataset and the work folder under ``folder`` (about 0.3 s a subject).
    """
    from svfnet.common.workdir import read_all_prepared
    from svfnet.data import read_dataset, run_prepare, write_synthetic_dataset

    folder = Path(folder)
    write_synthetic_dataset(folder / "dataset", n_subjects, seed, outlier_fraction=0.0, progress=False)
    run_prepare(folder / "work", read_dataset(folder / "dataset"), progress=False)
    return read_all_prepared(folder / "work")


def known_svf(
    rng: np.random.Generator,
    labels: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    amplitude_vox: float = 7.0,
    sigma_mm: float = 15.0,
    window_mm: float = 30.0,
) -> np.ndarray:
    """A smooth random SVF ``(3, I, J, K)`` in voxels that deforms the heart of ``labels``.

    Gaussian-smoothed white noise (``sigma_mm``, periodic borders so that the edges are not
    special), weighted by an in-plane Gaussian window of ``window_mm`` around the heart's centre,
    scaled so that its largest in-plane norm over the heart is ``amplitude_vox``; the
    through-plane component is 0.3× as large in mm.
    """
    grid = labels.shape
    noise = rng.standard_normal((3, *grid))
    field = gaussian_filter(noise, (0, *(sigma_mm / s for s in spacing_mm)), mode="wrap")
    heart = labels > 0
    centre = np.array(np.nonzero(heart), dtype=np.float64).mean(axis=1)
    offsets = np.indices(grid, dtype=np.float64) - centre[:, None, None, None]
    in_plane_r2 = (offsets[0] * spacing_mm[0]) ** 2 + (offsets[1] * spacing_mm[1]) ** 2
    field *= np.exp(-in_plane_r2 / (2.0 * window_mm**2))
    field[2] *= 0.3 * spacing_mm[0] / spacing_mm[2]
    field *= amplitude_vox / np.sqrt((field[:2, heart] ** 2).sum(axis=0)).max()
    return field.astype(np.float32)


def deformed_copy(subject: PreparedSubject, svf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``subject``'s image and labels warped by ``exp(svf)``: the moving side of a known pair."""
    disp = fields.exp(svf)
    return np.asarray(fields.warp(subject.image, disp)), np.asarray(fields.warp_labels(subject.labels, disp))
