# The two commands of the README: `make demo` and `make test`. Both do all set-up first.
SHELL := /bin/bash
VENV := .venv
PB := $(VENV)/bin/paritybed
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PB) demo --out $(DEMO_OUT)

test: setup
	@$(VENV)/bin/python -P -m pytest $(PYTEST_ARGS)  # -P: the checkout root must not shadow fhir.resources with fhir/

bench: setup
	@$(VENV)/bin/python benchmarks/__main__.py $(BENCH_ARGS)  # as a script: see benchmarks/__main__.py

clean:
	rm -rf runs .pytest_cache build *.egg-info
