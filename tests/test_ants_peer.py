"""ANTs SyN with cross-correlation as a peer of ``svfnet evaluate`` (``--ants``, antspyx).

The convention test registers a smooth blob to a copy of itself shifted by a known amount in plane,
on a grid with unequal in-plane spacing, so that an axis swap, a sign error or millimetres taken for
voxels each show. The tests that run ANTs skip when antspyx is not importable (it is an optional
extra: ``pip install 'svfnet[ants]'``); the missing-package error is tested without it.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from svfnet.baselines.peers import ANTS_DEFAULTS
from svfnet.evaluation.evaluate import run_evaluation
from svfnet.evaluation.tables import METHOD_NAMES, METHODS
from svfnet.ops import fields

NEEDS_ANTS = "antspyx is not installed (optional extra: pip install 'svfnet[ants]')"

# unequal in-plane spacing: dividing by the other axis' spacing scales a component by 4/3 or 3/4
GRID = (32, 32, 8)
SPACING_MM = (1.5, 2.0, 6.0)
SHIFT_VOX = np.array([1.5, -1.0, 0.0])  # fixed(x) = moving(x + SHIFT_VOX)
FAST = {"iterations": [40, 20, 10], "cc_radius": 2}


def _ants():
    try:
        import ants
    except ImportError:
        pytest.skip(NEEDS_ANTS)
    return ants


def _blob(centre_vox: np.ndarray) -> np.ndarray:
    """Two overlapping anisotropic Gaussians (widths in mm), float32 ``GRID``."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in GRID], indexing="ij")
    d = [(axis - c) * s for axis, c, s in zip((i, j, k), centre_vox, SPACING_MM, strict=True)]
    big = np.exp(-(d[0] ** 2 + d[1] ** 2) / (2 * 8.0**2) - d[2] ** 2 / (2 * 14.0**2))
    small = np.exp(-((d[0] - 7.0) ** 2 + (d[1] + 6.0) ** 2) / (2 * 4.0**2) - d[2] ** 2 / (2 * 14.0**2))
    return (big + 0.6 * small).astype(np.float32)


def test_ants_syn_displacement_is_ours_voxels_pull_back(monkeypatch):
    ants = _ants()
    from svfnet.baselines.peers import ants_syn

    outputs = []
    registration = ants.registration

    def keeping(*args, **kwargs):  # ANTs' own resampling of the moving image onto the fixed grid
        result = registration(*args, **kwargs)
        outputs.append(result["warpedmovout"].numpy())
        return result

    monkeypatch.setattr(ants, "registration", keeping)
    centre = np.array([15.5, 15.5, 3.5])
    moving, fixed = _blob(centre), _blob(centre - SHIFT_VOX)
    disp = ants_syn(moving, fixed, SPACING_MM, **FAST)
    assert disp.shape == (3, *GRID) and disp.dtype == np.float32 and np.isfinite(disp).all()

    # our warp through the converted field is ANTs' warped moving image: axes, signs and millimetres
    # are converted exactly (whatever ANTs' accuracy)
    warped = np.asarray(fields.warp(moving, disp))
    inner = (slice(4, -4), slice(4, -4), slice(1, -1))
    np.testing.assert_allclose(warped[inner], outputs[0][inner], atol=1e-5)
    before = float(np.sqrt(np.mean((moving - fixed)[inner] ** 2)))
    after = float(np.sqrt(np.mean((warped - fixed)[inner] ** 2)))
    assert after < 0.2 * before, (before, after)

    # the displacement where the image has structure: the known shift, in voxels, per axis (ANTs
    # stops short of it by 10-15% here; the other axis' spacing would give 1.0 and -1.2, mm 1.9 and -1.8)
    weights = fixed[inner]
    mean = [float((disp[c][inner] * weights).sum() / weights.sum()) for c in range(3)]
    assert mean[0] == pytest.approx(SHIFT_VOX[0], abs=0.3), mean
    assert mean[1] == pytest.approx(SHIFT_VOX[1], abs=0.15), mean
    assert abs(mean[2]) < 0.1, mean
    # seeded, on a fixed thread count: the same field again
    np.testing.assert_array_equal(ants_syn(moving, fixed, SPACING_MM, **FAST), disp)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_ants_syn_in_the_evaluation_tables_and_report(tmp_path):
    _ants()
    from tests.test_evaluate import TEST_SUBJECTS, _cohort

    checkpoint = _cohort(tmp_path)
    result = run_evaluation(
        tmp_path,
        checkpoint,
        workers=1,
        progress=False,
        methods=("svfnet", "identity"),
        include_ants=True,
        ants_params={"iterations": [10, 10]},
    )
    methods = ["svfnet", "ants_syn", "identity"]
    assert result["methods"] == methods and result["failed"] == 0
    assert result["computed"] == {method: 6 for method in methods}
    folder = tmp_path / "evaluation"
    pairs = [r for r in _read_csv(folder / "pairs.csv") if r["method"] == "ants_syn"]
    assert {(r["moving"], r["fixed"]) for r in pairs} == {
        (m, f) for m in TEST_SUBJECTS for f in TEST_SUBJECTS if m != f
    }
    for row in pairs:
        assert row["error"] == "" and math.isfinite(float(row["seconds"])) and int(row["threads"]) >= 1
    rows = _read_csv(folder / "pairs.csv")

    def mean_dice(method):
        return np.mean(
            [float(r["dice"]) for r in rows if r["method"] == method and r["name"] == "LV myocardium"]
        )

    # axes or directions mixed up would make the overlap worse than no registration (measured on this
    # tiny cohort: 0.416 against 0.375; 40 + 20 iterations gave no more)
    assert mean_dice("ants_syn") > mean_dice("identity") + 0.02
    summary = _read_csv(folder / "summary.csv")
    assert any(r["method"] == "ants_syn" and r["metric"] == "seconds" for r in summary)
    assert {r["baseline"] for r in _read_csv(folder / "statistics.csv")} == {"ants_syn", "identity"}
    report = (folder / "report.html").read_text()
    assert METHOD_NAMES["ants_syn"] in report and "cc_radius = 2" in report
    record = (folder / "records" / "ants_syn" / "s1__s2.json").read_text()
    assert '"error": null' in record
    # the same settings again: nothing recomputed; other settings: ANTs again, the others kept
    again = run_evaluation(
        tmp_path,
        checkpoint,
        workers=1,
        progress=False,
        methods=("svfnet", "identity"),
        include_ants=True,
        ants_params={"iterations": [10, 10]},
        report=False,
    )
    assert again["computed"] == {method: 0 for method in methods}
    changed = run_evaluation(
        tmp_path,
        None,
        workers=1,
        progress=False,
        methods=("identity",),
        include_ants=True,
        ants_params={"iterations": [5]},
        report=False,
    )
    assert changed["computed"] == {"ants_syn": 6, "identity": 0}


def test_missing_antspyx_is_said_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ants", None)  # `import ants` now raises ImportError
    workdir = tmp_path / "work"  # not even a work folder: the package is checked first
    with pytest.raises(ImportError, match=r"antspyx.*svfnet\[ants\]"):
        run_evaluation(workdir, None, methods=("identity",), include_ants=True, progress=False)
    assert not workdir.exists()

    from svfnet.cli import main

    workdir.mkdir()
    assert main(["evaluate", str(workdir), "--ants", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "antspyx" in err and "svfnet[ants]" in err and "Traceback" not in err
    assert not (workdir / "evaluation").exists()


def test_ants_settings_are_checked():
    assert "ants_syn" in METHODS and METHODS.index("ants_syn") < METHODS.index("identity")
    from svfnet.baselines.peers import ants_settings

    assert ants_settings(None) == {**ANTS_DEFAULTS, "iterations": list(ANTS_DEFAULTS["iterations"])}
    assert ants_settings({"iterations": 7})["iterations"] == [7]
    for bad in (
        {"radius": 2},
        {"iterations": []},
        {"iterations": [10, -1]},
        {"cc_radius": 0},
        {"grad_step": 0.0},
        {"flow_sigma": math.nan},
        {"random_seed": "one"},
    ):
        with pytest.raises(ValueError, match="ants_params"):
            ants_settings(bad)
