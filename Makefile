# ImageIQ developer commands. The two that matter:
#   make serve   - set everything up on a fresh clone and serve the classifier on :3000
#   make test    - set everything up and run the linters and the test suite
PYTHON ?= python3
VENV ?= .venv
PORT ?= 3000
HOST ?= 0.0.0.0
BIN := $(VENV)/bin
DEMO_DATA ?= .data/digits
DEMO_KEY ?= .data/demo.key

# The BentoML model store lives in the work tree unless you point it elsewhere.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK ?= True

.PHONY: install serve demo-model test lint format clean

install: $(VENV)/.install-stamp

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(VENV)/.install-stamp: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo-model: install
	$(BIN)/imageiq demo-model --data $(DEMO_DATA)

# The embedded defaults: SQLite and stored images under .imageiq/, an in-process cache. The
# demo's admin key is kept in $(DEMO_KEY) (send it as `Authorization: Bearer $$(cat $(DEMO_KEY))`).
serve: demo-model
	$(BIN)/imageiq db upgrade
	$(BIN)/imageiq keys create --name demo --scopes admin --save $(DEMO_KEY) --if-missing > /dev/null
	@echo "API key for this demo: $$(cat $(DEMO_KEY))  (also in $(DEMO_KEY))"
	$(BIN)/bentoml serve bentos.service:ImageClassifier --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy load-tests/benchmark.py load-tests/cache_load.py

test: lint
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .bentoml-test .pytest_cache .mypy_cache .ruff_cache
