"""Smoke test of an installed svfnet wheel (``make wheel-smoke``; not collected by pytest).

Run with the Python of an environment where only the wheel and its dependencies are installed,
from a folder outside the clone: ``python tests/wheel_smoke.py SVFNET_EXECUTABLE``. It checks that
the installed package (not the clone's sources) imports with its compiled core, then runs the
``svfnet`` command as a user would: ``info``, ``synth`` of two subjects, and one registration of
them with a small untrained SVF-Net (the pipeline runs and its outputs are finite; accuracy is the
test suite's business), plus a run of local worker processes. ``SVFNET_EXPECT_CUDA_BUILD=1``
requires the CUDA launchers to be in the wheel.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def run(*argv: str) -> str:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"wheel smoke: {' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    print(f"wheel smoke: {' '.join(argv[1:])}: {time.perf_counter() - started:.1f} s")
    return result.stdout


def main(executable: str) -> None:
    started = time.perf_counter()
    import numpy as np

    import svfnet

    clone = Path(__file__).resolve().parents[1]
    package = Path(svfnet.__file__).resolve()
    assert package.parents[1].name == "site-packages" and clone / "python" not in package.parents, (
        f"svfnet imported from {package}, not from the installed wheel"
    )
    info = svfnet.build_info()
    print("wheel smoke: build", info)
    assert info["openmp"], info
    if os.environ.get("SVFNET_EXPECT_CUDA_BUILD") == "1":
        assert info["cuda"], f"the wheel was expected to hold the CUDA launchers: {info}"

    print(run(executable, "info").rstrip())

    # the compiled core, through the public API: an exponential of a smooth field
    from svfnet.ops import fields

    grid = np.indices((16, 18, 8), dtype=np.float32)
    velocity = 0.8 * np.sin(grid / 5.0).astype(np.float32)
    displacement = fields.exp(velocity)
    assert displacement.shape == velocity.shape and np.isfinite(displacement).all()

    # local worker processes start from the installed package (spawn) and stop
    from svfnet.common.parallel import run_tasks

    outcomes = sorted(run_tasks(math.sqrt, [4.0, 9.0], workers=2, progress=False), key=lambda o: o.index)
    assert [o.value for o in outcomes] == [2.0, 3.0], outcomes

    data, out = Path("data"), Path("registered")
    run(executable, "synth", str(data), "--subjects", "2", "--force", "--no-progress")

    import torch

    from svfnet.training.model import SVFNet, SVFNetConfig, save_checkpoint

    torch.manual_seed(0)
    model = SVFNet(SVFNetConfig(widths=(4, 8, 8, 8), grid=(64, 64, 16), spacing_mm=(2.2, 2.2, 8.0)))
    with torch.no_grad():
        model.head.weight.normal_(std=0.05)  # a non-trivial SVF
    save_checkpoint("model.pt", model)

    # without the fixed labels: the rigid pre-alignment by SimpleITK, a dependency of the wheel
    run(
        executable, "register", "--model", "model.pt",
        "--moving", str(data / "synth_000.nii.gz"), "--fixed", str(data / "synth_001.nii.gz"),
        "--moving-labels", str(data / "synth_000_gt.nii.gz"),
        "--out", str(out / "pair"), "--device", "cpu", "--force", "--no-progress",
    )  # fmt: skip
    import nibabel as nib

    metadata = json.loads((out / "pair_registration.json").read_text())
    written = sorted(out.glob("pair_*.nii.gz"))
    assert len(written) == len(metadata["outputs"]) - 1, (written, metadata["outputs"])
    for path in written:
        volume = np.asanyarray(nib.load(str(path)).dataobj)
        assert volume.size and np.isfinite(volume).all(), f"{path}: not finite"
    assert math.isfinite(metadata["svf_max_vox"]) and metadata["svf_max_vox"] > 0, metadata["svf_max_vox"]
    print(
        f"wheel smoke: {len(written)} NIfTI outputs, all finite; SVF max {metadata['svf_max_vox']:.2f} voxels"
    )
    print(f"wheel smoke: passed in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/wheel_smoke.py SVFNET_EXECUTABLE")
    main(sys.argv[1])
