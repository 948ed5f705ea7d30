#!/usr/bin/env bash
# make gpu-check: builds svfnet with its CUDA launchers, runs the CUDA tests and the GPU benchmark,
# and writes every log into one folder (OUT, default build/gpu-check).
#
# Works on a machine that has python3 with torch (a CUDA build), nvcc, CMake, pybind11,
# scikit-build-core, pytest, pytest-benchmark, SciPy and scikit-image but cannot install from the
# network: the pure-Python dependencies it lacks (nibabel, meshio, SimpleITK, ...) come as wheels in
# .whl/ (see docs/performance.md for the download line), installed with --no-index into
# build/gpu-deps. The build goes to build/gpu-site (no editable install, nothing outside the clone).
# Environment: PYTHON (python3), SVFNET_CUDA_ARCHITECTURES (90), OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-build/gpu-check}
ARCH=${SVFNET_CUDA_ARCHITECTURES:-90}
mkdir -p "$OUT"
status=0

if compgen -G ".whl/*.whl" > /dev/null; then
  echo "== dependencies from .whl/: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target build/gpu-deps .whl/*.whl \
    || { echo "gpu-check: installing the wheels of .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="build/gpu-deps${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== build (SVFNET_CUDA=ON, architectures $ARCH)"
rm -rf build/gpu-site
SVFNET_CUDA=ON SVFNET_CUDA_ARCHITECTURES="$ARCH" SKBUILD_BUILD_DIR=build/gpu \
  "$PY" -m pip install --no-build-isolation --no-deps --target build/gpu-site . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "gpu-check: the CUDA build failed (log: $OUT/build.log)" >&2; exit 2; }
# the built package first, then the repository root (the tests and benchmarks packages)
export PYTHONPATH="$PWD/build/gpu-site${PYTHONPATH:+:$PYTHONPATH}:$PWD"

echo "== build info" | tee "$OUT/info.log"
"$PY" - <<'PYEOF' 2>&1 | tee -a "$OUT/info.log"
import torch, svfnet
print("svfnet from", svfnet.__file__)
# an editable install of another build (its import hook runs before PYTHONPATH) would be tested instead
assert "gpu-site" in svfnet.__file__, f"not the build of build/gpu-site: {svfnet.__file__}; uninstall svfnet first"
print("build_info", svfnet.build_info())
print("cuda_available", svfnet.cuda_available())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== CUDA tests (pytest -m cuda)"
export SVFNET_EXPECT_CUDA_BUILD=1  # test_build: the launchers must be there
"$PY" -m pytest -m cuda -p no:cacheprovider -q -rs tests 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== GPU benchmark"
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/benchmark.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== gpu-check: exit status $status; logs in $OUT"
exit $status
