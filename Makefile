PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo lint format bench screenshots clean

$(BIN)/mitmdump: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: $(BIN)/mitmdump
	$(BIN)/python -m pytest -q

lint: $(BIN)/mitmdump
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/mitmdump
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(BIN)/mitmdump
	$(BIN)/python -m tests.demo

# Benchmarks (not part of `make test`): a full run takes ~23 minutes on 2 cores, half of it
# under valgrind (skipped without it). `make bench BENCH_ARGS=--quick` for a ~8-minute run;
# `python -m bench --help` for more.
BENCH_ARGS ?=
bench: $(BIN)/mitmdump
	$(BIN)/python -m bench $(BENCH_ARGS)

screenshots: $(BIN)/mitmdump
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
