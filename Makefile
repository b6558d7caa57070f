# The two commands of the README. Each sets up what it needs and is idempotent.
#   make demo   generate an answer with the default pipeline on SmolLM2-135M and print statistics
#   make test   run the test suite
#   make lint   ruff (lint and format) and mypy, as CI runs them before the tests
#   make test-lowest  the tiny-model layer again on the oldest supported transformers (.venv-lowest)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROMPT ?= Summarize in one sentence: The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was built from 1887 to 1889 as the centerpiece of the 1889 World's Fair. The Eiffel Tower is the most visited monument in the world.

.PHONY: demo test lint test-lowest setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt examples/retrieval/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
	# torch first, pinned to the CPU build; the constraints file keeps every later step on it
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "is ignored" || true
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	# the example third-party plugin (examples/retrieval), installed the way a user installs one
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m pip install -q --disable-pip-version-check --no-build-isolation -e examples/retrieval 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import cas_spec, torch; print('cas-spec ready, torch', torch.__version__)"
	touch $(STAMP)

demo: setup
	$(BIN)/cas-spec fetch smollm2-135m >/dev/null
	$(BIN)/cas-spec generate --stats "$(PROMPT)"

test: setup
	$(BIN)/cas-spec fetch smollm2-135m >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	# the example plugin's own tests, as its own session (its own pytest settings)
	$(BIN)/python -m pytest examples/retrieval/tests $(PYTEST_ARGS)
	CAS_SPEC_LOAD_ENTRYPOINTS=1 $(BIN)/cas-spec plugins | grep -q "retrieval"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

LOWEST := .venv-lowest
# The engine, the contracts and every plugin on tiny random models (no downloads), on the oldest
# transformers pyproject.toml allows; the full suite runs on the newest (`make test`).
TINY_LAYER := tests/core tests/contracts tests/adapters tests/verifiers tests/strategies tests/schedulers tests/test_compat.py

$(LOWEST)/.installed: pyproject.toml constraints-lowest.txt
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	PIP_CONSTRAINT=constraints-lowest.txt $(LOWEST)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "is ignored" || true
	PIP_CONSTRAINT=constraints-lowest.txt $(LOWEST)/bin/python -m pip install -q --disable-pip-version-check -e ".[testing]" 2>&1 | grep -v "is ignored" || true
	$(LOWEST)/bin/python -c "import transformers; print('lowest: transformers', transformers.__version__)"
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest $(TINY_LAYER) -m "not real_model and not slow" -p no:cacheprovider

clean:
	rm -rf $(VENV) $(LOWEST) build src/*.egg-info .pytest_cache .hypothesis
