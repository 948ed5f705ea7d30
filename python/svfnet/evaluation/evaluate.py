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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svfnet.common.atomic import write_json
from svfnet.common.workdir import REGIONS, WorkDir, read_prepared
from svfnet.data.split import subject_split
from svfnet.evaluation.gallery import gallery_entries
from svfnet.evaluation.method_settings import (
    MethodSettings,
    checked_methods,
    method_settings,
    segmentation_refinement,
)
from svfnet.evaluation.records import Records, error_text, subject_digest
from svfnet.evaluation.report import ReportInputs, write_report
from svfnet.evaluation.tables import (
    METHOD_NAMES,
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
from svfnet.segmentation.evaluation import evaluate_segmentation
from svfnet.segmentation.evaluation_report import report_section
from svfnet.training.model import read_checkpoint
from svfnet.training.train_config import TrainConfig

__all__ = ["run_evaluation"]

logger = logging.getLogger(__name__)


def _evaluation_subjects(workdir: Path) -> tuple[list[str], str]:
    """The subjects to evaluate on and which part of the split they are ("test" or "val")."""
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


# ------------------------------------------------------------------------------------------ the run
# Long on purpose: its signature and docstring (the public API) are 70 of its lines; the body calls one helper a step.
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
    methods = checked_methods(methods, include_sitk, include_ants, include_refinement, max_pairs, func)
    segmentation_refine = segmentation_refinement(
        segmentation, checkpoint, include_refinement, refine_params, func
    )
    settings = method_settings(
        workdir,
        checkpoint,
        methods,
        demons_params=demons_params,
        sitk_params=sitk_params,
        ants_params=ants_params,
        tuned_demons=tuned_demons,
        refine_params=refine_params,
        func=func,
    )
    pairs = _evaluation_pairs(workdir, max_pairs, settings, func)
    computed = _compute_pairs(methods, pairs, settings, workers, scheduler, progress)

    folder = pairs.folder
    rows = pair_rows(pairs.records, pairs.pairs, methods, dict(REGIONS))
    summary, statistics, outliers, files = _write_tables(folder, rows, methods)

    failed = len({(r["moving"], r["fixed"], r["method"]) for r in rows if r["status"] == "failed"})
    headline = headline_lines(summary, methods, len(pairs.pairs), pairs.subject_set)
    segmented = None
    if segmentation:
        segmented = evaluate_segmentation(
            workdir, settings.checkpoint, model=settings.model, refine=segmentation_refine, progress=progress
        )
    report_path = ""
    if report:
        report_path = _write_report(
            workdir,
            pairs,
            settings,
            methods,
            tables=(rows, summary, statistics, outliers),
            headline=headline,
            failed=failed,
            segmented=segmented,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
        )
    result = {
        "report": report_path,
        "headline": headline,
        "folder": str(folder),
        "subjects": list(pairs.subject_ids),
        "subject_set": pairs.subject_set,
        "pairs": len(pairs.pairs),
        "methods": list(methods),
        "computed": computed,
        "failed": failed,
        "outliers": len(outliers),
        "demons_params_source": settings.demons_source,
        "files": {name: str(path) for name, path in files.items()},
    }
    if segmented is not None:
        result["segmentation"] = segmented.json_ready()
    write_json(folder / "evaluation.json", result)
    return result


@dataclasses.dataclass
class _EvaluationPairs:
    """The subjects and pairs to evaluate, where their records live, and why a pair cannot be compared."""

    subject_ids: list[str]
    subject_set: str
    pairs: list[tuple[str, str]]
    folder: Path
    subjects: dict[str, Any]
    records: Records
    problem_of: Callable[[str, str], str | None]


def _evaluation_pairs(
    workdir: Path, max_pairs: int | None, settings: MethodSettings, func: str
) -> _EvaluationPairs:
    """Reads the subjects to evaluate (checking them against the model's grid) and opens their records."""
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
    if settings.model is not None:
        _check_model_grid(settings.checkpoint, settings.model, subjects)
    digests = {
        subject_id: subject_digest(subjects[subject_id]) if subject_id in subjects else "unreadable"
        for subject_id in subject_ids
    }
    records = Records(folder, lambda moving_id, fixed_id: f"{digests[moving_id]}-{digests[fixed_id]}")

    def problem_of(moving_id: str, fixed_id: str) -> str | None:
        for subject_id in (moving_id, fixed_id):
            if subject_id in unreadable:
                return f"cannot read subject {subject_id}: {unreadable[subject_id]}"
        return _grid_problem(subjects[moving_id], subjects[fixed_id])

    return _EvaluationPairs(subject_ids, subject_set, pairs, folder, subjects, records, problem_of)


def _compute_pairs(
    methods: Sequence[str],
    evaluation_pairs: _EvaluationPairs,
    settings: MethodSettings,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> dict[str, int]:
    """Registers and scores the pairs not on disk yet; how many were computed now, per method."""
    pairs, subjects, records = evaluation_pairs.pairs, evaluation_pairs.subjects, evaluation_pairs.records
    problem_of, keys = evaluation_pairs.problem_of, settings.keys
    computed = {method: 0 for method in methods}
    pending = {method: [p for p in pairs if not records.done(method, *p, keys[method])] for method in methods}
    for method in methods:
        logger.info("%s: %d of %d pairs to compute", METHOD_NAMES[method], len(pending[method]), len(pairs))

    # in this process first (fast), then the optimisation methods in parallel: no competing timings
    for method in (m for m in methods if m not in TASK_METHODS):
        computed[method] = run_in_process(
            method, pending[method], subjects, problem_of, records, keys[method], settings.model, progress
        )
    task_pairs = [(method, pair) for method in methods if method in TASK_METHODS for pair in pending[method]]
    computed_tasks = run_as_tasks(
        task_pairs,
        subjects,
        problem_of,
        records,
        keys,
        settings.params,
        settings.model,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    for method, count in computed_tasks.items():
        computed[method] = count
    return computed


def _write_tables(
    folder: Path, rows: list[dict[str, Any]], methods: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, Path]]:
    """Summary, statistics and outliers of the pair rows, written with them as CSV files; returns
    the three tables and the files by name."""
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
    return summary, statistics, outliers, files


def _write_report(
    workdir: Path,
    pairs: _EvaluationPairs,
    settings: MethodSettings,
    methods: Sequence[str],
    *,
    tables: tuple[Any, Any, Any, Any],
    headline: Sequence[str],
    failed: int,
    segmented: Any,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> str:
    """Renders the gallery and writes ``report.html`` (with the segmentation's section where there
    is one); returns its path."""
    checkpoint, params = settings.checkpoint, settings.params
    rows, summary, statistics, outliers = tables
    gallery = gallery_entries(
        rows,
        methods,
        pairs.subjects,
        pairs.problem_of,
        pairs.folder,
        settings.keys,
        params,
        settings.model,
        inputs_of=pairs.records.inputs_of,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    return str(
        write_report(
            pairs.folder,
            ReportInputs(
                workdir=str(workdir),
                checkpoint=str(checkpoint) if "svfnet" in methods else "",
                training=_training_summary(checkpoint) if "svfnet" in methods else "",
                subject_set=pairs.subject_set,
                subjects=tuple(pairs.subject_ids),
                pair_count=len(pairs.pairs),
                methods=tuple(methods),
                rows=rows,
                summary=summary,
                statistics=statistics,
                outliers=outliers,
                gallery=gallery,
                headline=tuple(headline) + (tuple(segmented.headline) if segmented else ()),
                method_params=params,
                method_sources={
                    m: settings.demons_source for m in ("lcc_demons", "svfnet_refined") if m in params
                },
                failed=failed,
                sections=(functools.partial(report_section, segmented),) if segmented else (),
            ),
        )
    )


def _training_summary(checkpoint: Path) -> str:
    """How the checkpoint's model was trained (its recipe, steps, augmentation), or "" where it does not say."""
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
    subjects, unreadable = {}, {}
    for subject_id in subject_ids:
        try:
            subjects[subject_id] = read_prepared(workdir, subject_id)
        except Exception as error:  # a broken file fails its pairs, not the run
            unreadable[subject_id] = error_text(error)
            logger.warning("cannot read subject %s: %s", subject_id, unreadable[subject_id])
    return subjects, unreadable
