# One place for every install step: `make demo` and `make test` set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# TensorFlow and DALI versions the DALI TensorFlow plugin is built against (prebuilt for TF 2.20, 2.21).
TF_SPEC ?= tensorflow>=2.20,<2.22
DALI_SPEC ?= nvidia-dali-cuda120>=2.0
PLUGIN_SPEC ?= nvidia-dali-tf-plugin-cuda120

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel
	$(PIP) install -q "$(TF_SPEC)" "$(DALI_SPEC)"
	# the plugin compiles against the installed TensorFlow and DALI: after both, without build isolation
	$(PIP) install -q --no-build-isolation "$(PLUGIN_SPEC)==$$($(PY) -c 'import nvidia.dali as d; print(d.__version__)')"
	$(PIP) install -q -e ".[dev]"
	$(PY) -c "import dalidw.tf as t; t.import_plugin(); print('dalidw: set-up complete')"
	touch $@

demo: setup
	$(VENV)/bin/dalidw demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py --quick

lint: setup
	$(VENV)/bin/ruff check dalidw tests bench

clean:
	rm -rf $(VENV) build *.egg-info
