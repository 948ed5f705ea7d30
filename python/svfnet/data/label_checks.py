"""Checks of a subject's label map that do not stop preparation but deserve a look (reported by
``svfnet prepare`` and ``svfnet inspect``): unmapped values, RV without LV, labels at the field of
view's edge, an LV blood pool not ringed by myocardium."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from svfnet.data.readers import Subject

__all__ = ["label_warnings"]

# LV blood-pool border touching background (a fraction), above which a warning is raised
_ENCLOSURE_WARNING = 0.2


def label_warnings(subject: Subject) -> list[str]:
    """Checks of a subject's labels that do not stop preparation but deserve a look."""
    warnings: list[str] = []
    labels = subject.labels
    if subject.unmapped_values:
        warnings.append(
            f"label values {list(subject.unmapped_values)} are not in the mapping and became background"
        )
    if subject.regions & {3, 4} and 1 not in subject.regions:
        warnings.append(
            "RV labels but no LV blood pool: is the label mapping right? (ACDC-style labels need "
            "--labels acdc)"
        )
    labelled_slices = np.flatnonzero(labels.any(axis=(0, 1)))
    if labelled_slices[0] == 0 or labelled_slices[-1] == labels.shape[2] - 1:
        warnings.append("labels reach the first or last slice: the heart may extend beyond the field of view")
    # the LV blood pool should be ringed by myocardium in every slice that has both
    touching, border_total = 0, 0
    cross = np.zeros((3, 3, 1), dtype=bool)
    cross[1, :, 0] = cross[:, 1, 0] = True
    blood = labels == 1
    for k in np.flatnonzero(blood.any(axis=(0, 1)) & (labels == 2).any(axis=(0, 1))):
        ring = binary_dilation(blood[:, :, k : k + 1], structure=cross) & ~blood[:, :, k : k + 1]
        touching += int(np.count_nonzero(labels[:, :, k : k + 1][ring] == 0))
        border_total += int(np.count_nonzero(ring))
    if border_total and touching / border_total > _ENCLOSURE_WARNING:
        warnings.append(
            f"the LV blood pool touches background on {100 * touching / border_total:.0f}% of its border "
            "where the myocardium is labelled: the myocardium may be misplaced"
        )
    return warnings
