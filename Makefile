# batchrun: `make run` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOB    ?= jobs/classify_tickets.toml
ARGS   ?=
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test status clean compare bench plan report

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "batchrun needs Python 3.11+; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install batchrun with its test tools and Ray (the ray tests run in CI)

run: install  ## run (or resume) JOB against its simulator: make run JOB=jobs/other.toml ARGS="--limit 50"
	$(BIN)/batchrun run $(JOB) $(ARGS)

status: install  ## counts of JOB's run directory: make status RUN_DIR=runs/classify_tickets
	$(BIN)/batchrun status $(or $(RUN_DIR),runs/$(basename $(notdir $(JOB))))

plan: install  ## forecast JOB without sending anything: tickets to do, tokens, cost, duration; exit 5 over max_cost_usd: make plan JOB=jobs/compare_models.toml PLAN_ARGS="--max-cost-usd 1"
	$(BIN)/batchrun plan $(JOB) $(PLAN_ARGS)

report: install  ## grade JOB's run directory (or RUN_DIR) against gold labels: make report REPORT_ARGS="--out report_out" (PNG charts need .[plots])
	$(BIN)/batchrun report $(or $(RUN_DIR),runs/$(basename $(notdir $(JOB)))) $(REPORT_ARGS)

test: install  ## the whole suite (pytest's "no tests collected", exit 5, counts as a pass)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

BENCH_ARGS ?= --baseline
bench: install  ## concurrency sweep of JOB against the simulator (200 ms), with the bare-litellm baseline: table, bench_out/bench.json, bench.png; make bench BENCH_ARGS="--concurrency 8,128 --tickets 2000 --baseline"
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[plots]' \
		|| echo "bench: could not install matplotlib: no plot this time"
	$(BIN)/batchrun bench $(JOB) $(BENCH_ARGS)

compare: install  ## three simulated models on the sample tickets: make compare ARGS="--limit 200"
	$(BIN)/batchrun run jobs/compare_models.toml $(ARGS)

clean:  ## remove the virtualenv, run directories and caches
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
