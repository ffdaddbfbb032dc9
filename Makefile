# make install: .venv with the pinned, tested versions (requirements.lock) and this package (editable).
# make sweep:   the default sweep, masking=full,last,all,weighted on the embedded default (2 CPU cores: ~3 min,
#               jobs in parallel; benchmarks/bench_default_sweep.py).
# make test:    the default test suite (what CI runs); test-slow adds the slow tests.
# make paper:   regenerates the README's default table (reports/lr_tuning/: 64 runs, learning rate selected on
#               validation, compared on test over 10 seeds) from the shipped runs.csv, in seconds.
# make test-slurm: starts a one-node Slurm on this machine (root) and runs the tests that submit to it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install sweep test test-slow test-gpu test-slurm lint report paper clean

install: $(STAMP)

# torch==2.13.0 is pinned in the lock file: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

sweep: $(STAMP)
	$(PY) -m sft_sweeps -m masking=full,last,all,weighted

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not gpu"

test-slurm: $(STAMP)
	scripts/slurm_cluster.sh start
	$(PY) -m pytest -m slurm

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check sft_sweeps tests benchmarks

report: $(STAMP)
	$(PY) -m sft_sweeps.report "multirun/*" --out reports/latest

# Every table the README shows, from the shipped run table (reports/*/runs.csv): no training, seconds.
paper: $(STAMP)
	$(PY) -m sft_sweeps.report reports/lr_tuning/runs.csv --select-key train.learning_rate --out reports/lr_tuning

clean:
	rm -rf outputs multirun .cache/sft_sweeps
