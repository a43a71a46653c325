# The two commands of the README: `make demo` and `make test`. Both do all set-up first.
# `make calibrate` re-runs the gate's calibration (docs/parity.md, "Calibration").
SHELL := /bin/bash
VENV := .venv
PB := $(VENV)/bin/paritybed
DEMO_OUT ?= runs/demo
CALIBRATION_OUT ?= runs/calibration
HELDOUT_OUT ?= runs/heldout

.PHONY: setup demo test bench calibrate clean

setup:
	@bash scripts/setup.sh

demo:  # set-up without the HAPI FHIR server, which the demo does not use
	@PARITYBED_SETUP_HAPI=0 bash scripts/setup.sh
	@$(PB) demo --out $(DEMO_OUT)

# Two workers: the kernel and HAPI FHIR tests in order on one, the other test files on the other
# (tests/conftest.py).  `make test TEST_WORKERS=` runs them all in one process.
TEST_WORKERS := -n 2 --dist loadgroup

test: setup
	@$(VENV)/bin/python -P -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)  # -P: the checkout root must not shadow fhir.resources with fhir/

bench: setup
	@$(VENV)/bin/python benchmarks/__main__.py $(BENCH_ARGS)  # as a script: see benchmarks/__main__.py

# The calibration sweep, the held-out sweep (both resumable: an interrupted `make calibrate`
# continues; a code change reruns them), then the thresholds, their plots and the held-out score.
calibrate: setup
	@$(PB) sweep sweeps/calibration.yaml --out $(CALIBRATION_OUT) $(SWEEP_ARGS)
	@$(PB) sweep sweeps/heldout.yaml --out $(HELDOUT_OUT) $(SWEEP_ARGS)
	@$(PB) calibrate $(CALIBRATION_OUT) --holdout $(HELDOUT_OUT) --out sweeps/calibration.json --plots docs/calibration

clean:
	rm -rf runs .pytest_cache build *.egg-info
