# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,cli]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hesse demo

test: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -n 2 -q tests

bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
