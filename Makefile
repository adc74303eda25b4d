# driftloop — every target sets up what it needs on a machine with only python3.
# `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PY := .venv/bin/python

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --quiet
	@touch $@

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: setup
setup: .venv/.synced browser ## create .venv from the lock file (the other targets do this themselves), and the browser

# The console's browser test drives Debian's Chromium (Playwright with executable_path; never `playwright install`,
# which downloads a browser). Installed with apt-get when missing and this runs as root; otherwise a hint.
.PHONY: browser
browser: ## Debian's headless Chromium and chromedriver for the console's browser test (apt-get, as root)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium chromium-driver) >/dev/null 2>&1; } || \
		echo "chromium is missing: the console's browser test needs it (Debian: apt-get install chromium chromium-driver)"

.PHONY: demo
demo: .venv/.synced ## run the main job: the whole loop on the embedded stack
	$(PY) -m cli demo

.PHONY: up
up: .venv/.synced ## start the embedded stack and the services until Ctrl-C
	$(PY) -m cli up

.PHONY: lint
lint: .venv/.synced ## ruff (lint + format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

.PHONY: test
test: .venv/.synced browser ## lint, types, then every test (unit, integration, e2e, the console in a browser)
	$(MAKE) --no-print-directory lint
	@set +e; $(PY) -m pytest $(TEST_PROCESSES) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

# Two pytest processes, a test module each at a time (module fixtures such as the e2e stack stay in one
# process): most of the suite waits on services, the broker and timers, so two share the 2 cores well.
# TEST_PROCESSES= runs it in one process.
TEST_PROCESSES ?= -n 2 --dist loadfile

.PHONY: test-fast
test-fast: .venv/.synced ## the inner loop: ruff, then the unit tests (no stack); mypy and the rest are in `make test`
	$(PY) -m ruff check .
	@set +e; $(PY) -m pytest tests/unit -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

.PHONY: test-unit
test-unit: test-fast ## alias of test-fast

.PHONY: format
format: .venv/.synced ## apply ruff's formatting and safe fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

.PHONY: lock
lock: $(UV) ## refresh uv.lock after changing dependencies
	$(UV) lock

.PHONY: clean
clean: ## remove the virtual environments and local state
	rm -rf .venv .bench-venv .bench-serving-venv $(TOOLS) .driftloop .mypy_cache .ruff_cache .pytest_cache

.bench-venv/.ready: $(UV)
	$(UV) venv --quiet .bench-venv
	$(UV) pip install --quiet --python .bench-venv "evidently==0.7.23" "pandas<3" numpy scipy pydantic
	@touch $@

.PHONY: bench-loop
bench-loop: .venv/.synced ## the loop on drift streams through the real services (BENCH_ARGS="--quick --streams abrupt")
	$(PY) -m bench.loop $(BENCH_ARGS)

.PHONY: bench
bench: .bench-venv/.ready ## drift engine vs Evidently on the same data (installs Evidently in .bench-venv only)
	PYTHONPATH=. .bench-venv/bin/python bench/drift.py $(BENCH_ARGS)

# MLServer for the serving benchmark: its own venv, with the scikit-learn version the models are trained with
# (uvloop < 0.22: MLServer 1.7.1's inference workers call asyncio.get_event_loop(), which newer uvloop refuses).
.bench-serving-venv/.ready: $(UV) | .venv/.synced
	$(UV) venv --quiet --allow-existing .bench-serving-venv
	$(UV) pip install --quiet --python .bench-serving-venv "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "uvloop<0.22" \
		"scikit-learn==$$($(PY) -c 'import sklearn; print(sklearn.__version__)')"
	@touch $@

.PHONY: bench-serving
bench-serving: .venv/.synced .bench-serving-venv/.ready ## serving vs MLServer, same model: req/s, p50/p99, 1,000 rows, memory, hot swap
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk) \
		>/dev/null 2>&1; } || { echo "wrk is needed: install it (Debian: apt-get install wrk)"; exit 1; }
	$(PY) -m bench.serving $(BENCH_ARGS)

.PHONY: bench-ingest
bench-ingest: .venv/.synced ## ingest rows/s per body format and rejection rate vs the bare parse-and-write floor
	$(PY) -m bench.ingest $(BENCH_ARGS)

.PHONY: bench-monitor
bench-monitor: .venv/.synced ## the monitor service's sustained rate: predictions.logged per second until lag grows
	$(PY) -m bench.monitor $(BENCH_ARGS)

.PHONY: bench-records-submitted
bench-records-submitted: .venv/.synced ## records.submitted rows/s through ingest's consumer: JSON vs Arrow IPC events
	$(PY) -m bench.records_submitted $(BENCH_ARGS)

.PHONY: bench-training
bench-training: .venv/.synced ## retrain time and holdout metric: the old search vs today's, 4 synthetic streams
	$(PY) -m bench.training $(BENCH_ARGS)
