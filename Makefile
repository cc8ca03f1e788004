# Each target installs what it needs first (a .venv from requirements.lock), so a
# fresh clone needs only `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# This machine's pip config names local indexes that may be absent: hide those warnings.
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export DVC_NO_UPDATE_CHECK := 1
export PYTHONHASHSEED := 0
# Stage commands call `python`: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test test-fast lint ui repro bench sweep clean-demo plots

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	@touch $(STAMP)

## demo: the whole pipeline on generated MVTec-format data, on the CPU, in minutes
## Two networks' stages at a time (mr2unet repro: separate dvc processes, same results as
## dvc repro); REPRO_ARGS=--force runs every stage again.
DEMO_JOBS ?= 2
demo: $(STAMP)
	$(BIN)/python -m mr2unet.cli profile demo
	$(BIN)/python -m mr2unet.cli repro --jobs $(DEMO_JOBS) $(REPRO_ARGS)
	@echo "Done: metrics/ (IOU/Dice), reports/report.html, registry aliases (data/promotion.json), MLflow store mlflow.db (make ui)."

## sweep: the demo over several seeds as queued DVC experiments (JOBS workers with
## THREADS CPU threads each), then mean ± std per category in reports/seed_spread.md.
## Extra overrides for every experiment: SWEEP_ARGS="-S train.lr=1e-3"
SEEDS ?= 0 1 2 3 4
JOBS ?= 2
THREADS ?= 1
PROFILE ?= demo
SWEEP_ARGS ?=
sweep: $(STAMP)
	$(BIN)/python -m mr2unet.cli profile $(PROFILE)
	for seed in $(SEEDS); do \
	  $(BIN)/dvc exp run --queue -S "train.seed=$$seed" \
	    -S "run.cpu_threads=$(THREADS)" $(SWEEP_ARGS); \
	done
	$(BIN)/dvc exp run --run-all -j $(JOBS)
	@# --run-all exits 0 even when an experiment failed: say so, with where to look
	@if $(BIN)/dvc queue status | grep -q Failed; then $(BIN)/dvc queue status; \
	  echo "error: an experiment failed: dvc queue logs <name>; dvc queue remove --failed"; \
	  exit 1; fi
	$(BIN)/python -m mr2unet.cli spread

## test: the whole test suite (what .ci/run and the GitHub workflow call), with the 25
## slowest tests listed at the end; a test fails after pyproject's 900 s (pytest-timeout),
## the run after SESSION_TIMEOUT_S. PYTEST_ARGS: more pytest options.
## test-fast: the tests not marked slow (no training beyond a few steps, no server, no
## subprocess pipeline): under 3 minutes on 2 cores, the loop while changing the code.
SESSION_TIMEOUT_S ?= 3600
PYTEST_ARGS ?=
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 --session-timeout=$(SESSION_TIMEOUT_S) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src pipeline tests benchmarks

## repro: run the pipeline with params.yaml as it stands (the paper's protocol by default)
repro: $(STAMP)
	$(BIN)/dvc repro $(REPRO_ARGS)

## plots: the DVC plots of dvc.yaml as build/plots/index.html, viewable offline (the Vega
## scripts come inline from the pinned vl-convert-python, not from a CDN)
plots: $(STAMP)
	$(BIN)/python -m mr2unet.reporting.offline_plots --out build/plots

## ui: the MLflow UI on the tracking store the pipeline writes to
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --host 127.0.0.1 --port 5000

## bench: training images/s, our loop against a plain PyTorch loop (docs/performance.md).
## QUICK=1: the regression check - ours/plain per demo-size network, measured side by side,
## beside the committed ratios (benchmarks/results/cpu_ratios.json); fails when a network
## is more than 10 % below its committed ratio. BENCH_ARGS: more options for the script.
QUICK ?=
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py $(if $(QUICK),--quick) $(BENCH_ARGS)
