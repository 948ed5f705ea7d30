"""The whole method in one work folder: ``svfnet run CONFIG.toml`` and ``svfnet demo``.

Stages, in order: ``data`` (the built-in synthetic cohort, or a dataset on disk), ``prepare``,
``split``, ``shapes``, ``references``, ``train``, ``evaluate``. Each stage records in
``WORKDIR/stages/<stage>.json`` the fingerprint of what it was run with — its configuration
section plus the fingerprints of the stages before it — when it starts and when it finishes:

- finished with the same fingerprint: skipped (up to date);
- started with the same fingerprint but not finished (interrupted): run again, and every stage
  resumes from what is on disk (shapes per subject, references per fixed subject, training from
  its last checkpoint);
- anything else (a new configuration, or a stage before it that ran again): its outputs are
  removed and it runs from scratch.

Every parameter, with its default, is in :data:`DEFAULTS`; ``svfnet config --defaults`` prints
them as a commented TOML file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svfnet._io import atomic_path, write_json
from svfnet.workdir import WorkDir

__all__ = ["DEFAULTS", "STAGES", "demo_config", "load_config", "render_config", "run_pipeline"]

log = logging.getLogger(__name__)

# Every parameter of a run: section -> key -> (default, one-line description).
DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "data": {
        "source": ("synthetic", 'a dataset folder, or "synthetic" for the built-in cohort'),
        "subjects": (40, "synthetic cohort: number of subjects"),
        "seed": (0, "synthetic cohort: seed"),
        "outlier_fraction": (0.1, "synthetic cohort: fraction of unusual hearts (dilated LV, small RV)"),
        "realism": ("standard", 'synthetic cohort: "standard", or "clinical" (real cine MRI\'s problems: thick '
                    "slices, partial coverage, breath-hold offsets, ACDC's groups, odd headers)"),
        "header_style": ("", 'clinical synthetic cohort: one NIfTI header style for all ("itk", "acdc", '
                         '"qform-only", "sform-only", "disagree", "oblique"); "" draws one per subject'),
        "layout": ("", 'dataset layout: "plain", "nnunet", "acdc", or "" to detect it'),
        "phase": ("", 'cardiac phase, "ED" or "ES": the acdc frame (empty: ED), or the plain names ending in _ED/_ES (empty: all)'),
        "labels": ("", 'label mapping "SRC:DST,..." into svfnet\'s labels (or "acdc"); "" for the layout\'s own'),
        "shape": ([64, 64, 16], "the common grid (in-plane divisible by 8, slices by 2)"),
        "long_axis": ("slices", 'long axis from the slice normal ("slices") or the LV labels ("labels")'),
    },
    "split": {
        "test_fraction": (0.25, "fraction of subjects held out for evaluation"),
        "val_fraction": (0.1, "fraction of subjects for validation during training"),
        "seed": (0, "seed of the split"),
    },
    "shapes": {
        "template": ("", 'template subject id; "" picks the subject closest on average to the others'),
        "landmarks": (1000, "template vertices carried to every subject (farthest-point sampled)"),
        "target_triangles": (4000, "triangles per subject, all regions together"),
        "sigma_v_mm": (20.0, "LDDMM deformation kernel width, mm"),
        "sigma_w_mm": (10.0, "currents kernel width, mm"),
        "sigma_noise": (10.0, "currents distance counted as noise"),
        "max_iterations": (100, "L-BFGS iterations per subject at most"),
    },
    "references": {
        "nu": (0.25, "Poisson's ratio of the elastic body spline"),
        "smoothing": (0.0, "spline smoothing (0 interpolates the landmarks)"),
        "log_tol": (0.1, "logarithm tolerance on max|exp(v) - u|, voxels"),
        "log_tol_mean": (0.01, "logarithm tolerance on mean|exp(v) - u|, voxels"),
        "log_max_iter": (30, "logarithm iterations at most"),
        "dtype": ("float16", 'storage of the reference SVFs ("float16" or "float32")'),
    },
    "model": {
        "widths": ([16, 32, 64, 64], "channels of the four U-Net levels"),
        "convs_per_level": (2, "convolutions per level"),
        "norm": ("instance", '"instance", "batch", "group" or "none"'),
        "activation": ("leaky_relu", '"leaky_relu", "relu" or "elu"'),
    },
    "train": {
        "steps": (2000, "optimiser steps"),
        "batch_size": (4, "pairs per step"),
        "learning_rate": (1e-3, "Adam's learning rate"),
        "targets": ("references", '"references" (the shapes pipeline) or "random" (smooth random SVFs)'),
        "shift_vox": (3, "largest in-plane augmentation shift, voxels"),
        "loss_mask": ("heart", '"heart" (voxels near the fixed labels) or "none" (whole grid)'),
        "validate_every": (100, "steps between validations"),
        "checkpoint_every": (50, "steps between checkpoints"),
        "seed": (0, "seed of initialisation, sampling and augmentation"),
    },
    "run": {
        "workers": (0, "local processes for the parallel stages (0: one per core)"),
        "scheduler": ("", "Dask scheduler address for the parallel stages (tcp://host:8786); \"\" runs locally"),
    },
}

STAGES = ("data", "prepare", "split", "shapes", "references", "train", "evaluate")
# the configuration sections each stage depends on directly
_SECTIONS = {
    "data": ("data",),
    "prepare": ("data",),
    "split": ("split",),
    "shapes": ("shapes",),
    "references": ("references",),
    "train": ("train", "model"),
    "evaluate": (),
}


def default_config() -> dict[str, dict[str, Any]]:
    return {section: {key: copy.deepcopy(value[0]) for key, value in keys.items()} for section, keys in DEFAULTS.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_config(config: dict[str, dict[str, Any]] | None = None) -> str:
    """A commented TOML file of ``config`` (default: every default)."""
    config = config or default_config()
    lines = ["# svfnet run configuration: `svfnet run THIS.toml --workdir DIR`. Every key is optional."]
    for section, keys in DEFAULTS.items():
        lines += ["", f"[{section}]"]
        for key, (_, description) in keys.items():
            lines.append(f"{key} = {_toml_value(config[section][key])}  # {description}")
    return "\n".join(lines) + "\n"


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> dict:
    """Defaults, updated by the TOML file at ``path`` and then by ``overrides``; unknown keys are errors."""
    config = default_config()
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration {path} not found")
        try:
            layers.append((str(path), tomllib.loads(path.read_text())))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
    if overrides:
        layers.append(("overrides", overrides))
    for origin, layer in layers:
        for section, values in layer.items():
            if section not in DEFAULTS or not isinstance(values, dict):
                raise ValueError(f"{origin}: unknown section [{section}] (known: {', '.join(DEFAULTS)})")
            for key, value in values.items():
                if key not in DEFAULTS[section]:
                    raise ValueError(f"{origin}: unknown key '{key}' in [{section}] (known: {', '.join(DEFAULTS[section])})")
                default = DEFAULTS[section][key][0]
                if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not type(default):
                    raise ValueError(
                        f"{origin}: [{section}] {key} must be a {type(default).__name__}, got {value!r}"
                    )
                config[section][key] = value
    _check_choices(config)
    return config


# keys whose values come from a fixed list: refused when the configuration is read, not when (maybe
# an hour later) their stage starts
def _check_choices(config: dict) -> None:
    from svfnet.data.synthetic import HEADER_STYLES, REALISM_LEVELS

    choices = {("data", "realism"): REALISM_LEVELS, ("data", "header_style"): ("", *HEADER_STYLES)}
    for (section, key), allowed in choices.items():
        if config[section][key] not in allowed:
            raise ValueError(
                f"[{section}] {key} must be one of {', '.join(repr(a) for a in allowed)}, got {config[section][key]!r}"
            )
    if config["data"]["header_style"] and config["data"]["realism"] != "clinical":
        raise ValueError('[data] header_style applies to the clinical synthetic cohort: set realism = "clinical"')


def demo_config(quick: bool = False, realistic: bool = False) -> dict[str, dict[str, Any]]:
    """The demo's configuration: the built-in cohort, sized for a 2-core laptop; ``realistic`` draws
    the clinical cohort (thick slices, partial coverage, odd headers...) instead of the standard one."""
    if quick:
        overrides = {
            "data": {"subjects": 8},
            "shapes": {"landmarks": 300, "target_triangles": 1500, "max_iterations": 25},
            "model": {"widths": [8, 16, 32, 32]},
            "train": {"steps": 120, "batch_size": 2, "learning_rate": 2e-3, "validate_every": 40, "checkpoint_every": 40},
        }
    else:
        overrides = {
            "data": {"subjects": 24},
            "shapes": {"landmarks": 600, "target_triangles": 2500, "max_iterations": 60},
            "train": {"steps": 1500, "batch_size": 4, "validate_every": 100},
        }
    if realistic:
        overrides["data"]["realism"] = "clinical"
    return load_config(overrides=overrides)


# ---------------------------------------------------------------------------------- stages
@dataclass
class _Context:
    workdir: Path
    config: dict[str, dict[str, Any]]
    progress: bool

    @property
    def workers(self) -> int | None:
        return self.config["run"]["workers"] or None

    @property
    def scheduler(self) -> str | None:
        return self.config["run"]["scheduler"] or None


def _stage_data(ctx: _Context, fresh: bool) -> dict[str, Any]:
    data = ctx.config["data"]
    if data["source"] != "synthetic":
        source = Path(data["source"])
        if not source.exists():
            raise FileNotFoundError(f"[data] source {source} does not exist")
        return {"dataset": str(source)}
    from svfnet.data.synthetic import write_synthetic_dataset

    raw = ctx.workdir / "raw"
    write_synthetic_dataset(raw, data["subjects"], data["seed"], outlier_fraction=data["outlier_fraction"],
                            realism=data["realism"], header_style=data["header_style"] or None,
                            overwrite=True, progress=ctx.progress)
    return {"dataset": str(raw)}


def _dataset_path(ctx: _Context) -> Path:
    source = ctx.config["data"]["source"]
    return ctx.workdir / "raw" if source == "synthetic" else Path(source)


def _stage_prepare(ctx: _Context, fresh: bool) -> dict[str, Any]:
    from svfnet.data.labels import parse_label_mapping
    from svfnet.data.prepare import prepare_dataset
    from svfnet.data.readers import read_dataset

    data = ctx.config["data"]
    mapping = parse_label_mapping(data["labels"]) if data["labels"] else None
    layout = data["layout"] or ("plain" if data["source"] == "synthetic" else None)
    phase = data["phase"] or None  # read_dataset refuses a phase for nnunet, with a clear error
    dataset = read_dataset(_dataset_path(ctx), layout, phase=phase, label_mapping=mapping)
    report = prepare_dataset(dataset, ctx.workdir, shape=tuple(data["shape"]), long_axis=data["long_axis"],
                             overwrite=True, progress=ctx.progress)
    return {"subjects": len(report.entries), "missing_regions": report.with_missing_regions}


def _stage_split(ctx: _Context, fresh: bool) -> dict[str, Any]:
    from svfnet.split import split_path, subject_split

    split_path(ctx.workdir).unlink(missing_ok=True)
    split = subject_split(ctx.workdir, **ctx.config["split"])
    return {"train": len(split.train), "val": len(split.val), "test": len(split.test)}


def _stage_shapes(ctx: _Context, fresh: bool) -> dict[str, Any]:
    from svfnet.shapes.parameters import LddmmParameters
    from svfnet.shapes.stage import run_shapes

    shapes = ctx.config["shapes"]
    parameters = LddmmParameters(sigma_v_mm=shapes["sigma_v_mm"], sigma_w_mm=shapes["sigma_w_mm"],
                                 sigma_noise=shapes["sigma_noise"], max_iterations=shapes["max_iterations"])
    summary = run_shapes(ctx.workdir, template=shapes["template"] or None, parameters=parameters,
                         target_triangles=shapes["target_triangles"], landmarks=shapes["landmarks"],
                         workers=ctx.workers, scheduler=ctx.scheduler, overwrite=fresh, progress=ctx.progress)
    if summary.failed:
        raise RuntimeError(f"shapes failed for {sorted(summary.failed)}: {summary.failed}")
    return {"template": summary.template, "outliers": list(summary.outliers)}


def _stage_references(ctx: _Context, fresh: bool) -> dict[str, Any]:
    from svfnet.references import ReferenceParameters, run_references

    if fresh:
        shutil.rmtree(WorkDir(ctx.workdir).references, ignore_errors=True)
    summary = run_references(ctx.workdir, parameters=ReferenceParameters(**ctx.config["references"]),
                             workers=ctx.workers, scheduler=ctx.scheduler, progress=ctx.progress)
    return {"pairs": summary.pairs, "converged": summary.converged, "folded": summary.folded,
            "usable": summary.usable, "excluded": summary.excluded, "residual_mean": summary.residual_mean}


def _stage_train(ctx: _Context, fresh: bool) -> dict[str, Any]:
    from svfnet.model import SVFNetConfig
    from svfnet.train import TrainConfig, run_folder, train

    folder = run_folder(ctx.workdir, "svfnet")
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    model = ctx.config["model"]
    config = TrainConfig(**ctx.config["train"], model=SVFNetConfig(
        widths=tuple(model["widths"]), convs_per_level=model["convs_per_level"], norm=model["norm"],
        activation=model["activation"], grid=tuple(ctx.config["data"]["shape"])))
    resume = (folder / "checkpoint.pt").is_file()
    result = train(ctx.workdir, None if resume else config, resume=resume, progress=ctx.progress)
    return {"checkpoint": str(result.checkpoint), "steps": result.step}


def _stage_evaluate(ctx: _Context, fresh: bool) -> dict[str, Any]:
    from svfnet.evaluate import run_evaluation

    summary = run_evaluation(ctx.workdir, WorkDir(ctx.workdir).models / "svfnet" / "checkpoint.pt",
                             workers=ctx.workers, progress=ctx.progress)
    return summary


_STAGE_FUNCTIONS: dict[str, Callable[[_Context, bool], dict[str, Any]]] = {
    "data": _stage_data,
    "prepare": _stage_prepare,
    "split": _stage_split,
    "shapes": _stage_shapes,
    "references": _stage_references,
    "train": _stage_train,
    "evaluate": _stage_evaluate,
}


def _fingerprint(config: dict, stage: str, upstream: str) -> str:
    payload = json.dumps({"stage": stage, "sections": {s: config[s] for s in _SECTIONS[stage]}, "upstream": upstream},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # "skipped", "resumed", "ran"
    seconds: float
    result: dict[str, Any]


def run_pipeline(
    workdir: str | Path,
    config: dict[str, dict[str, Any]],
    *,
    stages: tuple[str, ...] = STAGES,
    progress: bool = True,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> list[StageOutcome]:
    """Runs the stages in order, skipping those up to date and resuming the interrupted one."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"run_pipeline(): unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", config)
    with atomic_path(workdir / "config.toml") as temporary:
        temporary.write_text(render_config(config))
    ctx = _Context(workdir, config, progress)
    outcomes = []
    upstream = ""
    for stage in STAGES:
        if stage not in stages:
            continue
        fingerprint = _fingerprint(config, stage, upstream)
        upstream = fingerprint
        marker = workdir / "stages" / f"{stage}.json"
        state = json.loads(marker.read_text()) if marker.is_file() else {}
        if state.get("fingerprint") == fingerprint and state.get("finished"):
            outcome = StageOutcome(stage, "skipped", 0.0, state.get("result", {}))
        else:
            resumed = state.get("fingerprint") == fingerprint
            write_json(marker, {"fingerprint": fingerprint, "finished": False})
            log.info("stage %s: %s", stage, "resuming" if resumed else "running")
            started = time.perf_counter()
            result = _STAGE_FUNCTIONS[stage](ctx, not resumed)
            seconds = time.perf_counter() - started
            write_json(marker, {"fingerprint": fingerprint, "finished": True, "seconds": seconds, "result": result})
            outcome = StageOutcome(stage, "resumed" if resumed else "ran", seconds, result)
        outcomes.append(outcome)
        if on_stage is not None:
            on_stage(outcome)
    return outcomes
