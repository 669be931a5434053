# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The suite's PostgreSQL server (each session creates and drops a database of its own).
export GREENROOM_TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: install run test test-real lint format bench models clean

install: $(VENV)/.installed

# torch is installed first, on its own, so pip takes the CPU build on disk instead of a CUDA one.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

run: install
	$(BIN)/greenroom serve

lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix src tests bench scripts
	$(BIN)/ruff format src tests bench scripts

test: lint
	$(BIN)/pytest

# The migration with the real models (tests marked `real_models`); .ci/run runs it after `test`.
test-real: models
	$(BIN)/pytest -m real_models

bench: install
	$(BIN)/python bench/serving.py

# The real models of the migration bench and tests (about 400 MB once; cached, verified by hash):
# not part of `make run` or `make test`. GREENROOM_MODELS_DIR moves the cache.
models: install
	$(BIN)/python scripts/models.py

clean:
	rm -rf $(VENV) .pytest_cache
