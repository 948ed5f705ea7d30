"""Refining multi-atlas segmentation's registrations (``svfnet segment --refine``).

Each atlas's SVF-Net SVF (:func:`svfnet.segmentation.atlas_registration.register_atlases`) becomes the starting velocity
of LCC Log-Demons (:func:`svfnet.baselines.lcc_demons.register` with ``initial_svf``), with the
parameters of :func:`svfnet.registration.arrays.register`'s refinement (:data:`svfnet.registration.arrays.REFINEMENT`
over the demons' defaults, or a mapping of :class:`~svfnet.baselines.lcc_demons.LCCDemonsParams`
fields, checked by :func:`svfnet.registration.arrays.refinement_params`). The refined SVFs are exponentiated
and the atlases' images and labels warped again (:func:`svfnet.segmentation.atlas_registration.warped_probabilities`),
so that fusion, uncertainty and volumes follow as without refinement. The demons run on the CPU,
one atlas after another (their smoothing uses the process's threads).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from svfnet.baselines import lcc_demons
from svfnet.ops import fields
from svfnet.segmentation.atlas_registration import AtlasRegistrations, warped_probabilities

__all__ = ["refine_registrations"]


def refine_registrations(
    registrations: Any,
    target: np.ndarray,
    atlases: Any,
    overrides: Mapping[str, Any],
    *,
    progress: bool = False,
) -> tuple[Any, float]:
    """Refines every atlas's registration to ``target`` by LCC Log-Demons started from its SVF.

    Args:
        registrations: :class:`svfnet.segmentation.atlas_registration.AtlasRegistrations` of ``atlases`` (same order).
        target: ``(I, J, K)`` the prepared image (fixed).
        atlases: the :class:`svfnet.segmentation.atlases.AtlasSet` registered (moving images; its grid's
            voxel size is the demons' spacing).
        overrides: LCC Log-Demons' parameters, as :func:`svfnet.registration.arrays.refinement_params`
            returns them (checked there).
        progress: a tqdm bar over the atlases.

    Returns:
        The refined :class:`~svfnet.segmentation.atlas_registration.AtlasRegistrations` (its ``seconds`` include the
        network's and the refinement's), and the refinement's seconds.

    Raises:
        ValueError: ``registrations`` and ``atlases`` disagree in count or grid.
    """
    from tqdm.auto import tqdm

    svfs = np.asarray(registrations.svfs, np.float32)
    target = np.ascontiguousarray(target, np.float32)
    if svfs.shape[0] != len(atlases) or svfs.shape[1:] != (3, *target.shape):
        raise ValueError(
            f"refine_registrations(): {svfs.shape[0]} SVFs of shape {svfs.shape[1:]} for {len(atlases)} "
            f"atlases and a target of shape {target.shape}"
        )
    started = time.perf_counter()
    spacing = tuple(float(s) for s in atlases.grid.spacing_mm)
    params = dict(overrides)
    if isinstance(params.get("iterations"), list):
        params["iterations"] = tuple(params["iterations"])
    refined = np.empty_like(svfs)
    for index, atlas in enumerate(
        tqdm(atlases.atlases, desc="refining atlases", unit="atlas", disable=not progress, leave=False)
    ):
        refined[index] = lcc_demons.register(
            atlas.image, target, spacing=spacing, initial_svf=svfs[index], **params
        )
    displacements = np.stack([np.asarray(fields.exp(v), np.float32) for v in refined])
    images, probabilities = warped_probabilities(atlases, displacements)
    seconds = time.perf_counter() - started
    return (
        AtlasRegistrations(refined, displacements, images, probabilities, registrations.seconds + seconds),
        seconds,
    )
