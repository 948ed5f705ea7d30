"""What each method of the evaluation runs with, settled before any work: the checked list of methods,
their parameters (LCC Log-Demons' tuned, default or given ones, the peers'), the record key of each
(a record is redone when its key changes), the SVF-Net model, and the segmentation's ``refine``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from svfnet.baselines.lcc_demons import LCCDemonsParams
from svfnet.baselines.peers import SITK_DEFAULTS, ants_settings, require_ants
from svfnet.baselines.tuning import read_tuned_params, record_path
from svfnet.common.staging import file_digest
from svfnet.evaluation.records import settings_key
from svfnet.evaluation.tables import METHODS
from svfnet.registration.arrays import REFINEMENT, refinement_params
from svfnet.training.model import as_model

__all__ = ["MethodSettings", "checked_methods", "method_settings", "segmentation_refinement"]


def checked_methods(
    methods: Sequence[str],
    include_sitk: bool,
    include_ants: bool,
    include_refinement: bool,
    max_pairs: int | None,
    func: str,
) -> list[str]:
    """The methods to run, in display order (the ``include_*`` peers added), after checking them and
    ``max_pairs``; ImportError for ANTs SyN without antspyx, before any work."""
    methods = list(dict.fromkeys(methods))
    if include_sitk and "sitk_demons" not in methods:
        methods.append("sitk_demons")
    if include_ants and "ants_syn" not in methods:
        methods.append("ants_syn")
    if include_refinement and "svfnet_refined" not in methods:
        methods.append("svfnet_refined")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"{func}(): unknown or no methods {unknown or methods}; known: {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in methods]  # the display order
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1
    ):
        raise ValueError(f"{func}(): 'max_pairs' must be a positive integer, got {max_pairs!r}")
    if "ants_syn" in methods:
        require_ants()  # a missing package is said once, before any work, not once per pair
    return methods


def segmentation_refinement(
    segmentation: bool,
    checkpoint: str | Path | None,
    include_refinement: bool,
    refine_params: Mapping[str, Any] | None,
    func: str,
) -> bool | dict[str, Any]:
    """The ``refine`` argument of the segmentation evaluation (False without ``segmentation``),
    checked before any work."""
    segmentation_refine: bool | dict[str, Any] = False
    if segmentation:
        if checkpoint is None:
            raise ValueError(f"{func}(): 'checkpoint' is needed to evaluate the segmentation")
        if include_refinement:
            segmentation_refine = dict(refine_params) if refine_params else True
        refinement_params(segmentation_refine, f"{func}()")  # bad refine_params: said before any work
    return segmentation_refine


@dataclasses.dataclass
class MethodSettings:
    """What each method runs with: its record key, its parameters, the SVF-Net model (None when
    SVF-Net is not run), the checkpoint (a Path once read) and where LCC Log-Demons' parameters came from."""

    checkpoint: str | Path | None
    keys: dict[str, str]
    params: dict[str, dict[str, Any]]
    model: Any
    demons_source: str


def method_settings(
    workdir: Path,
    checkpoint: str | Path | None,
    methods: Sequence[str],
    *,
    demons_params: Mapping[str, Any] | None,
    sitk_params: Mapping[str, Any] | None,
    ants_params: Mapping[str, Any] | None,
    tuned_demons: bool,
    refine_params: Mapping[str, Any] | None,
    func: str,
) -> MethodSettings:
    """Loads the model and settles every method's parameters and record key (ValueError for bad ones)."""
    keys: dict[str, str] = {}
    params: dict[str, dict[str, Any]] = {}
    model = None
    if "svfnet" in methods or "svfnet_refined" in methods:
        if checkpoint is None:
            raise ValueError(f"{func}(): 'checkpoint' is needed to evaluate SVF-Net")

        checkpoint = Path(checkpoint)
        model = as_model(checkpoint, func="run_evaluation")
        keys["svfnet"] = settings_key("svfnet", {"checkpoint_sha256": file_digest(checkpoint)})
    demons_source = ""
    if "lcc_demons" in methods or "svfnet_refined" in methods:
        tuned = read_tuned_params(workdir) if tuned_demons else None
        demons = {**(tuned or {}), **dict(demons_params or {})}
        demons_source = _demons_source(tuned, demons_params, record_path(workdir), tuned_demons)
        if "lcc_demons" in methods:
            params["lcc_demons"] = _demons_settings(demons)
            keys["lcc_demons"] = settings_key("lcc_demons", params["lcc_demons"])
        if "svfnet_refined" in methods:
            params["svfnet_refined"] = _demons_settings({**demons, **REFINEMENT, **dict(refine_params or {})})
            keys["svfnet_refined"] = settings_key(
                "svfnet_refined", {**params["svfnet_refined"], "checkpoint_sha256": file_digest(checkpoint)}
            )
    if "sitk_demons" in methods:
        unknown_sitk = set(sitk_params or {}) - set(SITK_DEFAULTS)
        if unknown_sitk:
            raise ValueError(
                f"{func}(): unknown 'sitk_params' {sorted(unknown_sitk)}; known: {sorted(SITK_DEFAULTS)}"
            )
        params["sitk_demons"] = {**SITK_DEFAULTS, **dict(sitk_params or {})}
        keys["sitk_demons"] = settings_key("sitk_demons", params["sitk_demons"])
    if "ants_syn" in methods:
        params["ants_syn"] = ants_settings(ants_params)
        keys["ants_syn"] = settings_key("ants_syn", params["ants_syn"])
    if "identity" in methods:
        keys["identity"] = settings_key("identity", {})
    return MethodSettings(checkpoint, keys, params, model, demons_source)


def _demons_settings(demons_params: Mapping[str, Any] | None) -> dict[str, Any]:
    overrides = dict(demons_params or {})
    if isinstance(overrides.get("iterations"), list):
        overrides["iterations"] = tuple(overrides["iterations"])
    try:
        params = dataclasses.replace(LCCDemonsParams(), **overrides).checked()
    except TypeError as error:
        raise ValueError(
            f"run_evaluation(): bad 'demons_params' {dict(demons_params or {})!r}: {error}"
        ) from None
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(params).items()
    }


def _demons_source(
    tuned: Mapping[str, Any] | None,
    explicit: Mapping[str, Any] | None,
    record: Path,
    tuned_demons: bool,
) -> str:
    """Where LCC Log-Demons' parameters came from, in one sentence for the report."""
    if tuned is not None:
        source = f"tuned on this cohort's training pairs ({record.name}, `svfnet demons --tune`)"
    elif not tuned_demons:
        source = "the defaults (tuning not used: tuned_demons=False / --demons-defaults)"
    elif record.is_file():
        source = (
            f"the defaults ({record.name} is stale or selected nothing: run `svfnet demons --tune` again)"
        )
    else:
        source = (
            "the defaults, tuned on the synthetic cohort (no `svfnet demons --tune` record for this folder)"
        )
    if explicit:
        source += f"; given explicitly: {', '.join(sorted(explicit))}"
    return source
