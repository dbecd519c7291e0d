# overcommit-sim: every target builds .venv from the project's own files on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPEC ?= experiments/quickstart.yaml
PYTEST_ARGS ?=

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: venv run test unit lint bench proto clean lock validate fuzz

venv: $(STAMP)

# numba's on-disk cache does not notice when a function a kernel inlines changes:
# start from an empty cache whenever a core model source is newer than it.
CACHE_STAMP := .numba_cache/.sources
$(CACHE_STAMP): $(wildcard services/guest/core/*.py services/host/core/*.py)
	rm -rf .numba_cache
	mkdir -p .numba_cache
	touch $@

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	@echo "installing the virtual environment (.venv) from pyproject.toml and constraints.txt ..."
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP) $(CACHE_STAMP)
	$(BIN)/overcommit run $(SPEC) --report

# Tests that start a Ray cluster run in a pytest process of their own: Ray starts its
# daemons with a Python preexec_fn after fork(), which can deadlock in a process that
# already runs other tests' gRPC threads (the raylet then never starts).
# The tests that start no Ray run on TEST_WORKERS processes (pytest-xdist), each test
# file in one of them (--dist loadfile: module fixtures and file order kept); the Ray
# tests run after them, alone, since their cluster takes the machine's cores.
TEST_WORKERS ?= $(shell $(PY) -c "import os; print(min(4, os.cpu_count() or 1))")
test: $(STAMP) $(CACHE_STAMP)
	@bash scripts/ensure_prometheus.sh
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not ray" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	$(BIN)/python -m tests.fuzz.atheris_grpc -runs=$(FUZZ_RUNS) -seed=1 -rss_limit_mb=4096 -artifact_prefix=/tmp/overcommit-fuzz-
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ray $(PYTEST_ARGS)

# Coverage-guided fuzzing of the three gRPC services (tests/fuzz/atheris_grpc.py): make
# test runs FUZZ_RUNS inputs; this runs for FUZZ_SECONDS, keeping its corpus in .fuzz-corpus/.
FUZZ_RUNS ?= 2500
FUZZ_SECONDS ?= 600
fuzz: $(STAMP) $(CACHE_STAMP)
	mkdir -p .fuzz-corpus
	$(BIN)/python -m tests.fuzz.atheris_grpc .fuzz-corpus -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -artifact_prefix=.fuzz-corpus/crash-

# docs/validation.md's figures, from scratch and in-process (about 7.5 minutes): the cover
# letter's table (and again with twice the measured seconds), the published host-memory
# measurements; fails when a prediction leaves its tolerance.
validate: $(STAMP) $(CACHE_STAMP)
	$(BIN)/python -m services.sim.validation --out docs/validation --doc docs/validation.md --window-check

# mypy checks the paths listed in pyproject's [tool.mypy] files (the cores and the protocol).
lint: $(STAMP)
	$(BIN)/ruff check services bench tests scripts
	$(BIN)/ruff format --check services bench tests scripts
	$(BIN)/lint-imports
	$(BIN)/mypy
	@if command -v npx >/dev/null 2>&1 && npx --yes @bufbuild/buf --version >/dev/null 2>&1; then \
		npx --yes @bufbuild/buf lint protos; else echo "buf not available: proto style kept by review"; fi

bench: $(STAMP) $(CACHE_STAMP)
	$(BIN)/python bench/guest_allocator.py --json
	$(BIN)/python bench/host_pool.py --json
	$(BIN)/python bench/codec.py --json
	@if [ -f bench/grpc_sync.py ]; then $(BIN)/python bench/grpc_sync.py --json; fi
	@if [ -f bench/end_to_end.py ]; then $(BIN)/python bench/end_to_end.py --json; fi
	$(BIN)/python bench/load.py --json

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable > constraints.txt

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache
