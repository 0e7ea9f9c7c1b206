# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   - make .venv, install distgap, evaluate the bundled sample data
#   make test   - make .venv, install distgap with its test tools, run the tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
