# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# MovieLens-100K ships inside recbole; its dependencies are not needed.
DATA_PKG := recbole==1.2.1

.PHONY: venv demo test test-slow test-cluster clean

venv: $(STAMP)

# Rebuilt when pyproject.toml or the pins change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(DATA_PKG)
	@touch $(STAMP)

demo: venv
	$(PY) jobs/pipeline.py $(ARGS)

# The full-pipeline standalone-cluster test (marker `cluster`, about 4 minutes of
# JVMs) runs with `make test-cluster`, the `slow` tests (covered in part by faster
# ones) with `make test-slow`; everything else runs here, the lean cluster test (a
# worker killed mid-task, its task re-run) included, in under 15 minutes on 2 cores.
PYTEST_ARGS ?= -m "not cluster and not slow"

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -m slow

test-cluster: venv
	$(PY) -m pytest -m cluster

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
