"""LCC Log-Demons against SimpleITK's diffeomorphic demons on one 64×64×16 pair, side by side.

Two groups, each with svfnet's LCC Log-Demons as the reference:

- ``demons 50 it 1 level 64x64x16``: both methods for 50 iterations on the full grid only (the
  setting of DESIGN.md's peer table): LCC Log-Demons (symmetric, LCC forces, no early stop) and
  SimpleITK's ``DiffeomorphicDemonsRegistrationFilter`` (SSD forces, Gaussian smoothing of the
  displacement, σ = 1.5 voxel).
- ``demons defaults 64x64x16``: LCC Log-Demons as shipped (3 levels, tuned defaults, early stop):
  the time per pair that ``svfnet evaluate`` and ``svfnet demons`` pay.

The pair is two subjects of the synthetic cohort (seed 0, prepared like ``svfnet prepare``). The
myocardium Dice before and after each method is stored in the benchmark's ``extra_info``
(``--benchmark-json``) and printed with ``-s``.

Run: ``python -m pytest benchmarks/bm_demons.py --benchmark-only --benchmark-columns=median,iqr,rounds``
"""

from __future__ import annotations

import numpy as np
import pytest

from svfnet.baselines import lcc_demons
from svfnet.evaluation import metrics
from svfnet.ops import fields

ITERATIONS = 50


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from tests.demons_fixtures import prepared_subjects

    moving, fixed = prepared_subjects(tmp_path_factory.mktemp("bm_demons"), 2, 0)[::-1]
    return moving, fixed


def myocardium_dice(moving, fixed, disp) -> float:
    warped = np.asarray(fields.warp_labels(moving.labels, np.ascontiguousarray(disp, dtype=np.float32)))
    return metrics.dice(warped == 2, fixed.labels == 2)


def simpleitk_demons(moving, fixed):
    """SimpleITK's diffeomorphic demons (SSD); returns the displacement (3, I, J, K) in voxels."""
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is a test extra (pip install SimpleITK)")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)

    def image(array):
        itk_image = sitk.GetImageFromArray(
            np.ascontiguousarray(array.transpose(2, 1, 0))
        )  # SimpleITK is (k, j, i)
        itk_image.SetSpacing(tuple(float(s) for s in fixed.spacing_mm))
        return itk_image

    fixed_image, moving_image = image(fixed.image), image(moving.image)
    spacing = np.asarray(fixed.spacing_mm)

    def run():
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(ITERATIONS)
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(1.5)
        field = demons.Execute(fixed_image, moving_image)
        # (k, j, i, 3) in mm along (x, y, z) = (i, j, k) → (3, i, j, k) in voxels
        return (
            np.moveaxis(sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3), -1, 0)
            / spacing[:, None, None, None]
        )

    return run


@pytest.mark.parametrize("peer", ["svfnet", "SimpleITK diffeomorphic (SSD)"])
def test_demons_50_iterations_1_level(bench, benchmark, pair, peer):
    moving, fixed = pair
    group = f"demons {ITERATIONS} it 1 level 64x64x16"
    if peer == "svfnet":

        def run():
            svf = lcc_demons.register(
                moving.image,
                fixed.image,
                spacing=fixed.spacing_mm,
                levels=1,
                iterations=ITERATIONS,
                tolerance=0.0,
            )
            return fields.exp(svf)
    else:
        run = simpleitk_demons(moving, fixed)
    disp = bench(group, peer, run, rounds=5)
    _record_dice(benchmark, moving, fixed, disp, peer)


def test_demons_defaults(bench, benchmark, pair):
    moving, fixed = pair
    disp = bench(
        "demons defaults 64x64x16",
        "svfnet",
        lambda: fields.exp(lcc_demons.register(moving.image, fixed.image, spacing=fixed.spacing_mm)),
        rounds=5,
    )
    _record_dice(benchmark, moving, fixed, disp, "svfnet defaults")


def _record_dice(benchmark, moving, fixed, disp, name) -> None:
    before = myocardium_dice(moving, fixed, np.zeros((3, *fixed.image.shape), np.float32))
    after = myocardium_dice(moving, fixed, disp)
    folds = int(
        np.count_nonzero(np.asarray(fields.jacobian_det(np.ascontiguousarray(disp, np.float32))) <= 0)
    )
    benchmark.extra_info.update(
        myocardium_dice_before=before, myocardium_dice_after=after, folding_voxels=folds
    )
    print(f"\n{name}: LV myocardium Dice {before:.3f} -> {after:.3f}, {folds} folding voxels")
    assert after > before  # every method must improve on the identity
