"""LCC Log-Demons (svfnet.baselines.lcc_demons) and its command, ``svfnet demons``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from svfnet.baselines import lcc_demons
from svfnet.baselines.lcc_demons import LCCDemonsParams
from svfnet.evaluation import metrics
from svfnet.ops import fields
from tests.demons_fixtures import deformed_copy, known_svf, prepared_subjects

# Not the cohort the defaults were tuned on (seed 0, benchmarks/tune_lcc_demons.py).
TEST_SEED = 7


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(work folder, its two prepared subjects)."""
    folder = tmp_path_factory.mktemp("demons")
    return folder / "work", prepared_subjects(folder, 2, TEST_SEED)


@pytest.fixture(scope="module")
def subjects(cohort):
    return cohort[1]


def myocardium_dice(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    return metrics.dice(labels_a == 2, labels_b == 2)


def test_recovers_most_of_a_known_smooth_deformation(subjects):
    fixed = subjects[1]
    svf_true = known_svf(np.random.default_rng(2), fixed.labels, fixed.spacing_mm)
    moving_image, moving_labels = deformed_copy(fixed, svf_true)
    assert myocardium_dice(moving_labels, fixed.labels) < 0.6  # a hard case to begin with

    svf, info = lcc_demons.register(moving_image, fixed.image, spacing=fixed.spacing_mm, return_info=True)
    assert svf.shape == (3, *fixed.image.shape) and svf.dtype == np.float32
    disp = fields.exp(svf)
    registered_labels = np.asarray(fields.warp_labels(moving_labels, disp))
    assert myocardium_dice(registered_labels, fixed.labels) > 0.85
    assert float(np.asarray(fields.jacobian_det(disp)).min()) > 0.0  # exp(v) does not fold
    assert [level.shape for level in info.levels] == [(16, 16, 16), (32, 32, 16), (64, 64, 16)]  # slices kept
    assert all(level.lcc_end > level.lcc_start for level in info.levels)


def test_recovers_an_in_plane_translation_in_the_right_units(subjects):
    fixed = subjects[0]
    translation = np.array([2.0, -1.5, 0.0], dtype=np.float32)  # voxels of a 1.9 × 1.9 × 6.9 mm grid
    shift = np.broadcast_to(translation[:, None, None, None], (3, *fixed.image.shape)).copy()
    moving = np.asarray(fields.warp(fixed.image, shift))  # moving(x) = fixed(x + t): registering undoes t
    svf = lcc_demons.register(moving, fixed.image, spacing=fixed.spacing_mm)
    heart = fixed.labels > 0
    recovered = np.median(np.asarray(fields.exp(svf))[:, heart], axis=1)
    np.testing.assert_allclose(recovered, -translation, atol=0.3)


def test_an_image_registered_to_itself_barely_moves(subjects):
    image = subjects[0].image
    svf, info = lcc_demons.register(image, image, spacing=subjects[0].spacing_mm, return_info=True)
    assert float(np.abs(svf).max()) < 0.1
    assert all(level.converged for level in info.levels)  # nothing to gain: every level stops early


def test_torch_in_torch_out_and_parameter_overrides(subjects):
    fixed, moving = subjects
    params = LCCDemonsParams(levels=2, iterations=3)
    svf, info = lcc_demons.register(
        torch.from_numpy(moving.image),
        torch.from_numpy(fixed.image),
        spacing=fixed.spacing_mm,
        params=params,
        sigma_elastic_mm=4.0,
        return_info=True,
    )
    assert isinstance(svf, torch.Tensor) and svf.shape == (3, *fixed.image.shape)
    assert info.params.sigma_elastic_mm == 4.0 and info.params.levels == 2
    assert [level.iterations for level in info.levels] == [3, 3]


@pytest.mark.parametrize(
    ("shape", "spacing", "expected"),
    [
        ((64, 64, 16), (1.9, 1.9, 6.9), [(64, 64, 16), (32, 32, 16), (16, 16, 16)]),  # thick slices kept
        ((32, 32, 32), (1.0, 1.0, 1.0), [(32, 32, 32), (16, 16, 16), (8, 8, 8)]),
        ((48, 40, 12), (1.0, 1.0, 1.2), [(48, 40, 12), (24, 20, 12), (12, 10, 12)]),  # no axis below 8
        ((20, 20, 1), (1.0, 1.0, 1.0), [(20, 20, 1), (10, 10, 1)]),  # a single slice; stops at 8 voxels
    ],
)
def test_pyramid_respects_anisotropy_and_minimum_size(shape, spacing, expected):
    grids = lcc_demons.pyramid(shape, spacing, 3, 8)
    assert [g[0] for g in grids] == expected
    for (n, s), (n_coarse, s_coarse) in zip(grids, grids[1:], strict=False):
        for a in range(3):  # the coarse grid spans the same extent, corners aligned
            if n[a] > 1:
                assert (n_coarse[a] - 1) * s_coarse[a] == pytest.approx((n[a] - 1) * s[a])


def test_bad_inputs_are_reported_before_any_work(subjects):
    image = subjects[0].image
    spacing = subjects[0].spacing_mm
    with pytest.raises(ValueError, match="'moving'.*'fixed'.*same grid"):
        lcc_demons.register(image[:, :, :-1], image, spacing=spacing)
    with pytest.raises(ValueError, match="'moving'.*NaN"):
        lcc_demons.register(np.full_like(image, np.nan), image, spacing=spacing)
    with pytest.raises(ValueError, match="'fixed' is constant"):
        lcc_demons.register(image, np.zeros_like(image), spacing=spacing)
    with pytest.raises(ValueError, match="'fixed' must be a non-empty \\(I, J, K\\)"):
        lcc_demons.register(image, image[0], spacing=spacing)
    with pytest.raises(ValueError, match="'spacing'"):
        lcc_demons.register(image, image, spacing=(1.0, 1.0))
    with pytest.raises(TypeError, match="unknown parameter.*sigma_x"):
        lcc_demons.register(image, image, spacing=spacing, sigma_x=1.0)
    with pytest.raises(ValueError, match="'sigma_i'"):
        lcc_demons.register(image, image, spacing=spacing, sigma_i=0.0)
    with pytest.raises(ValueError, match="'iterations'.*one count per level"):
        lcc_demons.register(image, image, spacing=spacing, iterations=(10, 10))
    with pytest.raises(TypeError, match="'moving'"):
        lcc_demons.register("moving.nii.gz", image, spacing=spacing)


# ----------------------------------------------------------------------------- svfnet demons
def test_demons_command_writes_the_svf_and_warped_images(cohort, tmp_path, capsys):
    from svfnet.cli import main
    from svfnet.commands.demons import read_field
    from svfnet.common.workdir import WorkDir
    from svfnet.data.nifti import read_nifti

    workdir, subjects = cohort
    folder = WorkDir(workdir)
    moving, fixed = folder.image(subjects[1].id), folder.image(subjects[0].id)
    out = tmp_path / "out"
    argv = [
        "demons",
        "--moving",
        str(moving),
        "--fixed",
        str(fixed),
        "--out",
        str(out),
        "--moving-labels",
        str(folder.labels(subjects[1].id)),
        "--iterations",
        "2",
        "--sigma-i",
        "0.2",
    ]
    assert main(argv) == 0
    svf, affine = read_field(out / "svf.nii.gz")
    disp, _ = read_field(out / "displacement.nii.gz")
    np.testing.assert_allclose(disp, fields.exp(svf), atol=1e-5)
    _, fixed_affine = read_nifti(fixed)
    assert svf.shape == (3, 64, 64, 16) and np.abs(svf).max() > 0
    np.testing.assert_allclose(affine, fixed_affine)
    warped, _ = read_nifti(out / "warped.nii.gz")
    moving_image, _ = read_nifti(moving)
    np.testing.assert_allclose(warped, fields.warp(moving_image, fields.exp(svf)), atol=1e-4)
    warped_labels, _ = read_nifti(out / "warped_labels.nii.gz", kind="labels")
    assert set(np.unique(warped_labels)) <= {0, 1, 2, 3, 4}
    record = json.loads((out / "demons.json").read_text())
    assert record["params"]["iterations"] == 2 and record["params"]["sigma_i"] == 0.2
    assert len(record["levels"]) == 3

    assert main(argv) == 2  # results already there: refused without --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    # replaced by a registration without labels: the old warped labels do not stay beside it
    without_labels = argv[:7] + argv[9:]
    assert main([*without_labels, "--force"]) == 0
    assert not (out / "warped_labels.nii.gz").exists() and (out / "demons.json").is_file()


def test_levels_alone_spreads_the_default_iterations():
    """The default iterations are per level: another number of levels keeps 40 on the finest."""
    assert lcc_demons.LCCDemonsParams(levels=2).checked().iterations_per_level() == (30, 40)
    assert lcc_demons.LCCDemonsParams(levels=4).iterations_per_level() == (30, 30, 30, 40)
    assert lcc_demons.LCCDemonsParams(levels=2, iterations=5).iterations_per_level() == (5, 5)
    with pytest.raises(ValueError, match="one count per level"):
        lcc_demons.LCCDemonsParams(levels=2, iterations=(1, 2, 3)).checked()


def test_demons_command_refuses_images_on_different_grids(subjects, tmp_path, capsys):
    from svfnet.cli import main
    from svfnet.data.nifti import write_nifti

    image = subjects[0].image
    write_nifti(tmp_path / "a.nii.gz", image, np.diag([1.9, 1.9, 6.9, 1.0]))
    write_nifti(tmp_path / "b.nii.gz", image, np.diag([1.9, 1.9, 8.0, 1.0]))
    write_nifti(tmp_path / "c.nii.gz", image[:, :, :-2], np.diag([1.9, 1.9, 6.9, 1.0]))
    for other in ("b", "c"):
        code = main(
            [
                "demons",
                "--moving",
                str(tmp_path / f"{other}.nii.gz"),
                "--fixed",
                str(tmp_path / "a.nii.gz"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        assert code == 2
        assert "one grid" in capsys.readouterr().err
    code = main(
        [
            "demons",
            "--moving",
            str(tmp_path / "a.nii.gz"),
            "--fixed",
            str(tmp_path / "a.nii.gz"),
            "--out",
            str(tmp_path / "out"),
            "--sigma-fluid",
            "-1",
        ]
    )
    assert code == 2 and "sigma_fluid_mm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- refinement (initial_svf)
def test_a_zero_start_is_exactly_the_registration_from_zero(subjects):
    moving, fixed = subjects[0], subjects[1]
    quick = {"levels": 2, "iterations": (4, 3), "spacing": fixed.spacing_mm}
    plain = lcc_demons.register(moving.image, fixed.image, **quick)
    started = lcc_demons.register(moving.image, fixed.image, initial_svf=np.zeros_like(plain), **quick)
    np.testing.assert_array_equal(started, plain)


def test_with_no_iterations_the_start_comes_back_through_the_coarse_level(subjects):
    """Carried to the coarsest level (prefiltered, in its voxels) and back: a smooth start returns
    nearly unchanged, so neither level's voxel units nor an axis are mixed up."""
    fixed = subjects[1]
    start = known_svf(
        np.random.default_rng(5), fixed.labels, fixed.spacing_mm, amplitude_vox=3.0, sigma_mm=25.0
    )
    for levels in (1, 2, 3):
        back = lcc_demons.register(
            fixed.image, fixed.image, spacing=fixed.spacing_mm, levels=levels, iterations=0, initial_svf=start
        )
        tolerance = 1e-6 if levels == 1 else 0.08 * float(np.abs(start).max())
        np.testing.assert_allclose(back, start, atol=tolerance, err_msg=f"{levels} level(s)")


def test_refinement_uses_its_start(subjects):
    """From halfway to LCC Log-Demons' own result, a few iterations on the two finest levels end
    closer to the fixed labels than the same iterations from zero."""
    fixed = subjects[1]
    svf_true = known_svf(np.random.default_rng(2), fixed.labels, fixed.spacing_mm)
    moving_image, moving_labels = deformed_copy(fixed, svf_true)
    full = lcc_demons.register(moving_image, fixed.image, spacing=fixed.spacing_mm)

    def dice_of(svf):
        return myocardium_dice(np.asarray(fields.warp_labels(moving_labels, fields.exp(svf))), fixed.labels)

    budget = {"levels": 2, "iterations": (3, 3), "spacing": fixed.spacing_mm}
    from_zero = lcc_demons.register(moving_image, fixed.image, **budget)
    refined = lcc_demons.register(moving_image, fixed.image, initial_svf=0.5 * full, **budget)
    assert dice_of(refined) > dice_of(from_zero) + 0.05
    assert dice_of(refined) > dice_of(0.5 * full)


def test_a_bad_start_is_refused_naming_it(subjects):
    image, spacing = subjects[0].image, subjects[0].spacing_mm
    good = np.zeros((3, *image.shape), np.float32)
    bad_starts = [
        good[:, :-1],
        good[0],
        good.astype(np.int32),
        np.where(good == 0, np.nan, good).astype(np.float32),
    ]
    for bad in bad_starts:
        with pytest.raises(ValueError, match="'initial_svf'"):
            lcc_demons.register(image, image, spacing=spacing, initial_svf=bad)
    with pytest.raises(TypeError, match="'initial_svf'"):
        lcc_demons.register(image, image, spacing=spacing, initial_svf=[0.0])
    torch_start = torch.zeros(3, *image.shape)
    refined = lcc_demons.register(
        image, image, spacing=spacing, levels=1, iterations=1, initial_svf=torch_start
    )
    assert refined.shape == (3, *image.shape) and refined.dtype == np.float32
