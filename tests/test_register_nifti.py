"""svfnet register: NIfTI images in their original geometry, both preparation paths, the outputs'
affines, the ITK export applied by SimpleITK, batches, and bad input (clear errors, nothing written)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from svfnet.cli import main
from svfnet.data.nifti import write_nifti
from svfnet.data.synthetic import generate_subject
from svfnet.ops import fields
from svfnet.registration.files import output_paths
from svfnet.registration.pairs import read_pairs
from svfnet.registration.rigid import rigid_prealignment
from svfnet.training.model import SVFNet, SVFNetConfig, save_checkpoint
from tests.conftest import requires_cuda

GRID = (64, 64, 16)
SPACING_MM = (2.2, 2.2, 8.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is fastest on a busy machine, and results are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two synthetic subjects (image + labels, oblique RAS+ affines), a tiny model with a non-trivial SVF."""
    folder = tmp_path_factory.mktemp("register_nifti")
    for n in (0, 1):
        subject = generate_subject(3, n)
        write_nifti(folder / f"s{n}.nii.gz", subject.image, subject.affine)
        write_nifti(folder / f"s{n}_gt.nii.gz", subject.labels, subject.affine)
    torch.manual_seed(0)
    model = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=GRID, spacing_mm=SPACING_MM))
    with torch.no_grad():
        model.head.weight.normal_(std=0.05)  # a non-trivial SVF (about 1.5 voxels)
    save_checkpoint(folder / "model.pt", model)
    return folder


def _register(data: Path, out: str, *extra: str) -> int:
    return main(
        [
            "register",
            "--model",
            str(data / "model.pt"),
            "--moving",
            str(data / "s0.nii.gz"),
            "--fixed",
            str(data / "s1.nii.gz"),
            "--out",
            out,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def runs(data) -> dict[str, Path]:
    """One CLI registration per preparation path; the output prefix of each."""
    labels = ("--moving-labels", str(data / "s0_gt.nii.gz"), "--fixed-labels", str(data / "s1_gt.nii.gz"))
    prefixes = {"labels": data / "with_labels" / "pair", "intensity": data / "no_labels" / "pair"}
    assert _register(data, str(prefixes["labels"]), *labels) == 0
    assert _register(data, str(prefixes["intensity"])) == 0
    return prefixes


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine, image.header


def world_points(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """World mm of voxel positions ``(3, ...)``."""
    flat = voxels.reshape(3, -1)
    return (affine[:3, :3] @ flat + affine[:3, 3:]).reshape(voxels.shape)


def _sample_world(path: Path, world: np.ndarray) -> np.ndarray:
    """Trilinear samples of a NIfTI volume at world points ``(3, ...)`` (its own affine; 0 outside)."""
    volume, affine, _ = _load(path)
    voxels = world_points(np.linalg.inv(affine), world)
    return map_coordinates(volume.astype(np.float64), voxels, order=1, mode="constant", cval=0.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("path", ["labels", "intensity"])
def test_register_writes_every_output(data, runs, path):
    outputs = output_paths(runs[path], with_labels=path == "labels")
    assert sorted(p.name for p in outputs["metadata"].parent.iterdir()) == sorted(
        p.name for p in outputs.values()
    )
    metadata = json.loads(outputs["metadata"].read_text())
    assert metadata["preparation"]["path"] == path
    assert metadata["model"]["device"] == "cpu" and metadata["model"]["checkpoint"] == str(
        (data / "model.pt").resolve()
    )
    assert set(metadata["outputs"]) == set(outputs) and metadata["svf_max_vox"] > 0.5
    assert {"read", "prepare", "network_exp_warp", "map_to_original", "write", "total"} <= set(
        metadata["timings_s"]
    )
    assert ("rigid" in metadata["preparation"]) == (path == "intensity")

    fixed, fixed_affine, _ = _load(data / "s1.nii.gz")
    prepared_affine = np.array(metadata["prepared_grid_affine"])
    for key in ("warped", "svf", "displacement", "fixed_prepared") + (
        ("warped_labels",) if path == "labels" else ()
    ):
        volume, affine, _ = _load(outputs[key])
        np.testing.assert_allclose(affine, prepared_affine, atol=1e-4)
        assert volume.shape[:3] == GRID
    np.testing.assert_allclose(np.linalg.norm(prepared_affine[:3, :3], axis=0), SPACING_MM, rtol=1e-6)
    for key in ("warped_original", "svf_original", "displacement_original", "displacement_itk"):
        volume, affine, _ = _load(outputs[key])
        np.testing.assert_allclose(affine, fixed_affine, atol=1e-4)
        assert volume.shape[:3] == fixed.shape
    assert _load(outputs["svf"])[0].shape == (*GRID, 3)
    assert _load(outputs["displacement_itk"])[0].shape == (*fixed.shape, 1, 3)
    if path == "labels":
        assert _load(outputs["warped_labels"])[0].dtype == np.uint8
        assert set(np.unique(_load(outputs["warped_labels_original"])[0])) <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize("path", ["labels", "intensity"])
def test_outputs_sit_where_their_affines_say(data, runs, path):
    """World coordinates of voxels, checked only through the files' affines and the inputs."""
    outputs = output_paths(runs[path], with_labels=path == "labels")
    prepared_affine = _load(outputs["fixed_prepared"])[1]
    inner = np.indices(GRID, dtype=np.float64)[:, 8:-8, 8:-8, 2:-2]
    world = world_points(prepared_affine, inner)
    # the prepared fixed image is the fixed original read at its voxels' world positions
    fixed_prepared = _load(outputs["fixed_prepared"])[0][8:-8, 8:-8, 2:-2]
    assert _correlation(fixed_prepared, _sample_world(data / "s1.nii.gz", world)) > 0.9
    # likewise the prepared moving image, on the moving image's own prepared grid
    moving_prepared, moving_affine, _ = _load(outputs["moving_prepared"])
    moving_world = world_points(moving_affine, inner)
    assert (
        _correlation(moving_prepared[8:-8, 8:-8, 2:-2], _sample_world(data / "s0.nii.gz", moving_world)) > 0.9
    )
    # the warped image on the prepared grid and the warped original overlap in the world
    warped = _load(outputs["warped"])[0][8:-8, 8:-8, 2:-2]
    assert _correlation(warped, _sample_world(outputs["warped_original"], world)) > 0.9
    # the prepared displacement (voxels, last axis i, j, k) maps into the moving prepared grid
    displacement = np.moveaxis(_load(outputs["displacement"])[0], -1, 0)
    positions = np.indices(GRID, dtype=np.float64) + displacement
    pulled = map_coordinates(moving_prepared.astype(np.float64), positions, order=1, mode="nearest")
    assert _correlation(pulled[8:-8, 8:-8, 2:-2], warped) > 0.99
    # the world-mm displacement on the original grid reads the moving original into warped_original
    fixed, fixed_affine, _ = _load(data / "s1.nii.gz")
    grid_world = world_points(fixed_affine, np.indices(fixed.shape, dtype=np.float64))
    moved = grid_world + np.moveaxis(_load(outputs["displacement_original"])[0], -1, 0)
    warped_original = _load(outputs["warped_original"])[0]
    sampled = _sample_world(data / "s0.nii.gz", moved)
    moving_shape = np.array(_load(data / "s0.nii.gz")[0].shape, np.float64).reshape(3, 1, 1, 1)
    moved_voxels = world_points(np.linalg.inv(_load(data / "s0.nii.gz")[1]), moved)
    covered = np.all((moved_voxels >= 0) & (moved_voxels <= moving_shape - 1), axis=0)  # away from the border
    assert covered.mean() > 0.5
    np.testing.assert_allclose(sampled[covered], warped_original[covered], atol=1e-3 * float(fixed.max()))
    # the world velocity on the original grid is the prepared SVF carried by the grid's linear part
    svf = np.moveaxis(_load(outputs["svf"])[0], -1, 0).astype(np.float64)
    svf_world = np.moveaxis(_load(outputs["svf_original"])[0], -1, 0)
    centre = np.array([n // 2 for n in fixed.shape], dtype=np.float64)
    at_prepared = world_points(np.linalg.inv(prepared_affine), world_points(fixed_affine, centre[:, None]))
    expected = prepared_affine[:3, :3] @ np.array([map_coordinates(c, at_prepared, order=1)[0] for c in svf])
    np.testing.assert_allclose(svf_world[(slice(None), *centre.astype(int))], expected, atol=1e-3)


@pytest.mark.parametrize("path", ["labels", "intensity"])
def test_simpleitk_applies_the_itk_displacement_like_svfnet(data, runs, path):
    import SimpleITK as sitk

    outputs = output_paths(runs[path], with_labels=path == "labels")
    moving = sitk.Cast(sitk.ReadImage(str(data / "s0.nii.gz")), sitk.sitkFloat32)
    fixed = sitk.ReadImage(str(data / "s1.nii.gz"))
    field = sitk.ReadImage(str(outputs["displacement_itk"]), sitk.sitkVectorFloat64)
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == fixed.GetSize()
    transform = sitk.DisplacementFieldTransform(field)
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    by_itk = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)  # SimpleITK arrays are (k, j, i)
    ours = _load(outputs["warped_original"])[0]
    intensity_range = float(ours.max() - ours.min())
    assert intensity_range > 100 and np.count_nonzero(ours) > 0.5 * ours.size
    assert np.abs(by_itk - ours).max() < 1e-4 * intensity_range


def test_rigid_prealignment_recovers_a_known_rigid_motion():
    subject = generate_subject(3, 0)
    angle = np.deg2rad(6.0)
    motion = np.eye(4)
    motion[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    motion[:3, 3] = [8.0, -5.0, 4.0]
    # the same voxels placed elsewhere in the world: the fixed world maps to the moving one by `motion`
    image = subject.image.astype(np.float32)
    rigid = rigid_prealignment(image, motion @ subject.affine, image, subject.affine)
    middle = (np.array(image.shape) - 1.0) / 2.0
    for offset in [(0, 0, 0), (20, 20, 3), (-20, 20, -3), (20, -20, 3), (-20, -20, -3)]:
        point = subject.affine @ np.array([*(middle + offset), 1.0])
        assert np.linalg.norm((rigid.fixed_to_moving_world @ point - motion @ point)[:3]) < 1.0, offset


def test_image_preparation_without_labels_is_the_training_preparation():
    """The no-label resampling must not drift from prepare_subject (which needs labels)."""
    from svfnet.data.labels import IDENTITY_LABELS
    from svfnet.data.prepare import canonical_frame, cohort_grid, heart_extent, prepare_subject
    from svfnet.data.readers import Subject, SubjectFiles
    from svfnet.registration.prepare import OriginalImage, prepare_image

    synthetic = generate_subject(3, 1)
    files = SubjectFiles("s", Path("s.nii.gz"), Path("s_gt.nii.gz"), IDENTITY_LABELS, "files")
    subject = Subject(
        "s",
        synthetic.image.astype(np.float32),
        synthetic.labels,
        synthetic.affine,
        frozenset({1, 2, 3, 4}),
        files,
    )
    frame = canonical_frame(subject.labels, subject.affine)
    grid = cohort_grid([heart_extent(subject, frame)], GRID, SPACING_MM)
    expected = prepare_subject(subject, frame, grid)
    original = OriginalImage(subject.image, subject.affine, None, None, Path("s.nii.gz"), None)
    image, record = prepare_image(original, frame, grid, "fixed")
    np.testing.assert_array_equal(image, expected.image)
    np.testing.assert_allclose(
        record["prepared_to_original_voxel"], expected.transform["prepared_to_original_voxel"]
    )


def test_batch_registers_pairs_with_one_loaded_model(data, tmp_path, monkeypatch):
    import svfnet.training.model as module  # as_model, the one place a checkpoint path becomes a model

    loads = []
    original_load = module.load
    monkeypatch.setattr(module, "load", lambda *a, **k: loads.append(a) or original_load(*a, **k))
    links = tmp_path / "inputs"
    links.mkdir()
    for name in ("s0.nii.gz", "s1.nii.gz", "s0_gt.nii.gz", "s1_gt.nii.gz"):
        (links / name).symlink_to(data / name)
    (tmp_path / "pairs.csv").write_text(
        "# moving labels only, then fixed labels only\n"
        "moving,fixed,out_prefix,moving_labels,fixed_labels\n"
        "inputs/s0.nii.gz,inputs/s1.nii.gz,out/a/,inputs/s0_gt.nii.gz,\n"
        "inputs/s1.nii.gz,inputs/s0.nii.gz,out/b,,inputs/s0_gt.nii.gz\n"
    )
    code = main(
        [
            "register",
            "--model",
            str(data / "model.pt"),
            "--pairs",
            str(tmp_path / "pairs.csv"),
            "--no-progress",
        ]
    )
    assert code == 0 and len(loads) == 1
    first = json.loads((tmp_path / "out" / "a" / "registration.json").read_text())
    second = json.loads((tmp_path / "out" / "b_registration.json").read_text())
    assert first["preparation"]["path"] == second["preparation"]["path"] == "intensity"
    assert first["preparation"]["frame_from"].startswith("moving labels")
    assert second["preparation"]["frame_from"] == "fixed labels"
    assert (tmp_path / "out" / "a" / "warped_labels_original.nii.gz").is_file()
    assert not (tmp_path / "out" / "b_warped_labels.nii.gz").exists()


def test_read_pairs_errors(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("moving,fixed\na.nii.gz,b.nii.gz\n")
    with pytest.raises(ValueError, match="lacks the columns \\['out_prefix'\\]"):
        read_pairs(bad)
    bad.write_text("moving,fixed,out\na.nii.gz,b.nii.gz,x\nc.nii.gz,d.nii.gz,x\n")
    with pytest.raises(ValueError, match="row 3: output prefix 'x' repeats row 2"):
        read_pairs(bad)
    bad.write_text("moving,fixed,out,weight\na.nii.gz,b.nii.gz,x,1\n")
    with pytest.raises(ValueError, match="unknown columns \\['weight'\\]"):
        read_pairs(bad)
    bad.write_text("moving,fixed,out_prefix,moving_labels\n# a comment\na.nii.gz,/data/b.nii.gz,out/x,\n")
    (pair,) = read_pairs(bad)
    assert pair.moving == tmp_path / "a.nii.gz" and pair.fixed == Path("/data/b.nii.gz")
    assert pair.out_prefix == str(tmp_path / "out" / "x") and pair.moving_labels is None


def _bad_case(data: Path, folder: Path, case: str) -> list[str]:
    """Arguments of a registration that must fail, writing into ``folder / out``."""
    moving, fixed = str(data / "s0.nii.gz"), str(data / "s1.nii.gz")
    model = str(data / "model.pt")
    if case == "2d":
        flat = folder / "flat.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((64, 64, 1), np.float32), np.eye(4)), str(flat))
        moving = str(flat)
    elif case == "shape_mismatch":
        labels, affine, _ = _load(data / "s0_gt.nii.gz")
        write_nifti(folder / "cropped_gt.nii.gz", labels[:-3], affine)
        return [
            "--model",
            model,
            "--moving",
            moving,
            "--fixed",
            fixed,
            "--out",
            str(folder / "out" / "p"),
            "--moving-labels",
            str(folder / "cropped_gt.nii.gz"),
            "--fixed-labels",
            str(data / "s1_gt.nii.gz"),
        ]
    elif case == "checkpoint":
        payload = (data / "model.pt").read_bytes()
        (folder / "bad.pt").write_bytes(payload[: len(payload) // 2])
        model = str(folder / "bad.pt")
    elif case == "tiny_field_of_view":
        labels = np.zeros((10, 10, 3), np.uint8)
        labels[3:7, 3:7, 1] = 1
        write_nifti(folder / "tiny.nii.gz", labels.astype(np.float32) * 100 + 5, np.eye(4))
        write_nifti(folder / "tiny_gt.nii.gz", labels, np.eye(4))
        return [
            "--model",
            model,
            "--moving",
            str(folder / "tiny.nii.gz"),
            "--fixed",
            fixed,
            "--out",
            str(folder / "out" / "p"),
            "--moving-labels",
            str(folder / "tiny_gt.nii.gz"),
            "--fixed-labels",
            str(data / "s1_gt.nii.gz"),
        ]
    elif case == "constant":
        write_nifti(folder / "constant.nii.gz", np.full((20, 20, 8), 7.0, np.float32), np.eye(4))
        fixed = str(folder / "constant.nii.gz")
    return ["--model", model, "--moving", moving, "--fixed", fixed, "--out", str(folder / "out" / "p")]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("2d", "expected a 3D volume, got a 2D one"),
        ("shape_mismatch", "label map shape .* differs from image shape"),
        ("checkpoint", "not a readable svfnet checkpoint"),
        ("tiny_field_of_view", "cannot be prepared: only .*% of the model's grid"),
        ("constant", "the fixed image is constant"),
    ],
)
def test_bad_inputs_fail_clearly_and_write_nothing(data, tmp_path, capsys, case, message):
    arguments = _bad_case(data, tmp_path, case)
    assert main(["register", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("svfnet register: error:") and len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_simpleitk_is_a_runtime_dependency():
    # registering two images without label maps (the everyday case) needs SimpleITK's rigid step:
    # `pip install svfnet` must bring it, not only the test extra
    from importlib.metadata import requires

    runtime = [r for r in requires("svfnet") if "extra ==" not in r]
    assert any(r.lower().startswith("simpleitk") for r in runtime), runtime


def test_existing_outputs_are_kept_without_force(data, runs, capsys):
    metadata = output_paths(runs["intensity"], with_labels=False)["metadata"]
    before = metadata.stat().st_mtime_ns
    assert _register(data, str(runs["intensity"])) == 2
    error = capsys.readouterr().err
    assert "exists" in error and "--force" in error
    assert metadata.stat().st_mtime_ns == before


def test_python_api_matches_the_prepared_registration(data):
    from svfnet.registration.arrays import register
    from svfnet.registration.files import register_nifti

    result = register_nifti(
        data / "s0.nii.gz",
        data / "s1.nii.gz",
        data / "model.pt",
        None,
        moving_labels=data / "s0_gt.nii.gz",
        fixed_labels=data / "s1_gt.nii.gz",
    )
    assert result.path == "labels" and result.outputs == {}
    again = register(result.prepared.moving, result.prepared.fixed, data / "model.pt")
    np.testing.assert_allclose(again.displacement, result.registration.displacement, atol=1e-5)
    np.testing.assert_allclose(
        result.registration.displacement, fields.exp(result.registration.svf), atol=1e-5
    )


@requires_cuda
def test_cuda_gives_the_cpu_result(data, runs, tmp_path):
    assert (
        _register(
            data,
            str(tmp_path / "gpu"),
            "--device",
            "cuda",
            "--moving-labels",
            str(data / "s0_gt.nii.gz"),
            "--fixed-labels",
            str(data / "s1_gt.nii.gz"),
        )
        == 0
    )
    gpu = _load(tmp_path / "gpu_displacement_original.nii.gz")[0]
    cpu = _load(output_paths(runs["labels"], with_labels=True)["displacement_original"])[0]
    np.testing.assert_allclose(gpu, cpu, atol=1e-2)


def test_batch_stops_on_a_bad_pair_unless_keep_going(data, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        f"moving,fixed,out\n{data / 'missing.nii.gz'},{data / 's1.nii.gz'},out/bad\n"
        f"{data / 's0.nii.gz'},{data / 's1.nii.gz'},out/good\n"
    )
    command = ["register", "--model", str(data / "model.pt"), "--pairs", str(pairs), "--no-progress"]
    assert main(command) == 2
    assert "missing.nii.gz: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # checked before any work
    assert main([*command, "--keep-going"]) == 1
    assert "failed" in capsys.readouterr().err
    assert (tmp_path / "out" / "good_registration.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("bad")) == []


def test_force_replaces_the_whole_set_of_outputs(data, tmp_path):
    """--force over a registration with labels, now without: no label output of the old set stays
    beside the new one, and the metadata describes the new run."""
    prefix = str(tmp_path / "again" / "pair")
    labels = ("--moving-labels", str(data / "s0_gt.nii.gz"), "--fixed-labels", str(data / "s1_gt.nii.gz"))
    assert _register(data, prefix, *labels) == 0
    with_labels = output_paths(prefix, with_labels=True)
    assert with_labels["warped_labels"].exists() and with_labels["warped_labels_original"].exists()
    assert _register(data, prefix) == 2  # refused without --force
    assert _register(data, prefix, "--force") == 0
    assert not with_labels["warped_labels"].exists() and not with_labels["warped_labels_original"].exists()
    assert all(path.exists() for path in output_paths(prefix, with_labels=False).values())


def test_acdc_headers_register_in_their_true_geometry_and_the_record_names_every_file(data, tmp_path):
    """Files as ACDC publishes them (sform without voxel size): read with pixdim's voxel size, and the
    registration's record lists the header problem of each image and label map."""
    import shutil
    import warnings

    from svfnet.data.nifti import HeaderWarning, read_geometry
    from tests.data_fixtures import to_acdc_header

    for name in ("s0", "s0_gt", "s1", "s1_gt"):
        shutil.copy(data / f"{name}.nii.gz", tmp_path / f"{name}.nii.gz")
        spacing = tuple(
            float(s) for s in np.linalg.norm(read_geometry(data / f"{name}.nii.gz")[0].affine[:3, :3], axis=0)
        )
        to_acdc_header(tmp_path / f"{name}.nii.gz", spacing)
    (tmp_path / "model.pt").symlink_to(data / "model.pt")
    labels = (
        "--moving-labels",
        str(tmp_path / "s0_gt.nii.gz"),
        "--fixed-labels",
        str(tmp_path / "s1_gt.nii.gz"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeaderWarning)
        assert _register(tmp_path, str(tmp_path / "out" / "pair"), *labels) == 0
    metadata = json.loads(output_paths(tmp_path / "out" / "pair", with_labels=True)["metadata"].read_text())
    for name in ("s0", "s0_gt", "s1", "s1_gt"):
        assert any(
            f"{name}.nii.gz: the sform gives voxels of 1 × 1 × 1 mm" in w for w in metadata["warnings"]
        ), name
    warped, affine, _ = _load(output_paths(tmp_path / "out" / "pair", with_labels=True)["warped_original"])
    np.testing.assert_allclose(
        np.linalg.norm(affine[:3, :3], axis=0),
        np.linalg.norm(read_geometry(tmp_path / "s1.nii.gz")[0].affine[:3, :3], axis=0),
    )
    assert np.isfinite(warped).all()


def test_refine_runs_lcc_demons_from_the_network_svf_and_says_so(data, tmp_path, capsys):
    from svfnet.baselines import lcc_demons
    from svfnet.registration.arrays import REFINEMENT
    from svfnet.registration.files import register_nifti

    labels = ("--moving-labels", str(data / "s0_gt.nii.gz"), "--fixed-labels", str(data / "s1_gt.nii.gz"))
    prefix = tmp_path / "refined" / "pair"
    assert _register(data, str(prefix), *labels, "--refine", "--refine-iterations", "2", "3") == 0
    assert "+ refinement" in capsys.readouterr().out
    metadata = json.loads(output_paths(prefix, with_labels=True)["metadata"].read_text())
    assert metadata["refinement"] == {**REFINEMENT, "levels": 2, "iterations": [2, 3]}
    assert metadata["timings_s"]["refinement"] > 0
    # the written SVF is the demons' from the network's SVF on the prepared pair
    plain = register_nifti(
        data / "s0.nii.gz",
        data / "s1.nii.gz",
        data / "model.pt",
        None,
        moving_labels=data / "s0_gt.nii.gz",
        fixed_labels=data / "s1_gt.nii.gz",
    )
    prepared = plain.prepared
    expected = lcc_demons.register(
        prepared.moving,
        prepared.fixed,
        spacing=SPACING_MM,
        initial_svf=plain.registration.svf,
        levels=2,
        iterations=(2, 3),
    )
    written = np.moveaxis(_load(output_paths(prefix, with_labels=True)["svf"])[0], -1, 0)
    np.testing.assert_allclose(written, expected, atol=1e-6)
    assert metadata.get("refinement") is not None and plain.metadata["refinement"] is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--refine-iterations", "3"], "--refine-iterations applies with --refine only"),
        (["--refine", "--refine-iterations", "-1"], "--refine-iterations must be non-negative"),
    ],
)
def test_bad_refinement_flags_fail_before_any_work(data, tmp_path, capsys, extra, message):
    prefix = tmp_path / "out" / "pair"
    assert _register(data, str(prefix), *extra) == 2
    assert message in capsys.readouterr().err
    assert not prefix.parent.exists()


def test_rigid_prealignment_is_reproducible():
    """Two runs on one pair give the same transform: the metric's random samples use a fixed seed
    (SimpleITK's seed 0 means the wall clock, the default once)."""
    moving, fixed = generate_subject(3, 0), generate_subject(3, 1)
    runs = [
        rigid_prealignment(
            moving.image.astype(np.float32),
            moving.affine,
            fixed.image.astype(np.float32),
            fixed.affine,
            threads=1,
        ).fixed_to_moving_world
        for _ in range(2)
    ]
    np.testing.assert_allclose(runs[0], runs[1], rtol=0, atol=1e-4)  # wall-clock seeds: up to 19 mm apart
    with pytest.raises(ValueError, match="'seed'"):
        rigid_prealignment(moving.image, moving.affine, fixed.image, fixed.affine, seed=0)
