# Each target sets up what it needs on a fresh machine, then does its job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned here (not in pyproject) because any other spec pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diag demo demo-run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_params.py

# Not part of CI: every atheris harness under tests/fuzz for FUZZ_SECONDS each.
FUZZ_SECONDS ?= 600
FUZZ_JOBS ?= 2
FUZZ_TARGETS ?=
fuzz: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[fuzz]'
	cd tests/fuzz && ../../$(BIN)/python run_all.py --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) demo-run .pytest_cache
