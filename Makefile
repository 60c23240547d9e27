# `make test` on a fresh machine: creates .venv, installs bnjax with its test
# extra, runs the whole suite. `make docs`: the Sphinx site in docs/_build/html. `make study`: the same setup plus Fashion-MNIST,
# then the quick presets of the effective-LR and equilibrium studies
# (runs/<study>/report.md); `make studies` adds the two Luo et al. studies, the
# rotational-optimizer study and the AdamW-timescale study; `make standard` runs
# all six at the standard presets (the committed docs/reports).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-floors bench docs study studies standard data clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet -e '.[experiments,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=12

# The API reference and guides: Sphinx (autodoc + napoleon, myst-parser), warnings as
# errors, into docs/_build/html.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[experiments,test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/_build
	$(PY) -m sphinx -W --keep-going -b html -q docs docs/_build/html

# The oldest dependency versions setup.cfg allows, in their own venv.
FLOORS := jax==0.5.0 jaxlib==0.5.0 flax==0.10.2 optax==0.2.5 numpy==1.26.4
test-floors:
	$(PYTHON) -m venv .venv-floors
	printf '%s\n' $(FLOORS) > .venv-floors/constraints.txt
	.venv-floors/bin/pip install --quiet -c .venv-floors/constraints.txt $(FLOORS) \
	    'tensorflow-datasets==4.9.10' importlib_resources array-record 'orbax-checkpoint==0.11.5' absl-py tqdm matplotlib \
	    chex pytest pytest-xdist
	.venv-floors/bin/pip install --quiet --no-deps -e .
	.venv-floors/bin/python -m pytest -n 2 --dist loadfile

data:
	scripts/install_fashion_mnist.sh

study: $(STAMP) data
	$(PY) -m experiments.effective_lr --preset=quick --workdir=runs/effective_lr
	$(PY) -m experiments.equilibrium --preset=quick --workdir=runs/equilibrium

studies: study
	$(PY) -m experiments.bn_regularization --preset=quick --workdir=runs/bn_regularization
	$(PY) -m experiments.teacher_student --preset=quick --workdir=runs/teacher_student
	$(PY) -m experiments.rotational --preset=quick --workdir=runs/rotational
	$(PY) -m experiments.timescale --preset=quick --workdir=runs/timescale

# The standard presets: 3+ seeds per cell, decisive verdicts (56 minutes for
# the first four, about 62 for the first five, on a 2-core AMD EPYC; timescale
# about 20 more: 45 of its runs took 11.5 minutes, 39 more 10), into
# runs/standard/<study>/.
standard: $(STAMP) data
	for s in effective_lr equilibrium bn_regularization teacher_student rotational timescale; do \
	  $(PY) -m experiments.$$s --preset=standard --workdir=runs/standard/$$s || exit 1; \
	done

bench: $(STAMP)
	$(PY) -m benchmarks.norms
	$(PY) -m benchmarks.transforms
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.sweep

clean:
	rm -rf $(VENV) .venv-floors build *.egg-info .pytest_cache docs/_build
