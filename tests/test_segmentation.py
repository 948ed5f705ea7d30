"""svfnet segment: label fusion on hand-built cases and against float64 references, batched atlas
registration, segmentation of synthetic subjects (better than a single atlas, in the image's own
geometry, uncertain where wrong), and bad inputs (clear errors, no files)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.stats import entropy

from svfnet.cli import main
from svfnet.data import read_dataset, run_prepare, write_synthetic_dataset
from svfnet.data.nifti import read_nifti, write_nifti
from svfnet.data.synthetic import generate_subject
from svfnet.evaluation.metrics import dice
from svfnet.registration.arrays import register
from svfnet.segmentation.atlas_registration import register_atlases, warped_probabilities
from svfnet.segmentation.atlases import image_similarity, read_atlases
from svfnet.segmentation.fusion import argmax_labels, fuse, lcc_weights, normalised_entropy
from svfnet.segmentation.multi_atlas import segment
from svfnet.segmentation.outputs import output_paths, probabilities_to_original
from svfnet.training.model import SVFNet, SVFNetConfig, save_checkpoint
from tests.conftest import grid_positions, smooth_field

SEED = 11
ATLASES = 6  # synthetic subjects 0..5: five training subjects and one validation subject
REGIONS = (1, 2, 3, 4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is fastest on a busy machine, and results are reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A prepared work folder of six labelled synthetic subjects (split: five train, one val), a tiny
    model on its grid with a small non-trivial SVF, and two new subjects of the same cohort as NIfTI
    files: ``new`` (as drawn) and ``aniso`` (1.25 mm pixels, 9.5 mm slices)."""
    folder = tmp_path_factory.mktemp("segmentation")
    write_synthetic_dataset(folder / "dataset", ATLASES, SEED, outlier_fraction=0.0, progress=False)
    run_prepare(folder / "work", read_dataset(folder / "dataset"), progress=False)
    ids = [f"synth_{n:03d}" for n in range(ATLASES)]
    (folder / "work" / "split.json").write_text(json.dumps({"train": ids[:5], "val": ids[5:], "test": []}))
    subjects = json.loads((folder / "work" / "prepared" / "subjects.json").read_text())
    torch.manual_seed(0)
    model = SVFNet(
        SVFNetConfig(widths=(4, 8, 8, 8), grid=subjects["shape"], spacing_mm=subjects["spacing_mm"])
    )
    with torch.no_grad():
        model.head.weight.normal_(std=0.01)  # a small SVF (under a voxel): atlases move, hearts stay
    save_checkpoint(folder / "model.pt", model)
    for name, index, spacing in (("new", ATLASES, None), ("aniso", ATLASES + 1, (1.25, 9.5))):
        subject = generate_subject(SEED, index, outlier_fraction=0.0, spacing_mm=spacing)
        write_nifti(folder / f"{name}.nii.gz", subject.image, subject.affine)
        write_nifti(folder / f"{name}_gt.nii.gz", subject.labels, subject.affine)
    return folder


@pytest.fixture(scope="module")
def segmented(data):
    """The new subject segmented from the work folder's atlases, both fusions (Python API)."""
    return {
        fusion: segment(data / "new.nii.gz", data / "model.pt", data / "work", fusion=fusion)
        for fusion in ("majority", "weighted")
    }


def _truth(data: Path, name: str) -> np.ndarray:
    return read_nifti(data / f"{name}_gt.nii.gz", kind="labels")[0]


def _mean_dice(labels: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([dice(labels == r, truth == r) for r in REGIONS]))


# ----------------------------------------------------------------------------- fusion, by hand
def _onehot(votes: list[list[int]], count: int = 3) -> np.ndarray:
    """(A, L, V) one-hot probabilities of hard votes ``votes[a][v]``."""
    return np.stack([np.eye(count)[np.array(v)].T for v in votes])


def test_majority_vote_of_three_atlases_by_hand():
    # four voxels; three atlases vote (1, 1, 1), (1, 1, 2), (0, 1, 2), and soft votes in the last
    votes = _onehot([[1, 1, 0, 0], [1, 1, 1, 0], [1, 2, 2, 0]])
    votes[0, :, 3] = votes[1, :, 3] = (0.5, 0.5, 0.0)
    fused = fuse(votes)
    expected = np.array([[0, 0, 1 / 3, 2 / 3], [1, 2 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 1 / 3, 0]])
    np.testing.assert_allclose(fused, expected, atol=1e-6)
    two_to_one = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    np.testing.assert_allclose(normalised_entropy(fused), [0.0, two_to_one, 1.0, two_to_one], atol=1e-6)
    # argmax, ties to the smaller label: the uniform voxel is background
    np.testing.assert_array_equal(argmax_labels(fused, (0, 1, 2)), [1, 1, 0, 0])


def test_weighted_vote_with_known_weights_by_hand():
    votes = _onehot([[1, 1, 0], [1, 1, 1], [1, 2, 2]])
    weights = np.array([0.5, 0.25, 0.25])[:, None].repeat(3, axis=1)
    fused = fuse(votes, weights)
    np.testing.assert_allclose(fused, [[0, 0, 0.5], [1, 0.75, 0.25], [0, 0.25, 0.25]], atol=1e-6)
    np.testing.assert_array_equal(argmax_labels(fused, (0, 1, 2)), [1, 1, 0])
    # unnormalised weights give the same; all-zero weights fall back to the equal vote
    np.testing.assert_allclose(fuse(votes, 4 * weights), fused, atol=1e-6)
    np.testing.assert_allclose(fuse(votes, np.zeros((3, 3))), fuse(votes), atol=1e-6)
    # LCC weights: softmax of sharpness × LCC; sharpness ln 4 with LCC (1, 0, 0) gives (4, 1, 1) / 6
    lcc = np.array([1.0, 0.0, 0.0])[:, None]
    np.testing.assert_allclose(lcc_weights(lcc, math.log(4))[:, 0], [2 / 3, 1 / 6, 1 / 6], atol=1e-6)
    np.testing.assert_allclose(lcc_weights(lcc, 0.0)[:, 0], [1 / 3] * 3, atol=1e-6)
    # a large sharpness keeps the locally best atlas: its vote alone
    best = fuse(votes, lcc_weights(np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.3], [0.2, 0.8, 0.9]]), 200.0))
    np.testing.assert_allclose(best, [[0, 0, 0], [1, 0, 0], [0, 1, 1]], atol=1e-6)


def test_fusion_matches_float64_references_on_random_data(rng):
    atlases, labels, grid = 5, 4, (6, 7, 3)
    p = rng.random((atlases, labels, *grid))
    p /= p.sum(axis=1, keepdims=True)
    w = rng.random((atlases, *grid))
    expected = np.zeros((labels, *grid))
    for a in range(atlases):
        expected += w[a][None] * p[a]
    expected /= w.sum(axis=0)[None]
    np.testing.assert_allclose(fuse(p, w), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fuse(p), p.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        normalised_entropy(expected), entropy(expected, axis=0) / math.log(labels), rtol=1e-5, atol=1e-6
    )
    lcc = rng.uniform(-1, 1, (atlases, *grid))
    soft = np.exp(7.0 * lcc) / np.exp(7.0 * lcc).sum(axis=0)
    np.testing.assert_allclose(lcc_weights(lcc, 7.0), soft, rtol=1e-5, atol=1e-7)
    # NCC over a mask, against NumPy's correlation coefficient
    target, images = rng.random(grid), rng.random((atlases, *grid)) + 0.3 * rng.random(grid)
    mask = rng.random(grid) > 0.4
    reference = [np.corrcoef(target[mask], image[mask])[0, 1] for image in images]
    np.testing.assert_allclose(image_similarity(target, images, mask), reference, rtol=1e-10)


def test_fusion_refuses_bad_arrays():
    with pytest.raises(ValueError, match="'weights' must be"):
        fuse(np.ones((3, 2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        fuse(np.ones((3, 2, 4)), -np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        normalised_entropy(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="'sharpness'"):
        lcc_weights(np.zeros((3, 4)), -1.0)


# ----------------------------------------------------------------------------- the pieces on real atlases
def test_warped_probabilities_against_scipy_reference(data, rng):
    atlases = read_atlases(data / "work").subset([0, 3])
    grid = atlases.atlases[0].labels.shape
    disp = np.stack([smooth_field(rng, grid, 2.5, sigma=3.0) for _ in atlases.atlases])
    images, probabilities = warped_probabilities(atlases, disp)
    assert atlases.label_values == (0, 1, 2, 3, 4) and probabilities.shape == (2, 5, *grid)
    for a, atlas in enumerate(atlases.atlases):
        positions = grid_positions(grid, disp[a])
        for channel, value in enumerate(atlases.label_values):
            indicator = (atlas.labels == value).astype(np.float64)
            # outside the grid a label reads 0 and background 1, blended in over the last half voxel
            reference = map_coordinates(
                indicator, positions, order=1, mode="grid-constant", cval=float(value == 0)
            )
            np.testing.assert_allclose(probabilities[a, channel], reference, atol=2e-5)
        reference_image = map_coordinates(
            atlas.image.astype(np.float64), positions, order=1, mode="grid-constant"
        )
        np.testing.assert_allclose(images[a], reference_image, atol=2e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_batched_registration_equals_one_pair_at_a_time(data):
    atlases = read_atlases(data / "work")
    from svfnet.training.model import load

    net = load(data / "model.pt")
    target = atlases.atlases[2].image
    for symmetric in (False, True):
        batched = register_atlases(net, target, atlases, batch_size=4, symmetric=symmetric)  # 4 + 2
        assert batched.svfs.shape == (ATLASES, 3, *target.shape)
        assert 0.05 < np.abs(batched.svfs).max() < 1.5
        for a, atlas in enumerate(atlases.atlases):
            single = register(atlas.image, target, net, moving_labels=atlas.labels, symmetric=symmetric)
            np.testing.assert_allclose(batched.svfs[a], single.svf, atol=1e-4)
            np.testing.assert_allclose(batched.displacements[a], single.displacement, atol=1e-4)
            np.testing.assert_allclose(batched.warped_images[a], single.warped, atol=1e-4)


def test_the_command_spells_the_library_defaults():
    from svfnet.commands import segment as command
    from svfnet.segmentation import multi_atlas as segmentation

    assert command.FUSIONS == segmentation.FUSIONS
    assert command.DEFAULT_FUSION == segmentation.DEFAULT_FUSION
    assert command.DEFAULT_MIN_CORRELATION == segmentation.DEFAULT_MIN_CORRELATION


# ----------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("fusion", ["majority", "weighted"])
def test_segmenting_beats_the_average_single_atlas(data, segmented, fusion):
    result = segmented[fusion]
    truth = _truth(data, "new")
    assert result.atlas_ids and len(result.atlas_ids) == ATLASES
    singles = [
        _mean_dice(
            argmax_labels(probabilities_to_original(p, result.prepared.transform), result.label_values), truth
        )
        for p in result.registrations.probabilities
    ]
    fused = _mean_dice(result.labels, truth)
    assert fused > np.mean(singles) + 0.01, (fused, singles)
    assert fused > 0.6


def test_uncertainty_is_higher_where_the_fusion_is_wrong(data, segmented):
    result = segmented["weighted"]
    truth = _truth(data, "new")
    heart = (result.labels > 0) | (truth > 0)
    wrong = result.labels != truth
    assert np.count_nonzero(wrong & heart) > 50
    wrong_mean = float(result.uncertainty[wrong & heart].mean())
    right_mean = float(result.uncertainty[~wrong & heart].mean())
    assert wrong_mean > right_mean + 0.1, (wrong_mean, right_mean)
    # ... and the error rate grows with the uncertainty
    low, high = result.uncertainty < 0.2, result.uncertainty > 0.5
    assert wrong[high].mean() > 3 * wrong[low].mean()


def test_atlas_count_takes_the_most_correlated_atlases(data, segmented):
    import svfnet

    result = svfnet.segment(data / "new.nii.gz", data / "model.pt", data / "work", atlas_count=3)
    atlases = read_atlases(data / "work")
    prepared = segmented["majority"].prepared
    # the same alignment every time (up to rounding: SimpleITK sums in a varying order)
    np.testing.assert_allclose(result.prepared.image, prepared.image, atol=1e-3)
    inside = prepared.inside
    ncc = {a.id: np.corrcoef(prepared.image[inside], a.image[inside])[0, 1] for a in atlases.atlases}
    assert list(result.atlas_ids) == sorted(ncc, key=ncc.get, reverse=True)[:3]
    np.testing.assert_allclose(result.similarities, [ncc[i] for i in result.atlas_ids], rtol=1e-8)
    assert result.registrations.probabilities.shape[0] == 3


def _load(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def test_cli_outputs_land_in_the_original_geometry_of_an_anisotropic_oblique_image(data, tmp_path, capsys):
    image_path = data / "aniso.nii.gz"
    affine = read_nifti(image_path)[1]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / spacing
    assert spacing.max() / spacing.min() > 7  # anisotropic
    assert np.abs(directions - np.round(directions)).max() > 0.1  # oblique
    prefix = tmp_path / "out" / "case"
    code = main(
        [
            "segment",
            "--model",
            str(data / "model.pt"),
            "--atlases",
            str(data / "work"),
            "--image",
            str(image_path),
            "--out",
            str(prefix),
            "--fusion",
            "weighted",
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "segmented" in capsys.readouterr().out
    outputs = output_paths(prefix)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in outputs.values())
    shape = _load(image_path).shape
    images = {key: _load(outputs[key]) for key in ("labels", "uncertainty", "probabilities")}
    for key, image in images.items():
        np.testing.assert_allclose(image.affine, affine, atol=1e-4)
        np.testing.assert_allclose(image.get_sform(), affine, atol=1e-4)
        np.testing.assert_allclose(image.get_qform(), affine, atol=1e-4)
        assert image.shape[:3] == shape, key
    labels = np.asanyarray(images["labels"].dataobj)
    uncertainty = np.asanyarray(images["uncertainty"].dataobj).astype(np.float64)
    probabilities = np.moveaxis(np.asanyarray(images["probabilities"].dataobj).astype(np.float64), -1, 0)
    assert labels.dtype == np.uint8 and probabilities.shape[0] == 5
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, np.argmax(probabilities, axis=0))
    np.testing.assert_allclose(uncertainty, entropy(probabilities, axis=0) / math.log(5), atol=1e-5)
    assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1.0
    # the labels sit on the heart in world space
    assert _mean_dice(labels, _truth(data, "aniso")) > 0.5

    record = json.loads(outputs["volumes"].read_text())
    assert len(record["atlases"]) == ATLASES and record["fusion"]["method"] == "weighted"
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    for name, region in record["regions"].items():
        mask = labels == region["label"]
        assert region["volume_ml"] == pytest.approx(np.count_nonzero(mask) * voxel_ml, rel=1e-9), name
        assert region["mean_uncertainty"] == pytest.approx(uncertainty[mask].mean(), abs=1e-6), name
        low, high = region["interval_ml"]
        volumes = sorted(region["atlas_volumes_ml"].values())
        assert volumes[0] <= low <= high <= volumes[-1]
        assert region["expected_volume_ml"] > 0
    assert {"read", "align_prepare", "register_warp", "fuse", "to_original", "write", "total"} <= set(
        record["timings_s"]
    )


def test_a_failed_write_leaves_no_output(data, tmp_path, monkeypatch):
    saved = nib.save

    def failing_save(image, path):
        if "probabilities" in str(path):
            raise OSError(28, "No space left on device", str(path))
        saved(image, path)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        segment(
            data / "new.nii.gz", data / "model.pt", data / "work", out_prefix=tmp_path / "case", atlas_count=2
        )
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad inputs
def _cli(data: Path, out: Path, *, model=None, atlases=None, image=None, extra=()) -> int:
    return main(
        [
            "segment",
            "--model",
            str(model or data / "model.pt"),
            "--atlases",
            str(atlases or data / "work"),
            "--image",
            str(image or data / "new.nii.gz"),
            "--out",
            str(out / "case"),
            "--no-progress",
            *extra,
        ]
    )


def _refused(capsys, out: Path, code: int, pattern: str) -> None:
    assert code == 2
    assert pattern in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_an_atlas_folder_without_labels_is_refused(data, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(data / "work", unlabelled)
    for path in (unlabelled / "prepared" / "labels").iterdir():
        labels, affine = read_nifti(path, kind="labels")
        write_nifti(path, np.zeros_like(labels, dtype=np.uint8), affine)
    _refused(
        capsys, tmp_path / "out", _cli(data, tmp_path / "out", atlases=unlabelled), "no labelled subjects"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(
        capsys, tmp_path / "out", _cli(data, tmp_path / "out", atlases=empty), "not a prepared work folder"
    )
    with pytest.raises(ValueError, match="no labelled subjects"):
        segment(data / "new.nii.gz", data / "model.pt", unlabelled)


def test_a_model_on_another_grid_is_refused(data, tmp_path, capsys):
    subjects = json.loads((data / "work" / "prepared" / "subjects.json").read_text())
    other = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=subjects["shape"], spacing_mm=(1.5, 1.5, 6.0)))
    save_checkpoint(tmp_path / "other.pt", other)
    code = _cli(data, tmp_path / "out", model=tmp_path / "other.pt")
    _refused(capsys, tmp_path / "out", code, "was trained on")


def test_an_image_that_is_not_3d_is_refused(data, tmp_path, capsys):
    image, affine = read_nifti(data / "new.nii.gz")
    four_d = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([image] * 3, axis=-1), affine), str(four_d))
    _refused(capsys, tmp_path / "out", _cli(data, tmp_path / "out", image=four_d), "expected a 3D volume")
    with pytest.raises(ValueError, match="3D volume"):
        segment((image[:, :, 0], affine), data / "model.pt", data / "work")


def test_an_image_without_a_heart_is_refused(data, tmp_path, capsys, rng):
    image, affine = read_nifti(data / "new.nii.gz")
    noise = tmp_path / "noise.nii.gz"
    write_nifti(noise, rng.normal(100.0, 30.0, image.shape).astype(np.float32), affine)
    _refused(capsys, tmp_path / "out", _cli(data, tmp_path / "out", image=noise), "no heart found")


def test_existing_outputs_and_bad_options_are_refused_before_any_work(data, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, out, _cli(data, out, extra=("--atlas-count", "7")), "has 6 labelled atlases")
    _refused(capsys, out, _cli(data, out, image=tmp_path / "missing.nii.gz"), "no such file")
    out.mkdir()
    (out / "case_labels.nii.gz").write_text("keep me")
    assert _cli(data, out) == 2
    error = capsys.readouterr().err
    assert "case_labels.nii.gz exists" in error and "--force" in error
    assert sorted(p.name for p in out.iterdir()) == ["case_labels.nii.gz"]
    assert (out / "case_labels.nii.gz").read_text() == "keep me"
    with pytest.raises(ValueError, match="'fusion'"):
        segment(data / "new.nii.gz", data / "model.pt", data / "work", fusion="best")
