# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-cli

.PHONY: demo test lint bench docs docs-figures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the demo needs the command line's extra only; the tests and the docs build bring their own
$(DEMO_STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[cli]"
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,cli,docs]"
	touch $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/hesse demo

test: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks examples docs
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n 2 -q tests
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# the figures of the examples pages, written by the example scripts themselves
docs-figures: $(STAMP)
	$(BIN)/python examples/geometry_of_a_function.py --out docs/examples/figures
	$(BIN)/python examples/monitor_training.py --out /tmp/hesse-monitor-example
	cp /tmp/hesse-monitor-example/sharpness.png docs/examples/figures/monitor_sharpness.png
	cp /tmp/hesse-monitor-example/landscape.png docs/examples/figures/monitor_landscape.png

clean:
	rm -rf $(VENV) build dist site src/*.egg-info
