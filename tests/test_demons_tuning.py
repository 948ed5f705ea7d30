"""LCC Log-Demons tuned on a work folder's own training pairs (svfnet.baselines.tuning, svfnet demons --tune).

On a tiny cohort (16×16×4, tests/pipeline_fixtures.py) with a two-configuration grid, two pairs and
one level of a few iterations, so that each search takes about a second.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from svfnet.baselines import lcc_demons
from svfnet.baselines.tuning import (
    draw_pairs,
    read_tuned_params,
    record_path,
    tune_lcc_demons,
)
from svfnet.baselines.tuning_search import DEFAULT_GRID, select_configuration
from svfnet.common.workdir import REGIONS, read_prepared, write_prepared_subject
from svfnet.evaluation import metrics
from svfnet.ops import fields
from tests.pipeline_fixtures import SPACING_MM, deformed_cohort, write_split

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("s0", "s1", "s2", "s3")
# two configurations that differ (the small sigma_i takes long steps, the large one barely moves)
GRID = {"sigma_i": [0.01, 0.5], "levels": [1], "iterations": [8]}


@pytest.fixture()
def cohort(tmp_path) -> Path:
    workdir = tmp_path / "work"
    deformed_cohort(workdir, count=6)
    write_split(workdir, train=TRAIN, val=["s4"], test=["s5"])
    return workdir


def _dice_of(workdir: Path, params: dict, moving_id: str, fixed_id: str) -> float:
    """The mean Dice over the regions of one pair, computed here from the pieces (no tuning code)."""
    moving, fixed = read_prepared(workdir, moving_id), read_prepared(workdir, fixed_id)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    svf = lcc_demons.register(moving.image, fixed.image, spacing=fixed.spacing_mm, **overrides)
    warped = np.asarray(fields.warp_labels(moving.labels, fields.exp(svf)))
    values = [metrics.dice(warped == r, fixed.labels == r) for r in REGIONS]
    return float(np.nanmean(values))


def test_the_record_holds_the_search_and_the_best_configuration_that_does_not_fold(cohort):
    result = tune_lcc_demons(cohort, pairs=2, grid=GRID, workers=1, progress=False)
    path = record_path(cohort)
    assert result.path == path and path == cohort / "evaluation" / "demons_tuning.json"
    record = json.loads(path.read_text())

    assert record["grid"] == GRID
    assert len(record["pairs"]) == 2 and record["pairs_requested"] == 2
    for moving_id, fixed_id in record["pairs"]:
        assert moving_id in TRAIN and fixed_id in TRAIN and moving_id != fixed_id  # never val or test
    assert record["training_subjects"] == list(TRAIN)
    assert set(record["fingerprint"]["subjects"]) == set(TRAIN)

    configurations = record["configurations"]
    assert [c["params"]["sigma_i"] for c in configurations] == [0.01, 0.5]
    for entry in configurations:
        assert set(entry["dice_per_region"]) == set(REGIONS.values())
        assert len(entry["per_pair"]) == 2 and entry["failed_pairs"] == []
        assert math.isfinite(entry["mean_hausdorff95_mm"]) and entry["seconds"] > 0
        assert entry["eligible"] == (not entry["folding_pairs"])
        # the mean over regions and pairs, every pair having the same regions here
        assert entry["mean_dice"] == pytest.approx(np.mean([p["mean_dice"] for p in entry["per_pair"]]))
    # the two settings give different results, so the choice is a real one
    assert configurations[0]["mean_dice"] != pytest.approx(configurations[1]["mean_dice"], abs=1e-6)
    eligible = [n for n, c in enumerate(configurations) if not c["folding_pairs"]]
    assert eligible, "a configuration of the test grid folded: the test needs at least one that does not"
    best = max(eligible, key=lambda n: configurations[n]["mean_dice"])
    assert record["selected_index"] == best == result.selected
    assert record["selected"] == configurations[best]["params"]
    assert record["selected_params"]["sigma_i"] == configurations[best]["params"]["sigma_i"]
    assert record["selected_params"]["sigma_lcc_mm"] == record["defaults"]["sigma_lcc_mm"]  # not searched
    assert record["identity"]["mean_dice"] < configurations[best]["mean_dice"]

    # the recorded Dice of a pair is what registering it with those parameters gives
    pair = configurations[best]["per_pair"][0]
    assert pair["mean_dice"] == pytest.approx(
        _dice_of(cohort, record["selected_params"], pair["moving"], pair["fixed"]), abs=1e-9
    )
    assert read_tuned_params(cohort) == record["selected_params"]


def test_a_record_goes_stale_when_a_training_subject_is_prepared_again(cohort, caplog):
    tune_lcc_demons(cohort, pairs=2, grid=GRID, workers=1, progress=False)
    selected = read_tuned_params(cohort)
    assert selected is not None

    # a test subject prepared again: the search never read it, the record still holds
    test_subject = read_prepared(cohort, "s5")
    write_prepared_subject(cohort, "s5", test_subject.image * 1.1, test_subject.labels, SPACING_MM, {})
    assert read_tuned_params(cohort) == selected

    subject = read_prepared(cohort, "s1")
    write_prepared_subject(cohort, "s1", subject.image * 0.9 + 0.05, subject.labels, SPACING_MM, {})
    with caplog.at_level(logging.WARNING, logger="svfnet.baselines.tuning"):
        assert read_tuned_params(cohort) is None
    assert "s1" in caplog.text and "prepared again" in caplog.text

    caplog.clear()
    write_split(cohort, train=("s0", "s1", "s2"), val=["s3", "s4"], test=["s5"])  # another split
    with caplog.at_level(logging.WARNING, logger="svfnet.baselines.tuning"):
        assert read_tuned_params(cohort) is None
    assert "training subjects changed" in caplog.text


def test_no_record_reads_as_none(cohort):
    assert read_tuned_params(cohort) is None


def test_pairs_are_spread_and_between_patients_first():
    ids = [f"p{n}" for n in range(5)]
    pairs = draw_pairs(ids, 5)
    assert pairs == draw_pairs(list(reversed(ids)), 5)  # deterministic, whatever the order given
    assert sorted(m for m, _ in pairs) == ids and sorted(f for _, f in pairs) == ids
    every = draw_pairs(ids, 100)
    assert len(every) == len(set(every)) == 20 and all(m != f for m, f in every)
    frames = [f"patient{n}_{phase}" for n in range(3) for phase in ("ED", "ES")]
    ordered = draw_pairs(frames, 30)
    same = [m.split("_")[0] == f.split("_")[0] for m, f in ordered]
    assert same == sorted(same) and sum(same) == 6  # the 6 pairs within a patient come last


def test_selection_refuses_folding_and_failing_configurations():
    entries = [
        {"mean_dice": 0.9, "folding_pairs": [["a", "b"]], "failed_pairs": []},
        {"mean_dice": 0.95, "folding_pairs": [], "failed_pairs": [{"moving": "a", "fixed": "b"}]},
        {"mean_dice": 0.7, "folding_pairs": [], "failed_pairs": []},
        {"mean_dice": 0.8, "folding_pairs": [], "failed_pairs": []},
        {"mean_dice": 0.8, "folding_pairs": [], "failed_pairs": []},
        {"mean_dice": float("nan"), "folding_pairs": [], "failed_pairs": []},
    ]
    assert select_configuration(entries) == 3  # the best that neither folds nor fails; first of a tie
    assert select_configuration(entries[:2]) is None


def test_the_default_grid_is_around_the_defaults_and_small():
    configurations = math.prod(len(values) for values in DEFAULT_GRID.values())
    assert 12 <= configurations <= 18
    defaults = lcc_demons.LCCDemonsParams()
    assert all(getattr(defaults, name) in values for name, values in DEFAULT_GRID.items())


def test_bad_inputs_are_refused_before_any_work(cohort, tmp_path):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="'pairs'"):
            tune_lcc_demons(cohort, pairs=bad, grid=GRID, progress=False)
    with pytest.raises(ValueError, match="'workers'"):
        tune_lcc_demons(cohort, pairs=2, grid=GRID, workers=0, progress=False)
    with pytest.raises(ValueError, match="'grid'.*sigma_lcc"):
        tune_lcc_demons(cohort, grid={"sigma_lcc": [5.0]}, progress=False)
    with pytest.raises(ValueError, match="'grid' entry 'sigma_i'"):
        tune_lcc_demons(cohort, grid={"sigma_i": []}, progress=False)
    with pytest.raises(ValueError, match="'grid' configuration.*sigma_fluid_mm"):
        tune_lcc_demons(cohort, grid={"sigma_fluid_mm": [2.0, -1.0]}, progress=False)
    with pytest.raises(ValueError, match="'workdir'.*no prepared subjects"):
        tune_lcc_demons(tmp_path / "empty", grid=GRID, progress=False)
    write_split(cohort, train=["s0"], val=["s1", "s2"], test=["s3", "s4", "s5"])
    with pytest.raises(ValueError, match="'workdir'.*1 training subject"):
        tune_lcc_demons(cohort, grid=GRID, progress=False)
    assert not (cohort / "evaluation").exists()


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from svfnet.common.locks import folder_lock
        with folder_lock({str(folder)!r}):
            print("held", flush=True)
            time.sleep(300)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_command_line_writes_the_record_and_prints_the_table(cohort, capsys):
    from svfnet.cli import main

    grid = ["--grid", "sigma_i=0.01,0.5", "--grid", "levels=1", "--grid", "iterations=8"]
    argv = ["demons", "--tune", str(cohort), "--pairs", "2", *grid, "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    record = json.loads(record_path(cohort).read_text())
    assert record["grid"] == GRID and record["workers"] == 2 and len(record["pairs"]) == 2
    assert "| sigma_i | levels | iterations | mean Dice |" in out
    assert "identity: mean Dice" in out and "selected: sigma_i = " in out
    assert str(record_path(cohort)) in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "mean Dice" not in line]
    assert len(rows) == 2 and sum(row.startswith("| **") for row in rows) == 1  # the selected one in bold
    assert read_tuned_params(cohort) == record["selected_params"]

    # the flags of the other mode are refused, in one line, before any work
    for extra, flag in ((["--sigma-lcc", "4"], "--sigma-lcc"), (["--out", "x"], "--out")):
        assert main([*argv, *extra]) == 2
        assert flag in capsys.readouterr().err
    assert main(["demons", "--pairs", "2", "--out", "x"]) == 2
    assert "--pairs only go(es) with --tune" in capsys.readouterr().err
    assert main(["demons", "--out", "x"]) == 2
    assert "required: --moving, --fixed" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # argparse: NAME=V needed
        main(["demons", "--tune", str(cohort), "--grid", "sigma_i"])
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["demons", "--tune", str(cohort), "--grid", "sigma_i=0.1", "--grid", "sigma_i=0.2"]) == 2
    assert "given twice" in capsys.readouterr().err

    # a work folder another svfnet process writes to is refused, naming it
    holder = _hold_lock(cohort)
    try:
        assert main(argv) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_evaluation_runs_the_demons_with_the_parameters_tuned_on_the_training_pairs(tmp_path):
    from svfnet.evaluation.evaluate import run_evaluation

    workdir = tmp_path / "work"
    deformed_cohort(workdir, count=6)
    write_split(workdir, train=TRAIN, test=["s4", "s5"])
    quick = {"iterations": 5}  # the tuned configuration but fewer iterations
    before = run_evaluation(workdir, None, methods=("lcc_demons",), workers=1, progress=False, report=False)
    assert (
        before["demons_params_source"].startswith("the defaults")
        and "no `svfnet demons --tune`" in (before["demons_params_source"])
    )
    tune_lcc_demons(workdir, pairs=2, grid=GRID, workers=1, progress=False)
    selected = read_tuned_params(workdir)
    assert selected is not None and selected["sigma_i"] != lcc_demons.LCCDemonsParams().sigma_i
    result = run_evaluation(workdir, None, methods=("lcc_demons",), workers=1, progress=False)
    assert result["computed"] == {"lcc_demons": 2}  # other settings than the defaults': run again
    assert result["demons_params_source"].startswith("tuned on this cohort's training pairs")
    rows = [r for r in _read_rows(workdir / "evaluation" / "pairs.csv") if r["moving"] == "s4"]
    region_dice = [
        float(r["dice"]) for r in rows if r["name"] != "whole grid" and r["dice"] != ""
    ]  # RV myocardium: nan
    independent = _dice_of(workdir, selected, "s4", "s5")
    assert math.isclose(float(np.nanmean(region_dice)), independent, abs_tol=1e-6)
    report = (workdir / "evaluation" / "report.html").read_text()
    assert any(f"tuned on this cohort{q}s training pairs" in report for q in ("'", "&#x27;"))
    # explicit parameters win over the tuned ones, and the defaults can be asked for
    explicit = run_evaluation(
        workdir, None, methods=("lcc_demons",), workers=1, progress=False, demons_params=quick, report=False
    )
    assert explicit["computed"] == {"lcc_demons": 2}
    assert explicit["demons_params_source"].endswith("given explicitly: iterations")
    untuned = run_evaluation(
        workdir, None, methods=("lcc_demons",), workers=1, progress=False, tuned_demons=False, report=False
    )
    assert untuned["computed"] == {"lcc_demons": 2}  # a pair keeps the record of its last settings
    assert untuned["demons_params_source"].startswith("the defaults (tuning not used")


def _read_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
