# One way to run everything, the same in CI as on a laptop.
# `make test` / `make demo` create .venv when missing and install the project into it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-all demo bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,codecs]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m '' $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/unet demo $(DEMO_ARGS)

bench: $(STAMP)
	$(VENV)/bin/unet bench all

# On a machine with NVIDIA GPUs: TensorFlow's CUDA libraries (the gpu extra), then the GPU benchmark.
bench-gpu: $(STAMP)
	$(PY) -m pip install --quiet -e '.[gpu]'
	$(VENV)/bin/unet bench gpu $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-output
