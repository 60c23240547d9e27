# `make test` on a fresh machine: creates .venv, installs bnjax with its test
# extra, runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests

bench: $(STAMP)
	$(PY) -m benchmarks.norms
	$(PY) -m benchmarks.transforms
	$(PY) -m benchmarks.train_step

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
