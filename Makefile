# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   - make .venv, install distgap, evaluate the bundled sample data
#   make test   - make .venv, install distgap with its test tools, run the tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install compile demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory compile
	touch $(STAMP)

install: $(STAMP)

# An editable install leaves the modules uncompiled, and where
# PYTHONDONTWRITEBYTECODE is set Python compiles them again at every start
# (60 ms of each run); compile them as a wheel's install would.
compile:
	$(BIN)/python -m compileall -q distgap_cli

demo: $(STAMP)
	@echo "== raw pixels =="
	$(BIN)/distgap eval sample_data/digits_pixels.parquet --distance cosine
	@echo
	@echo "== embeddings of a model trained with a metric-learning loss =="
	$(BIN)/distgap eval sample_data/digits_trained.parquet --distance cosine

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy distgap_cli

bench: $(STAMP) compile
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
