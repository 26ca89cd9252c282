# One way to run everything, the same in CI as on a laptop.
# `make test` / `make demo` create .venv when missing and install the project into it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# MLflow's server for the tracking tests: the full `mlflow` package pins an older pyarrow than this
# project's, so it lives in a venv of its own; the project needs only the client (the tracking extra).
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_SERVER_VERSION ?= 3.17.2
PYTEST_ARGS ?=
# pytest-xdist workers, each given whole test files (--dist loadfile: a file's module fixtures are
# made once), longest first (tests/conftest.py: LONGEST_FIRST). The e2e and slow tiers spend a
# third and a half of their time waiting on other processes (Ray heads starting, nodes declared
# dead, servers), which a second worker fills on a 2-core machine (docs/benchmarks.md, "CI time").
# The default tier runs serially unless asked (`make test WORKERS=2`, as .ci/run does);
# WORKERS=0 runs any tier in one process.
WORKERS ?=
TIER_WORKERS ?= 2
xdist = $(if $(filter-out 0 1,$(1)),-n $(1) --dist loadfile --no-loadscope-reorder)
# The e2e tier runs the fuzzer at its profile's hundreds of cases; .ci/run leaves them to the slow
# tier's thousands.
E2E_MARKS ?= (e2e or fuzz) and not slow

.PHONY: install lint test test-e2e test-slow test-all demo bench bench-gpu clean mlflow-server

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,codecs]'
	@touch $(STAMP)

mlflow-server: $(MLFLOW_VENV)/bin/mlflow

$(MLFLOW_VENV)/bin/mlflow:
	@test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet 'mlflow==$(MLFLOW_SERVER_VERSION)'

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Three tiers (tests/conftest.py): the default one is the README's command (unit and in-process
# integration tests, a few dozen fuzz cases); e2e runs real processes (CLIs, Ray heads, wheels,
# the demo, training to convergence) and the fuzzer at hundreds; slow kills processes and nodes
# and runs the fuzzer at thousands. `.ci/run` runs all three.
test: $(STAMP)
	HYPOTHESIS_PROFILE=default $(PY) -m pytest $(call xdist,$(WORKERS)) $(PYTEST_ARGS)

test-e2e: $(STAMP) $(MLFLOW_VENV)/bin/mlflow
	HYPOTHESIS_PROFILE=e2e $(PY) -m pytest -m '$(E2E_MARKS)' $(call xdist,$(or $(WORKERS),$(TIER_WORKERS))) --timeout 1800 $(PYTEST_ARGS)

test-slow: $(STAMP) $(MLFLOW_VENV)/bin/mlflow
	HYPOTHESIS_PROFILE=slow $(PY) -m pytest -m 'slow or fuzz' $(call xdist,$(or $(WORKERS),$(TIER_WORKERS))) --timeout 3600 $(PYTEST_ARGS)

test-all: test test-e2e test-slow

demo: $(STAMP)
	$(VENV)/bin/unet demo $(DEMO_ARGS)

bench: $(STAMP)
	$(VENV)/bin/unet bench all

# On a machine with NVIDIA GPUs: TensorFlow's CUDA libraries (the gpu extra), then the GPU benchmark.
bench-gpu: $(STAMP)
	$(PY) -m pip install --quiet -e '.[gpu]'
	$(VENV)/bin/unet bench gpu $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) build *.egg-info .pytest_cache demo-output
