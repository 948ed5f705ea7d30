"""svfnet run: configuration files, and stages skipped, resumed or recomputed by fingerprint."""

from __future__ import annotations

import csv
import json

import pytest

from svfnet.cli import main
from svfnet.config import DEFAULTS, load_config, render_config
from svfnet.pipeline import run_pipeline


def test_config_round_trips_through_toml(tmp_path):
    path = tmp_path / "run.toml"
    config = load_config(
        overrides={"data": {"subjects": 7, "shape": [32, 32, 8]}, "train": {"learning_rate": 5e-4}}
    )
    path.write_text(render_config(config))
    assert load_config(path) == config
    assert set(load_config()) == set(DEFAULTS)


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nstepz = 3\n")
    with pytest.raises(ValueError, match="unknown key 'stepz' in \\[train\\]"):
        load_config(path)
    path.write_text("[training]\nsteps = 3\n")
    with pytest.raises(ValueError, match="unknown section \\[training\\]"):
        load_config(path)
    path.write_text("[train]\nsteps = 'many'\n")
    with pytest.raises(ValueError, match="steps must be a int"):
        load_config(path)
    path.write_text('[data]\nrealism = "lifelike"\n')
    with pytest.raises(ValueError, match="realism must be one of 'standard', 'clinical'"):
        load_config(path)
    path.write_text('[data]\nheader_style = "acdc"\n')
    with pytest.raises(ValueError, match='set realism = "clinical"'):
        load_config(path)
    path.write_text("[train\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)


def test_config_defaults_command_prints_every_key(capsys):
    assert main(["config", "--defaults"]) == 0
    text = capsys.readouterr().out
    for section, keys in DEFAULTS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} = " in text


def test_stages_skip_when_up_to_date_and_rerun_downstream_on_change(tmp_path):
    config = load_config(overrides={"data": {"subjects": 4, "seed": 3}})
    stages = ("data", "prepare", "split")
    first = run_pipeline(tmp_path, config, stages=stages, progress=False)
    assert [o.status for o in first] == ["ran", "ran", "ran"]
    assert first[2].result == {"train": 2, "val": 1, "test": 1}
    again = run_pipeline(tmp_path, config, stages=stages, progress=False)
    assert [o.status for o in again] == ["skipped", "skipped", "skipped"]
    # a new split seed recomputes the split only
    changed = load_config(overrides={"data": {"subjects": 4, "seed": 3}, "split": {"seed": 1}})
    third = run_pipeline(tmp_path, changed, stages=stages, progress=False)
    assert [o.status for o in third] == ["skipped", "skipped", "ran"]
    # an interrupted stage (started, not finished) resumes with the same fingerprint
    marker = tmp_path / "stages" / "split.json"
    state = json.loads(marker.read_text())
    marker.write_text(json.dumps({"fingerprint": state["fingerprint"], "finished": False}))
    fourth = run_pipeline(tmp_path, changed, stages=stages, progress=False)
    assert [o.status for o in fourth] == ["skipped", "skipped", "resumed"]
    assert (tmp_path / "config.toml").is_file() and load_config(tmp_path / "config.toml") == changed


def test_realistic_demo_draws_the_clinical_cohort():
    from svfnet.config import demo_config

    assert demo_config()["data"]["realism"] == "standard"
    realistic = demo_config(quick=True, realistic=True)
    assert realistic["data"]["realism"] == "clinical"
    assert {k: v for k, v in realistic.items() if k != "data"} == {
        k: v for k, v in demo_config(quick=True).items() if k != "data"
    }


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown stages"):
        run_pipeline(tmp_path, load_config(), stages=("evaluate", "deploy"), progress=False)


def test_demo_quick_end_to_end_then_skips_everything(tmp_path, capsys):
    """`svfnet demo --quick` produces the report; a second run finds every stage up to date."""
    workdir = tmp_path / "demo"
    assert main(["demo", "--quick", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = workdir / "evaluation" / "report.html"
    assert report.is_file() and f"report: {report}" in out
    # the printed headline carries the summary's values, not only its words
    with (workdir / "evaluation" / "summary.csv").open(newline="") as handle:
        summary = {(row["method"], row["name"], row["metric"]): row for row in csv.DictReader(handle)}
    for line in out.splitlines():
        if line.startswith("  LV myocardium: "):
            printed = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", "))
            break
    else:
        raise AssertionError(f"no LV myocardium line in:\n{out}")
    assert float(printed["SVF-Net"]) == pytest.approx(
        float(summary[("svfnet", "LV myocardium", "dice")]["mean"]), abs=5e-4
    )
    lcc = float(summary[("lcc_demons", "LV myocardium", "dice")]["mean"])
    assert float(printed["LCC Log-Demons"]) == pytest.approx(lcc, abs=5e-4) and 0.0 < lcc <= 1.0
    assert "median time per registration" in out
    for stage in ("data", "prepare", "split", "shapes", "references", "train", "evaluate"):
        assert f"[{stage}] ran" in out
    assert main(["demo", "--quick", "--workdir", str(workdir), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert again.count("skipped") == 7


def test_pipeline_killed_during_training_resumes(tmp_path, monkeypatch):
    import svfnet.pipeline as pipeline_module  # the stage calls the name it imported
    from svfnet.config import demo_config

    config = demo_config(quick=True)
    config["data"]["subjects"] = 6
    config["train"].update(steps=20, checkpoint_every=5, validate_every=10)
    config["model"]["widths"] = [4, 8, 8, 8]
    real_train = pipeline_module.run_training

    class Killed(Exception):
        pass

    def kill_at_step_12(step: int) -> None:
        if step == 12:
            raise Killed

    monkeypatch.setattr(
        pipeline_module, "run_training", lambda *a, **k: real_train(*a, **k, on_step=kill_at_step_12)
    )
    with pytest.raises(Killed):
        run_pipeline(
            tmp_path,
            config,
            stages=("data", "prepare", "split", "shapes", "references", "train"),
            progress=False,
        )
    monkeypatch.setattr(pipeline_module, "run_training", real_train)
    outcomes = run_pipeline(
        tmp_path, config, stages=("data", "prepare", "split", "shapes", "references", "train"), progress=False
    )
    assert [o.status for o in outcomes] == ["skipped"] * 5 + ["resumed"]
    assert outcomes[-1].result["steps"] == 20
    steps = [
        int(line.split(",")[0])
        for line in (tmp_path / "models" / "svfnet" / "log.csv").read_text().splitlines()[1:]
    ]
    assert steps == list(range(1, 21))
