# Two commands set everything up on a fresh machine:
#   make run   - venv, install, run the demo pipeline on the embedded default (no services)
#   make test  - venv, install with dev extras, run the test suite
#   make serve - venv, install with the serve extra, start `etl serve` (SERVE_ARGS="--port 9000")
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARDS ?= 20
PYTEST_ARGS ?=

.PHONY: run test bench serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	# bytecode now: an environment with PYTHONDONTWRITEBYTECODE would compile every module
	# of the project again on each `etl` command (~70 ms)
	$(BIN)/python -m compileall -q etl stages shards results cli
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/etl run --shards $(SHARDS)

# Two passes: everything else on one pytest-xdist process per core (tests use their own
# queues, Redis keys, tables and ports), then alone the tests marked exclusive (one stops
# RabbitMQ, which would fail whatever runs beside it). The 20 slowest tests are listed at
# the end: the suite must stay well under CI's 15 minutes.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n auto -m "not exclusive" --durations=20 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m exclusive $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: none selected

# make bench BENCH_ARGS="--quick --only embedded,tenx": see bench/bench_all.py for sections
BENCH_ARGS ?=

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/bench_all.py --write-readme $(BENCH_ARGS)

SERVE_ARGS ?=

$(VENV)/.installed-serve: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

serve: $(VENV)/.installed-serve
	$(BIN)/etl serve $(SERVE_ARGS)

clean:
	rm -rf .etl out
