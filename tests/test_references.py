"""The references stage: EBS + logarithm per pair, stored compactly, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svfnet.common.workdir import WorkDir
from svfnet.ops import fields
from svfnet.ops.ebs import fit_ebs
from svfnet.references.stage import ReferenceParameters, run_references
from svfnet.references.store import ReferenceStore
from svfnet.shapes.landmarks import write_landmarks
from svfnet.shapes.lddmm import LddmmParameters, control_point_grid, geodesic_flow
from tests.pipeline_fixtures import GRID, SPACING_MM, deformed_cohort, write_split
from tests.test_fields import lands_inside

EBS = ReferenceParameters(deformation="ebs")  # the elastic body spline through the landmarks


def write_cohort_landmarks(workdir, subjects, rng):
    """Landmarks spread over the heart region, moved smoothly per subject (mm)."""
    base = rng.uniform([12, 12, 5], [48, 48, 25], size=(60, 3))
    points = {}
    for n, subject in enumerate(subjects):
        shift = 2.0 * np.sin(base[:, [1, 0, 2]] / 15.0 + n) * np.array([1.0, 1.0, 0.2]) if n else 0.0
        points[subject] = base + shift
        write_landmarks(
            WorkDir(workdir).shapes / "landmarks" / f"{subject}.npz", points[subject], {"test": True}, {}
        )
    return points


def write_flows(workdir, momenta, landmarks_template_mm):
    """The shapes stage's output for known LDDMM flows: ``momenta`` {subject: (Q, 3) or None for the
    template} on a control grid over the test grid, landmarks flowed from ``landmarks_template_mm``.
    Returns {subject: GeodesicFlow or None}."""
    from svfnet.common.atomic import write_json

    parameters = LddmmParameters()
    control = control_point_grid(np.array([[0.0, 0.0, 0.0], np.subtract(GRID, 1) * SPACING_MM]), 20.0, 10.0)
    template = next(subject for subject, p in momenta.items() if p is None)
    write_json(
        WorkDir(workdir).shapes / "config.json",
        {
            "template": template,
            "lddmm": {
                "sigma_v_mm": parameters.sigma_v_mm,
                "time_steps": parameters.time_steps,
                "integrator": parameters.integrator,
                "dtype": parameters.dtype,
            },
        },
    )
    flows = {}
    for subject, p in momenta.items():
        path = WorkDir(workdir).shapes / "landmarks" / f"{subject}.npz"
        if p is None:  # the template: its own landmarks, no momenta (as the shapes stage writes it)
            flows[subject] = None
            write_landmarks(path, landmarks_template_mm, {}, {})
            continue
        flows[subject] = geodesic_flow(control, p, parameters)
        write_landmarks(
            path,
            flows[subject].transform_points(landmarks_template_mm),
            {},
            {"momenta": p, "control_points_mm": control},
        )
    return flows


def random_momenta(seed, amplitude_mm, count=4):
    """Momenta for subjects s1..s{count-1} (s0 is the template), smooth in plane, small along k."""
    control = control_point_grid(np.array([[0.0, 0.0, 0.0], np.subtract(GRID, 1) * SPACING_MM]), 20.0, 10.0)
    rng = np.random.default_rng(seed)
    momenta = {"s0": None}
    for n in range(1, count):
        momenta[f"s{n}"] = rng.normal(0, amplitude_mm, control.shape) * np.array([1.0, 1.0, 0.2])
    return momenta


def composed(flows, moving, fixed):
    """φ_moving ∘ φ_fixed⁻¹ − id on the test grid, voxels, by the flows themselves (no table)."""
    points = (
        np.stack(np.meshgrid(*[np.arange(n) for n in GRID], indexing="ij"), axis=-1).reshape(-1, 3)
        * SPACING_MM
    )
    back = points if flows[fixed] is None else flows[fixed].inverse_transform_points(points)
    moved = back if flows[moving] is None else flows[moving].transform_points(back)
    return ((moved - points) / np.asarray(SPACING_MM)).T.reshape(3, *GRID)


@pytest.fixture
def workdir(tmp_path):
    deformed_cohort(tmp_path, count=4)
    write_split(tmp_path, train=["s0", "s1", "s2"], val=["s3"])
    return tmp_path


def test_references_for_all_ordered_pairs_match_the_splines(workdir):
    points = write_cohort_landmarks(workdir, ["s0", "s1", "s2", "s3"], np.random.default_rng(0))
    summary = run_references(workdir, parameters=EBS, workers=1, progress=False)
    assert summary.pairs == 12 and summary.fixed_done == 4 and summary.folded == 0
    store = ReferenceStore(workdir)
    assert sorted(store.pairs()) == sorted((m, f) for m in points for f in points if m != f)
    for moving, fixed in [("s1", "s0"), ("s0", "s3")]:
        u = fit_ebs(points[fixed], points[moving] - points[fixed]).on_grid(GRID, SPACING_MM)
        v = store.svf(moving, fixed)
        assert v.dtype == np.float32 and v.shape == (3, *GRID)
        record = next(r for r in store.records() if (r["moving"], r["fixed"]) == (moving, fixed))
        residual = np.linalg.norm(fields.exp(v) - u, axis=0)
        domain = lands_inside(u)
        # the stored residuals are the measured ones (over the voxels mapped into the grid, and
        # over the whole grid), up to float16 storage
        assert abs(residual[domain].max() - record["residual_max"]) <= 2 * record["float16_error"] + 1e-6
        assert abs(residual.max() - record["residual_max_grid"]) <= 2 * record["float16_error"] + 1e-6
        assert record["domain_fraction"] == pytest.approx(domain.mean())
        # the logarithm's tolerances on EBS fields, within 10 iterations
        assert record["converged"] and record["iterations"] <= 10
        assert record["residual_max"] <= 0.1 and record["residual_mean"] <= 0.01
        assert record["float16_error"] < 0.01


def test_references_resume_and_refuse_mixed_parameters(workdir):
    write_cohort_landmarks(workdir, ["s0", "s1", "s2", "s3"], np.random.default_rng(1))
    first = run_references(workdir, subjects=["s0", "s1", "s2"], parameters=EBS, workers=1, progress=False)
    assert first.fixed_done == 3
    svf_file = WorkDir(workdir).references / "svf" / "s0.npy"
    stamp = svf_file.stat().st_mtime_ns
    again = run_references(workdir, subjects=["s0", "s1", "s2"], parameters=EBS, workers=1, progress=False)
    assert again.fixed_done == 0 and again.fixed_skipped == 3 and svf_file.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        run_references(
            workdir,
            subjects=["s0", "s1"],
            parameters=ReferenceParameters(deformation="ebs", nu=0.3),
            workers=1,
            progress=False,
        )


def test_references_recompute_what_changed(workdir):
    """A record is kept only for the same moving subjects and the same landmarks: another subject
    list or a re-run of the shapes stage recomputes the fixed subjects concerned, and only those."""
    points = write_cohort_landmarks(workdir, ["s0", "s1", "s2", "s3"], np.random.default_rng(2))
    run_references(workdir, subjects=["s0", "s1", "s2"], parameters=EBS, workers=1, progress=False)
    wider = run_references(
        workdir, subjects=["s0", "s1", "s2", "s3"], parameters=EBS, workers=1, progress=False
    )
    assert wider.fixed_done == 4 and wider.pairs == 12  # every fixed subject gained a moving one
    store = ReferenceStore(workdir)
    assert sorted(store.pairs()) == sorted((m, f) for m in points for f in points if m != f)
    # new landmarks for s3 change the pairs of every fixed subject (s3 is a moving one of each)
    moved = points["s3"] + np.array([1.5, -1.0, 0.5])
    write_landmarks(WorkDir(workdir).shapes / "landmarks" / "s3.npz", moved, {"test": True}, {})
    again = run_references(
        workdir, subjects=["s0", "s1", "s2", "s3"], parameters=EBS, workers=1, progress=False
    )
    assert again.fixed_done == 4 and again.fixed_skipped == 0
    u = fit_ebs(points["s0"], moved - points["s0"]).on_grid(GRID, SPACING_MM)
    v = ReferenceStore(workdir).svf("s3", "s0")
    assert np.abs(fields.exp(v) - u)[:, lands_inside(u)].max() < 0.2
    # a missing SVF file is recomputed too
    (WorkDir(workdir).references / "svf" / "s1.npy").unlink()
    last = run_references(
        workdir, subjects=["s0", "s1", "s2", "s3"], parameters=EBS, workers=1, progress=False
    )
    assert last.fixed_done == 1 and last.fixed_skipped == 3


@pytest.mark.parametrize(
    "problem,message",
    [
        ("unknown", "not prepared"),
        ("count", r"different landmark counts \{60: \['s0', 's1', 's3'\], 59: \['s2'\]\}"),
        ("repeat", "subject 's1' repeat"),
        ("plane", "subject 's1' lie in a plane"),
        ("nan", "subject 's1' have non-finite"),
    ],
)
def test_references_check_inputs_before_any_work(workdir, problem, message):
    points = write_cohort_landmarks(workdir, ["s0", "s1", "s2", "s3"], np.random.default_rng(3))
    subjects = ["s0", "s1", "s2", "s3"]
    if problem == "unknown":
        subjects.append("nobody")
    elif problem == "count":
        write_landmarks(WorkDir(workdir).shapes / "landmarks" / "s2.npz", points["s2"][:59], {}, {})
    else:
        broken = points["s1"].copy()
        if problem == "repeat":
            broken[5] = broken[7]
        elif problem == "plane":
            broken[:, 2] = 10.0
        else:
            broken[3, 1] = np.nan
        write_landmarks(WorkDir(workdir).shapes / "landmarks" / "s1.npz", broken, {}, {})
    with pytest.raises(ValueError, match=message):
        run_references(
            workdir,
            subjects=subjects,
            parameters=ReferenceParameters(deformation="ebs", nu=0.3),
            workers=1,
            progress=False,
        )
    assert not (WorkDir(workdir).references / "config.json").exists()  # nothing recorded, nothing computed
    assert not (WorkDir(workdir).references / "svf").exists()


def test_references_report_folds(workdir):
    rng = np.random.default_rng(2)
    base = rng.uniform([12, 12, 5], [48, 48, 25], size=(60, 3))
    crossed = base.copy()
    crossed[:, 0] = 60 - crossed[:, 0]  # a mirror: id + u must fold
    for subject, pts in (("s0", base), ("s1", crossed)):
        write_landmarks(WorkDir(workdir).shapes / "landmarks" / f"{subject}.npz", pts, {}, {})
    summary = run_references(workdir, subjects=["s0", "s1"], parameters=EBS, workers=1, progress=False)
    assert summary.folded == 2 and summary.usable == 0 and summary.excluded["folded"] == 2
    store = ReferenceStore(workdir)
    assert store.pairs() == []
    record = json.loads((WorkDir(workdir).references / "pairs" / "s0.json").read_text())["pairs"][0]
    assert record["folds"] > 0 and record["converged"] is False and record["excluded"] == "folded"


def test_references_need_landmarks(workdir):
    with pytest.raises(FileNotFoundError, match="svfnet shapes"):
        run_references(workdir, workers=1, progress=False)


@pytest.mark.parametrize("deformation", ["lddmm", "ebs"])
def test_references_on_dask_equal_the_local_ones(workdir, tmp_path, deformation):
    distributed = pytest.importorskip("distributed")
    parameters = ReferenceParameters(deformation=deformation)

    def shapes(folder):
        if deformation == "ebs":
            write_cohort_landmarks(folder, ["s0", "s1", "s2", "s3"], np.random.default_rng(4))
        else:
            write_flows(
                folder, random_momenta(4, 3.0), np.random.default_rng(4).uniform(12, 40, size=(60, 3))
            )

    shapes(workdir)
    run_references(workdir, parameters=parameters, workers=1, progress=False)
    local = ReferenceStore(workdir)
    other = tmp_path / "on_dask"
    deformed_cohort(other, count=4)
    write_split(other, train=["s0", "s1", "s2"], val=["s3"])
    shapes(other)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        summary = run_references(
            other, parameters=parameters, scheduler=cluster.scheduler_address, progress=False
        )
    assert summary.pairs == 12
    on_dask = ReferenceStore(other)
    assert len(local.pairs()) == 12
    for moving, fixed in local.pairs():
        np.testing.assert_array_equal(on_dask.svf(moving, fixed), local.svf(moving, fixed))


def test_shared_arrays_are_scattered_once():
    """Tasks sharing a subject's landmarks send them to a Dask cluster once (not once per task)."""
    from svfnet.common.parallel import scatter_shared_arrays

    class RecordingClient:
        def __init__(self):
            self.scattered = []

        def scatter(self, arrays):
            self.scattered += arrays
            return [f"future-{n}" for n in range(len(arrays))]

    shared, own = np.zeros(3), np.ones(2)
    tasks = [
        {"fixed": shared, "moving": [own, shared], "n": 1},
        {"fixed": shared, "moving": (np.ones(1),), "n": 2},
    ]
    client = RecordingClient()
    out = scatter_shared_arrays(client, tasks)
    assert len(client.scattered) == 1 and client.scattered[0] is shared
    assert out[0] == {"fixed": "future-0", "moving": [own, "future-0"], "n": 1}
    assert out[1]["fixed"] == "future-0" and isinstance(out[1]["moving"], tuple) and out[1]["n"] == 2


def test_the_store_refuses_what_float16_cannot_hold(workdir, tmp_path):
    """A displacement of 70,000 voxels (a translation: no fold, its own logarithm) overflows
    float16: the pair is recorded as out of range, the file holds zeros there, never an inf."""
    rng = np.random.default_rng(5)
    base = rng.uniform([12, 12, 5], [48, 48, 25], size=(60, 3))
    points = {
        "s0": base,
        "s1": base + np.array([1.0, -2.0, 0.5]),
        "s2": base + 70_000.0 * np.array(SPACING_MM) * np.array([1.0, 0.0, 0.0]),
    }
    for subject, pts in points.items():
        write_landmarks(WorkDir(workdir).shapes / "landmarks" / f"{subject}.npz", pts, {}, {})
    summary = run_references(workdir, subjects=["s0", "s1", "s2"], parameters=EBS, workers=1, progress=False)
    assert summary.pairs == 6 and summary.usable == 2 and summary.excluded["out of range"] == 4
    store = ReferenceStore(workdir)
    excluded = {(r["moving"], r["fixed"]): r["excluded"] for r in store.records()}
    assert {pair for pair, reason in excluded.items() if reason == "out of range"} == {
        ("s2", "s0"),
        ("s0", "s2"),
        ("s2", "s1"),
        ("s1", "s2"),
    }
    assert sorted(store.pairs()) == [("s0", "s1"), ("s1", "s0")]
    for fixed in ("s0", "s1", "s2"):
        assert np.isfinite(np.load(WorkDir(workdir).references / "svf" / f"{fixed}.npy")).all()
    record = next(r for r in store.records() if (r["moving"], r["fixed"]) == ("s2", "s0"))
    assert record["float16_error"] is None and record["svf_max"] == pytest.approx(70_000, rel=1e-3)
    # float32 holds it
    as_float32 = tmp_path / "float32"
    deformed_cohort(as_float32, count=3)
    for subject, pts in points.items():
        write_landmarks(WorkDir(as_float32).shapes / "landmarks" / f"{subject}.npz", pts, {}, {})
    float32 = ReferenceParameters(deformation="ebs", dtype="float32")
    summary = run_references(as_float32, subjects=["s0", "s2"], parameters=float32, workers=1, progress=False)
    assert summary.usable == 2 and summary.excluded["out of range"] == 0
    assert ReferenceStore(as_float32).svf("s2", "s0")[0].mean() == pytest.approx(70_000)


@pytest.mark.parametrize("case", ["non-finite", "not converged", "usable"])
def test_each_reason_is_recorded_and_only_storable_svfs_are_stored(case):
    from svfnet.references.stage import reference_svf
    from tests.pipeline_fixtures import smooth_svf

    v = smooth_svf(np.random.default_rng(6), 2.0)
    u = np.asarray(fields.exp(v))
    parameters = ReferenceParameters(log_max_iter=1 if case == "not converged" else 30)
    if case == "non-finite":
        u[0, 3, 4, 1] = np.inf
    out = np.zeros(u.shape, np.float16)
    record = reference_svf(u, parameters, out)
    assert record["excluded"] == (None if case == "usable" else case)
    assert np.isfinite(out).all()
    if case == "non-finite":
        assert not out.any()
    else:  # a logarithm short of the training limits is still stored (pairs() may be given looser limits)
        assert 0 < record["float16_error"] < 0.01
        residual = np.linalg.norm(fields.exp(out.astype(np.float32)) - u, axis=0)
        assert residual.max() == pytest.approx(record["residual_max_grid"], abs=0.02)
    if case == "not converged":
        assert record["residual_max"] > 1.0 or record["residual_mean"] > 0.05


def test_stores_of_the_previous_format_read_with_reasons_and_are_not_extended(workdir):
    """A store written before records said why (format 1, where float16 could overflow to inf):
    pairs() and records() derive the reasons, svf() refuses a non-finite SVF, and a new run refuses
    to mix new pairs into it."""
    folder = WorkDir(workdir).references
    (folder / "svf").mkdir(parents=True)
    (folder / "pairs").mkdir()
    svfs = np.zeros((4, 3, *GRID), np.float16)
    svfs[1, 0, 0, 0, 0] = np.inf
    np.save(folder / "svf" / "s0.npy", svfs)
    old = {
        "converged": True,
        "residual_max": 0.05,
        "residual_mean": 0.004,
        "float16_error": 0.001,
        "iterations": 2,
    }
    pairs = [
        {"moving": "s1", "folds": 0, **old},
        {"moving": "s2", "folds": 0, **old, "float16_error": float("inf")},
        {"moving": "s3", "folds": 12, **old, "converged": False, "residual_max": None, "residual_mean": None},
        {"moving": "s4", "folds": 0, **old, "converged": False, "residual_max": 1.7},
    ]
    (folder / "pairs" / "s0.json").write_text(
        json.dumps({"fixed": "s0", "moving": ["s1", "s2", "s3", "s4"], "pairs": pairs})
    )
    (folder / "config.json").write_text(json.dumps(ReferenceParameters().__dict__))
    store = ReferenceStore(workdir)
    assert [r["excluded"] for r in store.records()] == [None, "out of range", "folded", "not converged"]
    assert store.pairs() == [("s1", "s0")]
    assert store.pairs(max_residual_vox=2.0) == [("s1", "s0"), ("s4", "s0")]
    with pytest.raises(ValueError, match="non-finite values.*run `svfnet references` again"):
        store.svf("s2", "s0")
    write_cohort_landmarks(workdir, ["s0", "s1", "s2", "s3"], np.random.default_rng(7))
    with pytest.raises(ValueError, match="older svfnet.*store format 1"):
        run_references(workdir, workers=1, progress=False)


def test_lddmm_references_are_the_composed_flows(workdir):
    """The default: u = φ_moving ∘ φ_fixed⁻¹ − id, which carries every fixed landmark onto the
    moving one; the stored SVF's exp reaches it (table interpolation, logarithm and float16 aside)."""
    template_points = np.random.default_rng(8).uniform([12, 12, 5], [48, 48, 25], size=(60, 3))
    flows = write_flows(workdir, random_momenta(8, 4.0), template_points)
    summary = run_references(workdir, workers=1, progress=False)
    assert summary.pairs == 12 and summary.usable == 12 and summary.folded == 0
    store = ReferenceStore(workdir)
    for moving, fixed in [("s1", "s2"), ("s0", "s3"), ("s3", "s0")]:
        u = composed(flows, moving, fixed)
        # the composition maps the fixed subject's landmarks onto the moving subject's (mm)
        fixed_points = (
            template_points if flows[fixed] is None else flows[fixed].transform_points(template_points)
        )
        moving_points = (
            template_points if flows[moving] is None else flows[moving].transform_points(template_points)
        )
        back = (
            template_points if flows[fixed] is None else flows[fixed].inverse_transform_points(fixed_points)
        )
        through = back if flows[moving] is None else flows[moving].transform_points(back)
        np.testing.assert_allclose(through, moving_points, atol=0.01)
        v = store.svf(moving, fixed)
        record = next(r for r in store.records() if (r["moving"], r["fixed"]) == (moving, fixed))
        residual = np.linalg.norm(fields.exp(v) - u, axis=0)[lands_inside(u)]
        assert record["excluded"] is None and record["folds"] == 0
        assert residual.max() <= record["residual_max"] + 2 * record["float16_error"] + 0.02
        assert record["residual_max"] <= 0.1 and record["residual_mean"] <= 0.01


def test_lddmm_references_hold_where_the_spline_folds(workdir):
    """Two flows whose landmark correspondences an interpolating spline cannot follow without
    folding: the composition of the flows (a diffeomorphism) keeps det J > 0 and is usable."""
    control = control_point_grid(np.array([[0.0, 0.0, 0.0], np.subtract(GRID, 1) * SPACING_MM]), 20.0, 10.0)
    rng = np.random.default_rng(2)
    momenta = {"s0": None}
    for subject in ("s1", "s2"):
        momenta[subject] = rng.normal(0, 6.0, control.shape) * np.array([1.0, 1.0, 0.2])
    template_points = np.random.default_rng(0).uniform([12, 12, 5], [48, 48, 25], size=(60, 3))
    flows = write_flows(workdir, momenta, template_points)
    fixed_points, moving_points = (flows[s].transform_points(template_points) for s in ("s1", "s2"))
    spline = fit_ebs(fixed_points, moving_points - fixed_points).on_grid(GRID, SPACING_MM)
    assert (fields.jacobian_det(spline) <= 0).sum() > 10  # the spline folds
    assert fields.jacobian_det(composed(flows, "s2", "s1")).min() > 0.05  # the composition does not
    run_references(workdir, subjects=["s1", "s2"], workers=1, progress=False)
    record = next(r for r in ReferenceStore(workdir).records() if (r["moving"], r["fixed"]) == ("s2", "s1"))
    assert record["folds"] == 0 and record["excluded"] is None


def test_lddmm_references_need_the_flows(workdir):
    write_cohort_landmarks(
        workdir, ["s0", "s1", "s2", "s3"], np.random.default_rng(9)
    )  # landmarks without momenta
    with pytest.raises(FileNotFoundError, match="config.json not found: run `svfnet shapes`"):
        run_references(workdir, workers=1, progress=False)
    write_flows(workdir, random_momenta(9, 3.0), np.random.default_rng(9).uniform(10, 40, size=(60, 3)))
    without = WorkDir(workdir).shapes / "landmarks" / "s2.npz"
    write_landmarks(without, np.random.default_rng(9).uniform(10, 40, (60, 3)), {}, {})
    with pytest.raises(ValueError, match="no LDDMM momenta for subject 's2'"):
        run_references(workdir, workers=1, progress=False)
