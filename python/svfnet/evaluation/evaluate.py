"""The experiment of the paper: SVF-Net against LCC Log-Demons and the identity, on every test pair.

``run_evaluation(workdir, checkpoint)`` registers every ordered pair ``(moving, fixed)`` of the work
folder's test subjects (``split.json``; the validation subjects when there are none, which the
report then says) with each method, scores every pair and region with
:func:`svfnet.evaluation.metrics.evaluate_pair`, and writes into ``WORKDIR/evaluation/``:

- ``records/<method>/<moving>__<fixed>.json``: one file per pair and method, written atomically as
  soon as the pair is done: an interrupted run resumes at the first missing one, and a finished
  one is skipped on a re-run unless the method's settings changed (another checkpoint, other
  demons parameters). Records of failed pairs are retried.
- ``pairs.csv``: one row per pair × method × region (the four regions and the whole grid): every
  metric, the region's status, the method's wall time and its threads.
- ``summary.csv``: per method, region and metric: count, mean, standard deviation, median,
  quartiles, extremes (and ``seconds`` per registration).
- ``statistics.csv``: SVF-Net against each other method, per region and metric: the fraction of
  pairs where SVF-Net is better, equal, worse (in the metric's direction: higher Dice and LCC are
  better, lower distances, log-Jacobian spread and folding are better), and Welch's t-test.
- ``outliers.csv``: pairs where a method failed badly (raised, lost a region, fell below the
  identity's Dice, folded), and pairs whose inputs lack a region.
- ``report.html`` and ``figures/*.png`` (:mod:`svfnet.evaluation.report`); ``evaluation.json``,
  what :func:`run_evaluation` returns.

SVF-Net and the identity run in this process (one forward pass each: fast); LCC Log-Demons and the
optional peers (SimpleITK's demons, ANTs SyN) run as tasks of :func:`svfnet.common.parallel.run_tasks` (local
processes or a Dask cluster), after SVF-Net so that the timings do not compete for the cores.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.baselines.peers import SITK_DEFAULTS, ants_settings, require_ants
from svfnet.common.atomic import write_json
from svfnet.common.workdir import REGIONS, WorkDir
from svfnet.evaluation.gallery import gallery_entries
from svfnet.evaluation.records import Records, error_text, file_digest, settings_key, subject_digest
from svfnet.evaluation.tables import (
    METHOD_NAMES,
    METHODS,
    OUTLIER_COLUMNS,
    PAIR_COLUMNS,
    STATISTICS_COLUMNS,
    SUMMARY_COLUMNS,
    headline_lines,
    outlier_rows,
    pair_rows,
    statistics_rows,
    summary_rows,
    write_csv,
)
from svfnet.evaluation.tasks import TASK_METHODS, run_as_tasks, run_in_process

__all__ = ["run_evaluation"]

logger = logging.getLogger(__name__)


def _evaluation_subjects(workdir: Path) -> tuple[list[str], str]:
    """The subjects to evaluate on and which part of the split they are ("test" or "val")."""
    from svfnet.data.split import subject_split

    split = subject_split(workdir)
    if split.test:
        return sorted(split.test), "test"
    if split.val:
        logger.warning(
            "%s has no test subjects: evaluating on the %d validation subjects instead",
            workdir / "split.json",
            len(split.val),
        )
        return sorted(split.val), "val"
    raise ValueError(
        f"{workdir / 'split.json'} has neither test nor validation subjects: nothing to evaluate "
        "(remove it to re-split with test subjects)"
    )


def ordered_pairs(subjects: Sequence[str], max_pairs: int | None) -> list[tuple[str, str]]:
    """All ordered pairs of distinct subjects; at most ``max_pairs`` of them, evenly spread."""
    pairs = [(moving, fixed) for moving in subjects for fixed in subjects if moving != fixed]
    if max_pairs is not None and max_pairs < len(pairs):
        # evenly spread over the list, so that every moving subject still appears
        chosen = np.unique(np.round(np.linspace(0, len(pairs) - 1, max_pairs)).astype(int))
        pairs = [pairs[i] for i in chosen]
    return pairs


def _grid_problem(moving: Any, fixed: Any) -> str | None:
    """Why two prepared subjects cannot be compared voxel to voxel, or None."""
    if moving.image.shape != fixed.image.shape:
        return (
            f"different grids: {moving.id} is {'x'.join(map(str, moving.image.shape))}, "
            f"{fixed.id} is {'x'.join(map(str, fixed.image.shape))}"
        )
    if not np.allclose(moving.spacing_mm, fixed.spacing_mm, rtol=0.0, atol=1e-3):
        return (
            f"different voxel sizes: {moving.id} {tuple(moving.spacing_mm)} mm, "
            f"{fixed.id} {tuple(fixed.spacing_mm)} mm"
        )
    return None


def _demons_settings(demons_params: Mapping[str, Any] | None) -> dict[str, Any]:
    from svfnet.baselines.lcc_demons import LCCDemonsParams

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


# ------------------------------------------------------------------------------------------ the run
def run_evaluation(
    workdir: str | Path,
    checkpoint: str | Path | None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    methods: Sequence[str] = ("svfnet", "lcc_demons", "identity"),
    include_sitk: bool = False,
    include_ants: bool = False,
    include_refinement: bool = False,
    max_pairs: int | None = None,
    demons_params: Mapping[str, Any] | None = None,
    sitk_params: Mapping[str, Any] | None = None,
    ants_params: Mapping[str, Any] | None = None,
    tuned_demons: bool = True,
    refine_params: Mapping[str, Any] | None = None,
    report: bool = True,
    segmentation: bool = False,
) -> dict[str, Any]:
    """Runs the experiment on the work folder's test pairs and writes its tables and report.

    Args:
        workdir: the work folder (prepared subjects and ``split.json``, created if missing).
        checkpoint: SVF-Net checkpoint (``svfnet train``'s ``checkpoint.pt``); may be None only
            when ``"svfnet"`` is not among ``methods``.
        workers: local processes for the optimisation methods (default: one per core).
        scheduler: address of a Dask scheduler to run them on instead.
        progress: show progress bars.
        methods: among ``"svfnet"``, ``"lcc_demons"``, ``"identity"``, ``"sitk_demons"``, ``"ants_syn"``.
        include_sitk: add SimpleITK's diffeomorphic demons as a peer.
        include_ants: add ANTs SyN with cross-correlation as a peer (needs antspyx: the optional
            extra ``svfnet[ants]``; tens of seconds a pair).
        include_refinement: add "SVF-Net + refinement": LCC Log-Demons started from SVF-Net's SVF
            (:func:`svfnet.registration.arrays.register` with ``refine``), with LCC Log-Demons' parameters
            of this run and the levels and iterations of
            :data:`svfnet.registration.arrays.REFINEMENT` (``refine_params`` replacing some).
        max_pairs: evaluate at most this many pairs, evenly spread over all ordered pairs.
        demons_params: fields of :class:`svfnet.baselines.lcc_demons.LCCDemonsParams` replacing
            the defaults (e.g. ``{"levels": 1, "iterations": 5}``) and those tuned on the cohort.
        tuned_demons: run LCC Log-Demons with the parameters ``svfnet demons --tune`` selected on
            this folder's training pairs (:func:`svfnet.baselines.tuning.read_tuned_params`) where
            a current record exists, as the paper tuned its baseline; False: the defaults. The
            report and ``evaluation.json`` say which (``demons_params_source``).
        sitk_params: ``iterations`` and ``smoothing_sigma_vox`` of SimpleITK's demons.
        ants_params: keys of :data:`ANTS_DEFAULTS` replacing those defaults (see :func:`ants_syn`).
        refine_params: fields of ``LCCDemonsParams`` for the refinement (e.g. ``{"iterations": (5, 10)}``).
        report: write ``report.html`` and its figures.
        segmentation: also segment every test subject from the training atlases and score it
            (:func:`svfnet.segmentation.evaluation.evaluate_segmentation`; with
            ``include_refinement`` the methods after refinement too, ``refine_params`` updating
            :data:`svfnet.registration.arrays.REFINEMENT`): files in ``evaluation/segmentation/``, a
            section of the report.

    Returns:
        A JSON-ready dict: ``report`` (path of the HTML page, or ``""`` without report),
        ``headline`` (printable lines: mean Dice per region and method, median time per
        registration), ``folder``, ``subjects``, ``subject_set`` (``"test"``, or ``"val"`` when the
        split has no test subjects), ``pairs``, ``methods``, ``computed`` (pairs run now per
        method; the rest were on disk), ``failed`` (pair × method failures), ``outliers``,
        ``files`` and, with ``segmentation``, ``segmentation`` (its summary, with ``headline``).

    Raises:
        ValueError: unknown methods, bad parameters, fewer than two subjects to pair, a
            checkpoint that is not an SVF-Net one (or has non-finite weights), or a model trained on
            another grid or voxel size than the work folder's subjects.
        FileNotFoundError: no prepared subjects, or no checkpoint.
        ImportError: ANTs SyN asked for without antspyx installed (before any work).
    """
    func = "run_evaluation"
    workdir = Path(workdir)
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
    segmentation_refine: bool | dict[str, Any] = False
    if segmentation:
        from svfnet.registration.arrays import refinement_params

        if checkpoint is None:
            raise ValueError(f"{func}(): 'checkpoint' is needed to evaluate the segmentation")
        if include_refinement:
            segmentation_refine = dict(refine_params) if refine_params else True
        refinement_params(segmentation_refine, f"{func}()")  # bad refine_params: said before any work

    keys: dict[str, str] = {}
    params: dict[str, dict[str, Any]] = {}
    model = None
    if "svfnet" in methods or "svfnet_refined" in methods:
        if checkpoint is None:
            raise ValueError(f"{func}(): 'checkpoint' is needed to evaluate SVF-Net")
        from svfnet.training.model import as_model

        checkpoint = Path(checkpoint)
        model = as_model(checkpoint, func="run_evaluation")
        keys["svfnet"] = settings_key("svfnet", {"checkpoint_sha256": file_digest(checkpoint)})
    demons_source = ""
    if "lcc_demons" in methods or "svfnet_refined" in methods:
        from svfnet.baselines.tuning import read_tuned_params, record_path
        from svfnet.registration.arrays import REFINEMENT

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

    subject_ids, subject_set = _evaluation_subjects(workdir)
    if len(subject_ids) < 2:
        raise ValueError(
            f"{func}(): the {subject_set} set has {len(subject_ids)} subject(s): at least 2 are needed "
            "for a pair"
        )
    pairs = ordered_pairs(subject_ids, max_pairs)
    folder = WorkDir(workdir).evaluation
    folder.mkdir(parents=True, exist_ok=True)
    subjects, unreadable = _read_subjects(workdir, subject_ids)
    if model is not None:
        _check_model_grid(checkpoint, model, subjects)
    digests = {
        subject_id: subject_digest(subjects[subject_id]) if subject_id in subjects else "unreadable"
        for subject_id in subject_ids
    }
    records = Records(folder, lambda moving_id, fixed_id: f"{digests[moving_id]}-{digests[fixed_id]}")

    computed = {method: 0 for method in methods}
    pending = {method: [p for p in pairs if not records.done(method, *p, keys[method])] for method in methods}
    for method in methods:
        logger.info("%s: %d of %d pairs to compute", METHOD_NAMES[method], len(pending[method]), len(pairs))

    def problem_of(moving_id: str, fixed_id: str) -> str | None:
        for subject_id in (moving_id, fixed_id):
            if subject_id in unreadable:
                return f"cannot read subject {subject_id}: {unreadable[subject_id]}"
        return _grid_problem(subjects[moving_id], subjects[fixed_id])

    # in this process first (fast), then the optimisation methods in parallel: no competing timings
    for method in (m for m in methods if m not in TASK_METHODS):
        computed[method] = run_in_process(
            method, pending[method], subjects, problem_of, records, keys[method], model, progress
        )
    task_pairs = [(method, pair) for method in methods if method in TASK_METHODS for pair in pending[method]]
    computed_tasks = run_as_tasks(
        task_pairs,
        subjects,
        problem_of,
        records,
        keys,
        params,
        model,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    for method, count in computed_tasks.items():
        computed[method] = count

    regions = dict(REGIONS)
    rows = pair_rows(records, pairs, methods, regions)
    summary = summary_rows(rows, methods)
    statistics = statistics_rows(rows, methods)
    outliers = outlier_rows(rows, methods)
    files = {
        "pairs": folder / "pairs.csv",
        "summary": folder / "summary.csv",
        "statistics": folder / "statistics.csv",
        "outliers": folder / "outliers.csv",
    }
    write_csv(files["pairs"], PAIR_COLUMNS, rows)
    write_csv(files["summary"], SUMMARY_COLUMNS, summary)
    write_csv(files["statistics"], STATISTICS_COLUMNS, statistics)
    write_csv(files["outliers"], OUTLIER_COLUMNS, outliers)

    failed = len({(r["moving"], r["fixed"], r["method"]) for r in rows if r["status"] == "failed"})
    headline = headline_lines(summary, methods, len(pairs), subject_set)
    segmented = None
    if segmentation:
        from svfnet.segmentation.evaluation import evaluate_segmentation
        from svfnet.segmentation.evaluation_report import report_section

        segmented = evaluate_segmentation(
            workdir, checkpoint, model=model, refine=segmentation_refine, progress=progress
        )
    report_path = ""
    if report:
        from svfnet.evaluation.report import ReportInputs, write_report

        gallery = gallery_entries(
            rows,
            methods,
            subjects,
            problem_of,
            folder,
            keys,
            params,
            model,
            inputs_of=records.inputs_of,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
        )
        report_path = str(
            write_report(
                folder,
                ReportInputs(
                    workdir=str(workdir),
                    checkpoint=str(checkpoint) if "svfnet" in methods else "",
                    training=_training_summary(checkpoint) if "svfnet" in methods else "",
                    subject_set=subject_set,
                    subjects=tuple(subject_ids),
                    pair_count=len(pairs),
                    methods=tuple(methods),
                    rows=rows,
                    summary=summary,
                    statistics=statistics,
                    outliers=outliers,
                    gallery=gallery,
                    headline=tuple(headline) + (tuple(segmented.headline) if segmented else ()),
                    method_params=params,
                    method_sources={
                        m: demons_source for m in ("lcc_demons", "svfnet_refined") if m in params
                    },
                    failed=failed,
                    sections=(functools.partial(report_section, segmented),) if segmented else (),
                ),
            )
        )
    result = {
        "report": report_path,
        "headline": headline,
        "folder": str(folder),
        "subjects": list(subject_ids),
        "subject_set": subject_set,
        "pairs": len(pairs),
        "methods": list(methods),
        "computed": computed,
        "failed": failed,
        "outliers": len(outliers),
        "demons_params_source": demons_source,
        "files": {name: str(path) for name, path in files.items()},
    }
    if segmented is not None:
        result["segmentation"] = segmented.json_ready()
    write_json(folder / "evaluation.json", result)
    return result


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


def _training_summary(checkpoint: Path) -> str:
    """How the checkpoint's model was trained (its recipe, steps, augmentation), or "" where it does not say."""
    from svfnet.training.model import read_checkpoint
    from svfnet.training.train_config import TrainConfig

    saved = read_checkpoint(checkpoint).get("train_config")
    if not isinstance(saved, dict):
        return ""
    try:
        return TrainConfig.from_dict(saved).summary()
    except (TypeError, ValueError):  # written by another version: say nothing rather than guess
        return ""


def _check_model_grid(checkpoint: Path, model: Any, subjects: Mapping[str, Any]) -> None:
    """ValueError when the work folder's subjects are not on the grid and voxel size the model was
    trained on: the network would see the anatomy at another scale than it learnt, and the
    experiment would measure that, not the method."""
    for subject in subjects.values():
        grid, spacing = tuple(subject.image.shape), tuple(float(s) for s in subject.spacing_mm)
        trained_grid, trained_spacing = tuple(model.config.grid), tuple(model.config.spacing_mm)
        if grid != trained_grid or not np.allclose(spacing, trained_spacing, rtol=1e-3, atol=0):
            raise ValueError(
                f"{checkpoint} was trained on a {'x'.join(map(str, trained_grid))} grid at "
                f"{' x '.join(f'{s:g}' for s in trained_spacing)} mm, the work folder's subjects are "
                f"{'x'.join(map(str, grid))} at {' x '.join(f'{s:.4g}' for s in spacing)} mm ({subject.id}): evaluate "
                "a model trained on this folder, or prepare the folder on the model's grid (svfnet prepare --shape "
                "... --spacing ...)"
            )
        return


def _read_subjects(workdir: Path, subject_ids: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The prepared subjects that load, and the error of each that does not."""
    from svfnet.common.workdir import read_prepared

    subjects, unreadable = {}, {}
    for subject_id in subject_ids:
        try:
            subjects[subject_id] = read_prepared(workdir, subject_id)
        except Exception as error:  # a broken file fails its pairs, not the run
            unreadable[subject_id] = error_text(error)
            logger.warning("cannot read subject %s: %s", subject_id, unreadable[subject_id])
    return subjects, unreadable
