# One place for every install step: `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# TensorFlow and DALI versions the DALI TensorFlow plugin is built against (prebuilt for TF 2.20, 2.21).
# On a machine with an NVIDIA GPU (nvidia-smi lists one) TensorFlow comes with its CUDA libraries and
# CuPy holds the region tiles on the GPU; elsewhere plain TensorFlow (no CUDA download).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TF_SPEC ?= tensorflow$(if $(HAS_GPU),[and-cuda])>=2.20,<2.22
# Keras on JAX: the CPU build everywhere (the tests run the JAX path), its CUDA build beside a GPU
JAX_GPU_SPEC ?= jax[cuda12]>=0.4.31
EXTRAS ?= dev,jax$(if $(HAS_GPU),$(comma)gpu)
comma := ,
DALI_SPEC ?= nvidia-dali-cuda120>=2.0
PLUGIN_SPEC ?= nvidia-dali-tf-plugin-cuda120

.PHONY: setup demo test bench gpu-check lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel
	$(PIP) install -q "$(TF_SPEC)" "$(DALI_SPEC)"
	# the plugin compiles against the installed TensorFlow and DALI: after both, without build isolation
	$(PIP) install -q --no-build-isolation "$(PLUGIN_SPEC)==$$($(PY) -c 'import nvidia.dali as d; print(d.__version__)')"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(if $(HAS_GPU),$(PIP) install -q "$(JAX_GPU_SPEC)")
	$(PY) -c "import dalidw.tf as t; t.import_plugin(); print('dalidw: set-up complete')"
	touch $@

demo: setup
	$(VENV)/bin/dalidw demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py --quick

gpu-check: setup
	$(PY) bench/gpu_check.py --out gpu-check.json

lint: setup
	$(VENV)/bin/ruff check dalidw tests bench

clean:
	rm -rf $(VENV) build *.egg-info
