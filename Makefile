# Fresh machine to results: `make test` (tests) — see README.md. Each target creates the
# virtual environment it needs inside the clone (.venv), installing torch first so that pip
# never pulls a multi-GB CUDA build behind our back (set TORCH to your CUDA build on a GPU machine).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(shell find csrc svfcore -type f 2>/dev/null)

.PHONY: install test bench cpu-only-build clean

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

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# Proves the extension builds, installs and imports with the CUDA launchers switched off.
cpu-only-build: install
	rm -rf build/cpu-only-wheel build/cpu-only-site
	SVFNET_CUDA=OFF SKBUILD_BUILD_DIR=build/cpu-only $(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w build/cpu-only-wheel .
	$(PY) -m pip install --quiet --no-deps --target build/cpu-only-site build/cpu-only-wheel/svfnet-*.whl
	cd build && PYTHONPATH=cpu-only-site ../$(PY) -c "import svfnet, svfnet.fields as f, numpy as n; i = svfnet.build_info(); assert not i['cuda'] and not svfnet.cuda_available(), i; f.exp(n.zeros((3, 4, 4, 4), 'f4')); print('CPU-only build imports and runs:', i)"

clean:
	rm -rf build $(VENV)
