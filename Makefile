# batchrun: `make run` and `make test` work on a fresh machine with Python 3.11+ and make.
# `make` alone lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOB    ?= jobs/classify_tickets.toml
ARGS   ?=
STAMP  := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-tools-stamp

.DEFAULT_GOAL := help
.PHONY: help install install-run run test test-fast test-litellm-min typecheck status clean compare bench plan report

help:  ## this list (make with no target)
	@echo "batchrun: make TARGET [JOB=jobs/....toml] [ARGS=...]"
	@echo ""
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):[^#]*## /\1\t/' \
		| awk -F '\t' '{ printf "  %-12s %s\n", $$1, $$2 }'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "batchrun needs Python 3.11+; set PYTHON=python3.11")'
	@echo "installing batchrun, litellm and Anthropic's SDK into $(VENV) (about a minute, once)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[anthropic]'
	@touch $(STAMP)
	@echo "installed: $(BIN)/batchrun"

$(TEST_STAMP): $(STAMP)
	@echo "installing the test tools (pytest, matplotlib) and Ray (the ray tests run in CI) into $(VENV)..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	@touch $(TEST_STAMP)

# The LiteLLM Proxy that tests/test_real_proxy.py puts in front of the simulator runs in its own
# virtualenv (tests/real_proxy.py finds it): installed into .venv, litellm[proxy] would hold batchrun's
# litellm back from the newest release in range (1.110's proxy extra needs a litellm-proxy package the
# index does not serve, so pip settles on an older litellm). The proxy is a separate program that
# batchrun reaches over HTTP, at the version its tests were measured on.
PROXY_VENV ?= .venv-proxy
LITELLM_PROXY ?= 1.106.0
PROXY_STAMP := $(PROXY_VENV)/.installed-stamp
$(PROXY_STAMP):
	@echo "installing the LiteLLM Proxy (litellm[proxy]==$(LITELLM_PROXY), for the proxy tests) into $(PROXY_VENV)..."
	@test -x $(PROXY_VENV)/bin/python || $(PYTHON) -m venv $(PROXY_VENV)
	$(PROXY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'litellm[proxy]==$(LITELLM_PROXY)'
	@touch $(PROXY_STAMP)

install-run: $(STAMP)  ## create .venv with what running needs: batchrun, litellm, Anthropic's SDK (batch mode for Claude)

install: $(TEST_STAMP)  ## create .venv for development: batchrun and its test tools

# make run JOB=jobs/other.toml ARGS="--limit 50"
run: install-run  ## install what running needs, then run (or resume) JOB against its simulator
	$(BIN)/batchrun run $(JOB) $(ARGS)

status: install-run  ## counts of JOB's run directory (or RUN_DIR=runs/...)
	$(BIN)/batchrun status $(or $(RUN_DIR),runs/$(basename $(notdir $(JOB))))

# make plan JOB=jobs/compare_models.toml PLAN_ARGS="--max-cost-usd 1"   (exit 5 over the budget)
plan: install-run  ## forecast JOB, nothing sent: tickets to do, tokens, cost, duration
	$(BIN)/batchrun plan $(JOB) $(PLAN_ARGS)

# make report REPORT_ARGS="--out report_out"   (PNG charts need matplotlib: pip install -e '.[plots]')
report: install-run  ## grade JOB's run directory (or RUN_DIR) against gold labels
	$(BIN)/batchrun report $(or $(RUN_DIR),runs/$(basename $(notdir $(JOB)))) $(REPORT_ARGS)

# pytest's "no tests collected" (exit 5) counts as a pass. Most tests wait on subprocesses and
# simulators rather than compute, so three pytest-xdist workers keep 2 cores busy (PYTEST_WORKERS=0:
# one process). The `ray` tests then run alone, in one process: each xdist worker would start its own
# Ray, and three Rays on 2 cores starve the actors those tests measure. --dist loadgroup keeps a module
# marked xdist_group on one worker (tests/test_real_proxy.py: its LiteLLM proxies start once). Every
# test runs, the slow ones included (docs/internals.md, "Development").
PYTEST_WORKERS ?= 3
test: $(TEST_STAMP) $(PROXY_STAMP)  ## install the test tools too, then run the whole suite
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not ray" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
	$(BIN)/python -m pytest -q -m ray $(PYTEST_ARGS); rc2=$$?; \
	if [ $$rc2 -eq 5 ]; then echo "pytest: no ray tests collected"; rc2=0; fi; \
	[ $$rc -eq 0 ] && [ $$rc2 -eq 0 ]

# The inner loop: the unit and in-process integration tests, selected by markers (pyproject.toml):
# not `slow` (a service through hundreds of tickets, kills, signals, timers, worker processes),
# not `ray`, `browser` or `service`. Under 2 minutes on 2 cores; `make test` runs these and the rest.
FAST_MARKERS := not slow and not ray and not browser and not service and not proxy
test-fast: $(TEST_STAMP)  ## the inner loop: every test not marked slow, ray, browser, service or proxy
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "$(FAST_MARKERS)" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
	[ $$rc -eq 0 ]

# litellm is a tested range (pyproject.toml): a fresh .venv (CI) gets the newest release in it, and
# this target runs the suite on the oldest, 1.106.0, in its own virtualenv.
LITELLM_MIN ?= 1.106.0
MIN_VENV ?= .venv-litellm-min
test-litellm-min:  ## the suite (without ray) on the oldest litellm in range, in .venv-litellm-min
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "batchrun needs Python 3.11+")'
	@test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 'litellm==$(LITELLM_MIN)'
	$(MIN_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not ray" $(PYTEST_ARGS)

typecheck: $(TEST_STAMP)  ## mypy over batchrun/ (the seams are Protocols; settings in pyproject.toml)
	$(BIN)/python -m mypy

BENCH_ARGS ?=
# make bench BENCH_ARGS="--concurrency 8,128 --tickets 2000 --baseline"   (--baseline: bare litellm next to it)
bench: install-run  ## concurrency sweep of JOB on the simulator: table, bench_out/bench.json and bench.png
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[plots]' \
		|| echo "bench: could not install matplotlib: no plot this time"
	$(BIN)/batchrun bench $(JOB) $(BENCH_ARGS)

compare: install-run  ## three simulated models on the sample tickets (ARGS="--limit 200")
	$(BIN)/batchrun run jobs/compare_models.toml $(ARGS)

clean:  ## remove the virtualenv, run directories and caches
	rm -rf $(VENV) $(MIN_VENV) $(PROXY_VENV) runs build *.egg-info .pytest_cache
