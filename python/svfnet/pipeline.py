"""The whole method in one work folder: ``svfnet run CONFIG.toml`` and ``svfnet demo``.

Stages, in order: ``data`` (the built-in synthetic cohort, or a dataset on disk), ``prepare``,
``split``, ``shapes``, ``references``, ``train``, ``evaluate``.

**Everything is checked before anything is touched.** The whole configuration (every section,
each key against its range: :data:`LIMITS`, printed by ``svfnet config --defaults``), the inputs
each requested stage needs (present, or made by a stage before it in this run), the cohort's size
and the memory and disk the stages will need (:mod:`svfnet.common.limits`) are checked first; a run that
fails a check stops with an error before it deletes, overwrites or starts anything. The work folder
is locked for the whole run (:mod:`svfnet.common.locks`).

**Fingerprints by content.** Each stage records in ``WORKDIR/stages/<stage>.json`` the fingerprint
of what it was run with, when it starts and when it finishes: its configuration section(s) and
digests of the inputs it actually reads (:func:`stage_inputs`: the dataset's files, the prepared
subjects' content and voxel size, the split, the landmarks, the reference records, the
checkpoint). A stage's fingerprint does not depend on which other stages this run includes:

- finished with the same fingerprint: skipped (up to date), so ``--stages train`` alone skips a
  trained model whose inputs and settings did not change;
- started with the same fingerprint but not finished (interrupted): run again, resuming from what
  is on disk (shapes per subject, references per fixed subject, training from its last checkpoint);
- anything else (a new configuration, or inputs that changed: a re-prepared grid, another
  dataset): run again, which changes its outputs and so the fingerprints of exactly the stages that
  read them.

**Outputs are replaced, never deleted first.** A stage that recomputes writes beside its old
outputs (``WORKDIR/.staging/<stage>/``, :mod:`svfnet.common.staging`) and swaps the new ones in when they
are complete; a refused, failed or killed run leaves the old ones as they were.

Every parameter, with its default and range, is in :data:`DEFAULTS` and :data:`LIMITS`;
``svfnet config --defaults`` prints them as a commented TOML file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib

from svfnet.common import limits
from svfnet.common.atomic import atomic_path, write_json
from svfnet.common.workdir import WorkDir

__all__ = [
    "DEFAULTS",
    "LIMITS",
    "STAGES",
    "demo_config",
    "load_config",
    "render_config",
    "run_pipeline",
    "stage_inputs",
    "validate_config",
]

log = logging.getLogger(__name__)

# Every parameter of a run: section -> key -> (default, one-line description).
DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "data": {
        "source": ("synthetic", 'a dataset folder, or "synthetic" for the built-in cohort'),
        "subjects": (40, "synthetic cohort: number of subjects"),
        "seed": (0, "synthetic cohort: seed"),
        "outlier_fraction": (0.1, "synthetic cohort: fraction of unusual hearts (dilated LV, small RV)"),
        "realism": (
            "standard",
            'synthetic cohort: "standard", or "clinical" (real cine MRI\'s problems: thick '
            "slices, partial coverage, breath-hold offsets, ACDC's groups, odd headers)",
        ),
        "header_style": (
            "",
            'clinical synthetic cohort: one NIfTI header style for all ("itk", "acdc", '
            '"qform-only", "sform-only", "disagree", "oblique"); "" draws one per subject',
        ),
        "layout": ("", 'dataset layout: "plain", "nnunet", "acdc", or "" to detect it'),
        "phase": (
            "",
            'cardiac phase, "ED" or "ES": the acdc frame (empty: ED), or the plain names ending in _ED/_ES (empty: all)',
        ),
        "labels": (
            "",
            'label mapping "SRC:DST,..." into svfnet\'s labels (or "acdc"); "" for the layout\'s own',
        ),
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
        "deformation": (
            "lddmm",
            '"lddmm" composes the shapes stage\'s flows, "ebs" spreads the landmarks by a spline',
        ),
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
        "recipe": (
            "overlap",
            '"overlap" (squared difference to the reference SVF plus a soft Dice term on the '
            'labels warped by the prediction) or "paper" (the first term alone)',
        ),
        "overlap_weight": (3.0, 'weight of the soft Dice term of the "overlap" recipe'),
        "intensity_augmentation": (False, "draw a bias field, gamma, contrast and noise per image"),
        "rotation_deg": (0.0, "largest in-plane rotation of a pair and its target, degrees (0: none)"),
        "inverse_consistency_weight": (
            0.0,
            "weight of the inverse-consistency term on each pair and its reverse (0: off)",
        ),
        "precision": (
            "float32",
            '"float32", "bfloat16" (autocast) or "auto" (bfloat16 where the CPU or GPU has it)',
        ),
        "validate_every": (100, "steps between validations"),
        "checkpoint_every": (50, "steps between checkpoints"),
        "seed": (0, "seed of initialisation, sampling and augmentation"),
    },
    "run": {
        "workers": (0, "local processes for the parallel stages (0: one per core)"),
        "scheduler": (
            "",
            'Dask scheduler address for the parallel stages (tcp://host:8786); "" runs locally',
        ),
    },
}


# The range of every numeric key, as (low, high, low_open, high_open): checked when the
# configuration is read, printed by `svfnet config --defaults`. Keys with a fixed list of values
# are in _CHOICES; the grid and the widths are checked as lists (limits.check_grid_shape).
LIMITS: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    ("data", "subjects"): (2, limits.MAX_SUBJECTS, False, False),
    ("data", "seed"): (0, limits.MAX_SEED, False, False),
    ("data", "outlier_fraction"): (0.0, 1.0, False, False),
    ("split", "test_fraction"): (0.0, 1.0, False, True),
    ("split", "val_fraction"): (0.0, 1.0, False, True),
    ("split", "seed"): (0, limits.MAX_SEED, False, False),
    ("shapes", "landmarks"): (4, limits.MAX_LANDMARKS, False, False),
    ("shapes", "target_triangles"): (100, limits.MAX_TRIANGLES, False, False),
    ("shapes", "sigma_v_mm"): (0.0, 1000.0, True, False),
    ("shapes", "sigma_w_mm"): (0.0, 1000.0, True, False),
    ("shapes", "sigma_noise"): (0.0, 1e6, True, False),
    ("shapes", "max_iterations"): (0, 100_000, False, False),
    ("references", "nu"): (0.0, 0.5, False, True),
    ("references", "smoothing"): (0.0, 1e6, False, False),
    ("references", "log_tol"): (0.0, 10.0, True, False),
    ("references", "log_tol_mean"): (0.0, 10.0, True, False),
    ("references", "log_max_iter"): (1, 10_000, False, False),
    ("model", "convs_per_level"): (1, 16, False, False),
    ("train", "steps"): (1, limits.MAX_STEPS, False, False),
    ("train", "batch_size"): (1, limits.MAX_BATCH, False, False),
    ("train", "learning_rate"): (0.0, 1.0, True, False),
    ("train", "shift_vox"): (0, 512, False, False),  # and at most half the in-plane grid
    ("train", "overlap_weight"): (0.0, 1000.0, False, False),
    ("train", "rotation_deg"): (0.0, 180.0, False, False),
    ("train", "inverse_consistency_weight"): (0.0, 1000.0, False, False),
    ("train", "validate_every"): (1, limits.MAX_STEPS, False, False),
    ("train", "checkpoint_every"): (1, limits.MAX_STEPS, False, False),
    ("train", "seed"): (0, limits.MAX_SEED, False, False),
    ("run", "workers"): (0, limits.MAX_WORKERS, False, False),
}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "layout"): ("", "plain", "nnunet", "acdc"),
    ("data", "phase"): ("", "ED", "ES"),
    ("data", "long_axis"): ("slices", "labels"),
    ("references", "deformation"): ("lddmm", "ebs"),
    ("references", "dtype"): ("float16", "float32"),
    ("model", "norm"): ("instance", "batch", "group", "none"),
    ("model", "activation"): ("leaky_relu", "relu", "elu"),
    ("train", "targets"): ("references", "random"),
    ("train", "loss_mask"): ("heart", "none"),
    ("train", "recipe"): ("paper", "overlap"),
    ("train", "precision"): ("float32", "bfloat16", "auto"),
}
# what the lists accept, for the printed configuration
_LIST_LIMITS = {
    ("data", "shape"): f"each axis 2-{limits.MAX_GRID_AXIS}, at most {limits.MAX_GRID_VOXELS:,} voxels",
    ("model", "widths"): f"four channel counts, 1-{limits.MAX_WIDTH}",
}


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
    def number(value: float) -> str:
        if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
            return f"{int(value):,}"
        return f"{value:g}"

    return f"{'(' if low_open else '['}{number(low)}, {number(high)}{')' if high_open else ']'}"


def limits_text(section: str, key: str) -> str:
    """The accepted values of a key, in words (empty where any value of its type goes)."""
    if (section, key) in LIMITS:
        return "range " + _range_text(*LIMITS[section, key])
    if (section, key) in _CHOICES:
        return "one of " + ", ".join(repr(c) for c in _CHOICES[section, key])
    return _LIST_LIMITS.get((section, key), "")


STAGES = ("data", "prepare", "split", "shapes", "references", "train", "evaluate")
# the configuration sections (or keys of one) each stage depends on directly
_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "prepare": ("data",),
    "split": ("split",),
    "shapes": ("shapes",),
    "references": ("references",),
    "train": ("train", "model"),
    "evaluate": (),
}
# [data] keys the data stage reads (the synthetic cohort's), and those the prepare stage reads (the
# synthetic cohort's own keys reach it through the files)
_DATA_KEYS = ("source", "subjects", "seed", "outlier_fraction", "realism", "header_style")
_PREPARE_KEYS = ("source", "layout", "phase", "labels", "shape", "long_axis")


def default_config() -> dict[str, dict[str, Any]]:
    return {
        section: {key: copy.deepcopy(value[0]) for key, value in keys.items()}
        for section, keys in DEFAULTS.items()
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_config(config: dict[str, dict[str, Any]] | None = None) -> str:
    """A commented TOML file of ``config`` (default: every default), each key with its meaning and
    the values it accepts."""
    config = config or default_config()
    lines = [
        "# svfnet run configuration: `svfnet run THIS.toml --workdir DIR`. Every key is optional; a value",
        "# outside its range is refused before anything runs, and so is a run whose memory or disk",
        "# estimate exceeds this machine's. Limits: " + limits.LIMITS_TEXT + ".",
    ]
    for section, keys in DEFAULTS.items():
        lines += ["", f"[{section}]"]
        for key, (_, description) in keys.items():
            accepted = limits_text(section, key)
            lines.append(
                f"{key} = {_toml_value(config[section][key])}  # {description}"
                + (f" ({accepted})" if accepted else "")
            )
    return "\n".join(lines) + "\n"


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> dict:
    """Defaults, updated by the TOML file at ``path`` and then by ``overrides``; unknown keys, values of
    the wrong type and values out of range (:func:`validate_config`) are errors naming the key."""
    config = default_config()
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration {path} not found")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path}: not a UTF-8 text file (byte {error.start} is {error.object[error.start : error.start + 1]!r}): "
                "TOML files are UTF-8"
            ) from None
        try:
            layers.append((str(path), tomllib.loads(text)))
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
                    raise ValueError(
                        f"{origin}: unknown key '{key}' in [{section}] (known: {', '.join(DEFAULTS[section])})"
                    )
                default = DEFAULTS[section][key][0]
                if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not type(default):
                    raise ValueError(
                        f"{origin}: [{section}] {key} must be a {type(default).__name__}, got {value!r}"
                    )
                config[section][key] = value
    where = f"{path}: " if path is not None else ""
    try:
        validate_config(config)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None
    return config


def validate_config(config: dict[str, dict[str, Any]]) -> None:
    """Checks every section of a run's configuration, each key against its range (:data:`LIMITS`)
    or choices, and the keys that depend on each other; ValueError naming the first key that fails.

    The parameter objects the stages build are built here too (LDDMM, references, model, training),
    so that whatever they refuse is refused now, not when (maybe hours later) their stage starts.
    """
    for (section, key), (low, high, low_open, high_open) in LIMITS.items():
        if key not in config.get(section, {}):
            continue
        value = config[section][key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"[{section}] {key} must be a number, got {value!r}")
        inside = (
            math.isfinite(value)
            and (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high)
        )
        if not inside:
            raise ValueError(
                f"[{section}] {key} = {value!r} is out of its range {_range_text(low, high, low_open, high_open)}"
            )
    for (section, key), allowed in _CHOICES.items():
        if key not in config.get(section, {}):
            continue
        value = config[section][key]
        if (value.upper() if key == "phase" else value) not in allowed:
            raise ValueError(
                f"[{section}] {key} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}"
            )
    _check_choices(config)
    data, split, model, train = config["data"], config["split"], config["model"], config["train"]
    if not isinstance(data["source"], str) or not data["source"].strip():
        raise ValueError('[data] source must be a dataset folder or "synthetic"')
    grid = limits.check_grid_shape(data["shape"], "[data] shape")
    if data["labels"]:
        from svfnet.data.labels import parse_label_mapping

        parse_label_mapping(data["labels"], argument="[data] labels")
    if split["test_fraction"] + split["val_fraction"] >= 1:
        raise ValueError(
            f"[split] test_fraction + val_fraction must be below 1 (some subjects must train), got "
            f"{split['test_fraction']} + {split['val_fraction']}"
        )
    widths = model["widths"]
    if len(widths) != 4 or any(
        isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= limits.MAX_WIDTH for w in widths
    ):
        raise ValueError(f"[model] widths must be four integers from 1 to {limits.MAX_WIDTH}, got {widths!r}")
    if train["shift_vox"] > min(grid[0], grid[1]) // 2:
        raise ValueError(
            f"[train] shift_vox = {train['shift_vox']} shifts more than half the {grid[0]}x{grid[1]} slices "
            f"(at most {min(grid[0], grid[1]) // 2})"
        )
    if not isinstance(config["run"]["scheduler"], str):
        raise ValueError("[run] scheduler must be a string")
    # the parameter objects of the stages, built as the stages will build them
    _shapes_parameters(config)
    _train_config(config)
    _reference_parameters(config)


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
        raise ValueError(
            '[data] header_style applies to the clinical synthetic cohort: set realism = "clinical"'
        )


def _shapes_parameters(config: dict):
    from svfnet.shapes.parameters import LddmmParameters

    shapes = config["shapes"]
    try:
        return LddmmParameters(
            sigma_v_mm=shapes["sigma_v_mm"],
            sigma_w_mm=shapes["sigma_w_mm"],
            sigma_noise=shapes["sigma_noise"],
            max_iterations=shapes["max_iterations"],
        )
    except ValueError as error:
        raise ValueError(f"[shapes] {error}") from None


def _train_config(config: dict):
    from svfnet.training.model import SVFNetConfig
    from svfnet.training.train import TrainConfig

    model = config["model"]
    try:
        return TrainConfig(
            **config["train"],
            model=SVFNetConfig(
                widths=tuple(model["widths"]),
                convs_per_level=model["convs_per_level"],
                norm=model["norm"],
                activation=model["activation"],
                grid=tuple(config["data"]["shape"]),
            ),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"[train]/[model] {error}") from None


def _reference_parameters(config: dict):
    from svfnet.references.stage import ReferenceParameters

    try:
        return ReferenceParameters(**config["references"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"[references] {error}") from None


def demo_config(quick: bool = False, realistic: bool = False) -> dict[str, dict[str, Any]]:
    """The demo's configuration: the built-in cohort, sized for a 2-core laptop; ``realistic`` draws
    the clinical cohort (thick slices, partial coverage, odd headers...) instead of the standard one."""
    if quick:
        overrides = {
            "data": {"subjects": 8},
            "shapes": {"landmarks": 300, "target_triangles": 1500, "max_iterations": 25},
            "model": {"widths": [8, 16, 32, 32]},
            "train": {
                "steps": 120,
                "batch_size": 2,
                "learning_rate": 2e-3,
                "validate_every": 40,
                "checkpoint_every": 40,
            },
        }
    else:
        overrides = {
            "data": {"subjects": 24},
            "shapes": {"landmarks": 600, "target_triangles": 2500, "max_iterations": 60},
            # the overlap recipe beat 1,500 steps of the paper's in 1,000 (benchmarks/recipes.py); 850
            # keep the whole demo under its 20 minutes: 1,000 took 21.0 min on the quiet 2-core
            # machine (2026-12-02, 1.02 s a step, 4.5 min for the other stages)
            "train": {"steps": 850, "batch_size": 4, "validate_every": 100},
        }
    if realistic:
        overrides["data"]["realism"] = "clinical"
    return load_config(overrides=overrides)


# ---------------------------------------------------------------------------------- stages
@dataclass
class StageContext:
    workdir: Path
    config: dict[str, dict[str, Any]]
    progress: bool

    @property
    def workers(self) -> int | None:
        return self.config["run"]["workers"] or None

    @property
    def scheduler(self) -> str | None:
        return self.config["run"]["scheduler"] or None

    @property
    def synthetic(self) -> bool:
        return self.config["data"]["source"] == "synthetic"


def _dataset_path(ctx: StageContext) -> Path:
    return ctx.workdir / "raw" if ctx.synthetic else Path(ctx.config["data"]["source"])


def _read_dataset(ctx: StageContext):
    from svfnet.data.labels import parse_label_mapping
    from svfnet.data.readers import read_dataset

    data = ctx.config["data"]
    mapping = parse_label_mapping(data["labels"]) if data["labels"] else None
    layout = data["layout"] or ("plain" if ctx.synthetic else None)
    phase = data["phase"].upper() or None  # read_dataset refuses a phase for nnunet, with a clear error
    return read_dataset(_dataset_path(ctx), layout, phase=phase, label_mapping=mapping)


def _stage_data(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    data = ctx.config["data"]
    if not ctx.synthetic:
        source = Path(data["source"])
        if not source.exists():
            raise FileNotFoundError(f"[data] source {source} does not exist")
        return {"dataset": str(source)}
    from svfnet.common.staging import STAGING, remove_staging, replace_tree
    from svfnet.data.synthetic import write_synthetic_dataset

    # the new cohort is written beside the old one and swapped in complete
    staging = ctx.workdir / STAGING / "data"
    if staging.exists():
        shutil.rmtree(staging)
    write_synthetic_dataset(
        staging / "raw",
        data["subjects"],
        data["seed"],
        outlier_fraction=data["outlier_fraction"],
        realism=data["realism"],
        header_style=data["header_style"] or None,
        progress=ctx.progress,
    )
    replace_tree(staging / "raw", ctx.workdir / "raw")
    remove_staging(ctx.workdir, "data")
    return {"dataset": str(ctx.workdir / "raw")}


def _stage_prepare(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.data.prepare import prepare_dataset

    data = ctx.config["data"]
    report = prepare_dataset(
        _read_dataset(ctx),
        ctx.workdir,
        shape=tuple(data["shape"]),
        long_axis=data["long_axis"],
        overwrite=True,
        progress=ctx.progress,
    )  # written beside, then swapped in
    return {"subjects": len(report.entries), "missing_regions": report.with_missing_regions}


def _stage_split(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.common.workdir import subject_ids
    from svfnet.data.split import plan_split, split_path

    settings = ctx.config["split"]
    split = plan_split(subject_ids(ctx.workdir), **settings)
    write_json(
        split_path(ctx.workdir),
        {
            "train": list(split.train),
            "val": list(split.val),
            "test": list(split.test),
            "seed": settings["seed"],
        },
    )  # replaces the old split in one step
    return {"train": len(split.train), "val": len(split.val), "test": len(split.test)}


def _stage_shapes(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.shapes.stage import run_shapes

    shapes = ctx.config["shapes"]
    summary = run_shapes(
        ctx.workdir,
        template=shapes["template"] or None,
        parameters=_shapes_parameters(ctx.config),
        target_triangles=shapes["target_triangles"],
        landmarks=shapes["landmarks"],
        workers=ctx.workers,
        scheduler=ctx.scheduler,
        overwrite=fresh,
        progress=ctx.progress,
    )
    if summary.failed:
        raise RuntimeError(f"shapes failed for {sorted(summary.failed)}: {summary.failed}")
    return {"template": summary.template, "outliers": list(summary.outliers)}


def _references_compatible(folder: Path, parameters: Any, subjects: list[str]) -> bool:
    """Whether the store in ``folder`` can be brought up to date in place: written with the same
    parameters and store format, and holding no fixed subject outside ``subjects`` (the store itself
    recomputes the fixed subjects whose landmarks or grid changed)."""
    from svfnet.references.stage import STORE_FORMAT

    config_path = folder / "config.json"
    if not config_path.is_file():
        return not any(folder.glob("pairs/*.json"))
    previous = json.loads(config_path.read_text())
    wanted = {key: value for key, value in asdict(parameters).items() if key != "moving_per_task"}
    if previous.get("format", 1) != STORE_FORMAT or {key: previous.get(key) for key in wanted} != wanted:
        return False
    return {path.stem for path in folder.glob("pairs/*.json")} <= set(subjects)


def _stage_references(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.common.staging import STAGING, remove_staging, replace_tree, shadow_workdir
    from svfnet.references.stage import run_references

    parameters = _reference_parameters(ctx.config)
    live = WorkDir(ctx.workdir).references
    split = _read_split(ctx.workdir)
    staging = ctx.workdir / STAGING / "references"
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
        staged = live.exists() and not _references_compatible(
            live, parameters, sorted(split["train"] + split["val"])
        )
    else:
        staged = staging.exists()  # an interrupted replacement resumes
    where = shadow_workdir(ctx.workdir, "references", ("references",), fresh=fresh) if staged else ctx.workdir
    summary = run_references(
        where, parameters=parameters, workers=ctx.workers, scheduler=ctx.scheduler, progress=ctx.progress
    )
    if staged:
        replace_tree(WorkDir(where).references, live)
        remove_staging(ctx.workdir, "references")
    return {
        "pairs": summary.pairs,
        "converged": summary.converged,
        "folded": summary.folded,
        "usable": summary.usable,
        "excluded": summary.excluded,
        "residual_mean": summary.residual_mean,
    }


def _stage_train(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.common.staging import STAGING, remove_staging, replace_tree, shadow_workdir
    from svfnet.training.train import run_folder, train

    live = run_folder(ctx.workdir, "svfnet")
    staging = ctx.workdir / STAGING / "train"
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
        staged = live.exists()  # a model is there: the new one replaces it only when trained
    else:
        staged = staging.exists()  # an interrupted replacement resumes from its checkpoint
    where = shadow_workdir(ctx.workdir, "train", ("models/svfnet",), fresh=fresh) if staged else ctx.workdir
    folder = run_folder(where, "svfnet")
    config = _train_config(ctx.config)
    resume = (folder / "checkpoint.pt").is_file()
    result = train(where, None if resume else config, resume=resume, progress=ctx.progress)
    if staged:
        replace_tree(folder, live)
        remove_staging(ctx.workdir, "train")
    return {"checkpoint": str(live / "checkpoint.pt"), "steps": result.step}


def _stage_evaluate(ctx: StageContext, fresh: bool) -> dict[str, Any]:
    from svfnet.evaluation.evaluate import run_evaluation

    summary = run_evaluation(
        ctx.workdir,
        WorkDir(ctx.workdir).models / "svfnet" / "checkpoint.pt",
        workers=ctx.workers,
        progress=ctx.progress,
    )
    return summary


STAGE_FUNCTIONS: dict[str, Callable[[StageContext, bool], dict[str, Any]]] = {
    "data": _stage_data,
    "prepare": _stage_prepare,
    "split": _stage_split,
    "shapes": _stage_shapes,
    "references": _stage_references,
    "train": _stage_train,
    "evaluate": _stage_evaluate,
}


# ---------------------------------------------------------------------------------- fingerprints
def _read_split(workdir: Path) -> dict[str, list[str]]:
    from svfnet.data.split import split_path

    data = json.loads(split_path(workdir).read_text())
    return {side: list(data.get(side, [])) for side in ("train", "val", "test")}


def _listing_digest(folder: Path) -> str:
    """The files of a dataset folder as names, sizes and modification times (not their bytes: a
    dataset may be large, and a file rewritten is a file changed)."""
    entries = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            stat = path.stat()
            entries.append([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _grid_record(workdir: Path) -> dict[str, Any]:
    record = json.loads(WorkDir(workdir).subjects_json.read_text())
    return {"shape": record.get("shape"), "spacing_mm": record.get("spacing_mm")}


def stage_inputs(workdir: str | Path, config: dict[str, dict[str, Any]], stage: str) -> dict[str, Any]:
    """Digests of what ``stage`` reads from the work folder (its fingerprint, with its configuration):

    - ``prepare``: the dataset's files (names, sizes, modification times);
    - ``split``: the prepared subjects' ids;
    - ``shapes``: each prepared subject's labels and voxel size;
    - ``references``: the training and validation subjects, their landmarks, the grid;
    - ``train``: those subjects' images and labels, and their reference records (with
      ``targets = "references"``);
    - ``evaluate``: the test subjects' images and labels, and the checkpoint.

    Raises FileNotFoundError where an input is missing.
    """
    from svfnet.common.staging import file_digest
    from svfnet.common.workdir import prepared_digests, subject_ids

    workdir = Path(workdir)
    folder = WorkDir(workdir)
    ctx = StageContext(workdir, config, False)
    if stage == "data":
        return {}
    if stage == "prepare":
        dataset = _dataset_path(ctx)
        if not dataset.is_dir():
            raise FileNotFoundError(f"{dataset}: no such dataset folder")
        return {"dataset": _listing_digest(dataset)}
    if stage == "split":
        return {"subjects": subject_ids(workdir)}
    if stage == "shapes":
        return {"prepared": prepared_digests(workdir, parts=("labels",)), "grid": _grid_record(workdir)}
    split = _read_split(workdir)
    if stage == "references":
        subjects = sorted(split["train"] + split["val"])
        landmarks = {s: file_digest(folder.shapes / "landmarks" / f"{s}.npz") for s in subjects}
        return {"subjects": subjects, "landmarks": landmarks, "grid": _grid_record(workdir)}
    if stage == "train":
        subjects = sorted(split["train"] + split["val"])
        inputs: dict[str, Any] = {
            "train": split["train"],
            "val": split["val"],
            "prepared": prepared_digests(workdir, subjects),
        }
        if config["train"]["targets"] == "references":
            inputs["references"] = {
                s: file_digest(path)
                for s in subjects
                if (path := folder.references / "pairs" / f"{s}.json").is_file()
            }
        return inputs
    if stage == "evaluate":
        return {
            "test": split["test"],
            "val": split["val"],
            "prepared": prepared_digests(workdir, sorted(split["test"] or split["val"])),
            "checkpoint": file_digest(folder.models / "svfnet" / "checkpoint.pt"),
        }
    raise ValueError(f"stage_inputs(): unknown stage {stage!r}")


def _fingerprint(config: dict, stage: str, inputs: dict[str, Any]) -> str:
    sections: dict[str, Any] = {s: config[s] for s in _SECTIONS[stage]}
    if stage == "prepare":
        sections = {"data": {key: config["data"][key] for key in _PREPARE_KEYS}}
    elif stage == "data":
        keys = _DATA_KEYS if config["data"]["source"] == "synthetic" else ("source",)
        sections = {"data": {key: config["data"][key] for key in keys}}
    payload = json.dumps({"stage": stage, "sections": sections, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Where each stage's main output is, to tell whether it is still there.
def _output_present(workdir: Path, stage: str, config: dict) -> bool:
    folder = WorkDir(workdir)
    return {
        "data": lambda: config["data"]["source"] != "synthetic" or (workdir / "raw").is_dir(),
        "prepare": lambda: folder.subjects_json.is_file(),
        "split": lambda: (workdir / "split.json").is_file(),
        "shapes": lambda: (folder.shapes / "summary.json").is_file(),
        "references": lambda: (folder.references / "pairs").is_dir(),
        "train": lambda: (folder.models / "svfnet" / "checkpoint.pt").is_file(),
        "evaluate": lambda: (folder.evaluation / "evaluation.json").is_file(),
    }[stage]()


# ---------------------------------------------------------------------------------- before anything
# what each stage reads, by the stage that makes it
_NEEDS = {
    "prepare": ("data",),
    "split": ("prepare",),
    "shapes": ("prepare",),
    "references": ("prepare", "split", "shapes"),
    "train": ("prepare", "split", "references"),
    "evaluate": ("prepare", "split", "train"),
}
_MADE = {
    "data": "the dataset (WORKDIR/raw for the synthetic cohort)",
    "prepare": "the prepared subjects (WORKDIR/prepared)",
    "split": "the split (WORKDIR/split.json)",
    "shapes": "the landmarks (WORKDIR/shapes)",
    "references": "the reference SVFs (WORKDIR/references)",
    "train": "the model (WORKDIR/models/svfnet/checkpoint.pt)",
}


def _check_inputs(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """Every requested stage finds what it reads, on disk or made earlier in this run."""
    if not ctx.synthetic and ("data" in stages or "prepare" in stages):
        source = Path(ctx.config["data"]["source"])
        if not source.exists():
            raise FileNotFoundError(f"[data] source {source} does not exist")
    for stage in stages:
        for need in _NEEDS.get(stage, ()):
            if need == "references" and ctx.config["train"]["targets"] != "references":
                continue
            if need in stages or _output_present(ctx.workdir, need, ctx.config):
                continue
            raise FileNotFoundError(
                f"stage {stage} needs {_MADE[need]}, which {ctx.workdir} does not hold: add the {need} stage "
                f"(--stages {' '.join(s for s in STAGES if s in stages or s == need)})"
            )


def _check_resources(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """The cohort's size, the memory and the disk the requested stages need, against the limits and
    this machine (estimates: :mod:`svfnet.common.limits`)."""
    from svfnet.common.workdir import subject_ids
    from svfnet.data.split import split_sizes

    config, workdir = ctx.config, ctx.workdir
    data = config["data"]
    grid = tuple(data["shape"])
    count = None
    if ctx.synthetic and ("data" in stages or not (workdir / "raw").is_dir()):
        count = data["subjects"]
        if "data" in stages:
            limits.check_disk(
                limits.synthetic_disk_bytes(count, data["realism"]),
                workdir,
                f"the synthetic cohort of {count:,} subjects",
                "lower [data] subjects",
            )
    if "prepare" in stages:
        if ctx.synthetic and "data" in stages:
            largest = 3_000_000 if data["realism"] == "clinical" else 300_000
            limits.check_memory(
                limits.prepare_memory_bytes(grid, largest),
                f"preparing on a {'x'.join(map(str, grid))} grid",
                "use a smaller [data] shape (64 x 64 x 16 needs about 0.3 GB)",
            )
        else:
            from svfnet.data.prepare import check_preparation

            dataset = _read_dataset(ctx)
            count = len(dataset)
            check_preparation(dataset, grid)
    if count is None and WorkDir(workdir).subjects_json.is_file() and "prepare" not in stages:
        count = len(subject_ids(workdir))
    if count is None:
        return
    if count > limits.MAX_SUBJECTS:
        raise limits.ResourceError(
            f"the cohort has {count:,} subjects, above the limit of {limits.MAX_SUBJECTS:,}"
        )
    split_file = workdir / "split.json"
    if "split" not in stages and split_file.is_file() and "prepare" not in stages:
        split = _read_split(workdir)
        n_train, n_val, n_test = len(split["train"]), len(split["val"]), len(split["test"])
    else:
        try:
            n_train, n_val, n_test = split_sizes(
                count,
                test_fraction=config["split"]["test_fraction"],
                val_fraction=config["split"]["val_fraction"],
            )
        except ValueError as error:
            raise ValueError(f"a cohort of {count} subjects cannot be split: {error}") from None
    if "evaluate" in stages and n_test < 2 and n_val < 2:
        raise ValueError(
            f"stage evaluate needs at least 2 test (or validation) subjects: {count} subjects with [split] "
            f"test_fraction = {config['split']['test_fraction']} give {n_test}; add subjects or raise test_fraction"
        )
    pairs_subjects = n_train + n_val
    if "references" in stages:
        dtype = config["references"]["dtype"]
        limits.check_disk(
            limits.references_disk_bytes(pairs_subjects, grid, dtype),
            workdir,
            f"the reference SVFs of {pairs_subjects:,} subjects' {pairs_subjects * (pairs_subjects - 1):,} pairs",
            'use fewer subjects, a smaller grid or [references] dtype = "float16"',
        )
        workers = ctx.workers or os.cpu_count() or 1
        limits.check_memory(
            limits.references_memory_bytes(
                config["shapes"]["landmarks"],
                grid,
                workers,
                deformation=config["references"]["deformation"],
                subjects=pairs_subjects,
            ),
            f"the references stage with {config['shapes']['landmarks']:,} landmarks on {workers} workers",
            "use fewer [shapes] landmarks or [run] workers",
        )
    if "train" in stages:
        model, train = config["model"], config["train"]
        limits.check_memory(
            limits.train_memory_bytes(
                grid, model["widths"], model["convs_per_level"], train["batch_size"], pairs_subjects
            ),
            f"training on a {'x'.join(map(str, grid))} grid with batches of {train['batch_size']} and widths {model['widths']}",
            "use a smaller [train] batch_size, [model] widths or [data] shape",
        )


def _warn_stale(ctx: StageContext, stages: tuple[str, ...]) -> None:
    """Stages left out of this run whose outputs are older than the configuration or their inputs."""
    for stage in STAGES:
        if stage in stages:
            continue
        marker = ctx.workdir / "stages" / f"{stage}.json"
        if not marker.is_file():
            continue
        try:
            fingerprint = _fingerprint(ctx.config, stage, stage_inputs(ctx.workdir, ctx.config, stage))
            state = json.loads(marker.read_text())
        except (OSError, ValueError, KeyError):
            continue
        if state.get("fingerprint") != fingerprint or not state.get("finished"):
            log.warning(
                "stage %s is not up to date with this configuration and its inputs (left out of this run: "
                "--stages)",
                stage,
            )


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
    """Runs the stages in order, skipping those up to date and resuming the interrupted one.

    Before any stage runs: the configuration is validated (:func:`validate_config`), the work folder
    locked (:mod:`svfnet.common.locks`; a second run is refused, naming the holder), replacements a killed
    run left half done are finished or undone, and every requested stage's inputs, the cohort's
    size, and the memory and disk the stages need are checked. Nothing is written before that.
    """
    from svfnet.common.locks import folder_lock
    from svfnet.common.staging import recover_workdir

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"run_pipeline(): unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
    stages = tuple(stage for stage in STAGES if stage in stages)
    validate_config(config)
    workdir = Path(workdir)
    ctx = StageContext(workdir, config, progress)
    with folder_lock(workdir, f"the work folder {workdir}"):
        recover_workdir(workdir)
        _check_inputs(ctx, stages)
        _check_resources(ctx, stages)
        _warn_stale(ctx, stages)
        write_json(workdir / "config.json", config)
        with atomic_path(workdir / "config.toml") as temporary:
            temporary.write_text(render_config(config))
        outcomes = []
        for stage in stages:
            fingerprint = _fingerprint(config, stage, stage_inputs(workdir, config, stage))
            marker = workdir / "stages" / f"{stage}.json"
            state = json.loads(marker.read_text()) if marker.is_file() else {}
            same = state.get("fingerprint") == fingerprint
            if same and state.get("finished") and _output_present(workdir, stage, config):
                outcome = StageOutcome(stage, "skipped", 0.0, state.get("result", {}))
            else:
                resumed = same and not state.get("finished")
                write_json(marker, {"fingerprint": fingerprint, "finished": False})
                log.info("stage %s: %s", stage, "resuming" if resumed else "running")
                started = time.perf_counter()
                result = STAGE_FUNCTIONS[stage](ctx, not resumed)
                seconds = time.perf_counter() - started
                write_json(
                    marker,
                    {"fingerprint": fingerprint, "finished": True, "seconds": seconds, "result": result},
                )
                outcome = StageOutcome(stage, "resumed" if resumed else "ran", seconds, result)
            outcomes.append(outcome)
            if on_stage is not None:
                on_stage(outcome)
    return outcomes
