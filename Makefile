# Shortcuts for a development machine. The README's commands are the scripts:
# a fresh Debian machine has no make. `bench` and `check` use the .venv that
# scripts/demo or scripts/test sets up.
SHELL := /bin/bash
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: demo test cluster-test bench bench-big sweep bench-loader check

## demo: set up, import examples/messages.jsonl with main.json, print the results
demo:
	scripts/demo

## test: set up and run the test suite (make test PYTEST_ARGS="-q -k email")
test:
	scripts/test $(PYTEST_ARGS)

## cluster-test: the failover tests (tests/test_failover.py) on the replicated lab of
## scripts/cluster, which it starts first (idempotent; needs root); the lint is left to `make test`
cluster-test:
	scripts/cluster start >/dev/null
	LINT=0 scripts/test -m cluster $(PYTEST_ARGS)

## bench: the throughput benchmark against the local services (see bench/)
bench:
	env=$$(scripts/services) && eval "$$env" && .venv/bin/python bench/throughput.py $(BENCH_ARGS)

## bench-big: the worker on 1,000 messages of ~900 KB (peak RSS, msg/s, MB/s; see bench/)
bench-big:
	env=$$(scripts/services) && eval "$$env" && .venv/bin/python bench/bigmessages.py $(BENCH_ARGS)

## sweep: the worker over a grid of IMPORT_PREFETCH x IMPORT_BATCH_SIZE
sweep:
	env=$$(scripts/services) && eval "$$env" && .venv/bin/python bench/sweep.py $(BENCH_ARGS)

## bench-loader: dbimport-load publishing a generated 1M-row CSV (rows/s, peak RSS)
bench-loader:
	env=$$(scripts/services) && eval "$$env" && .venv/bin/python bench/loader.py $(BENCH_ARGS)

## check: dbimport-worker check with main.json (services, schema, queues)
check:
	env=$$(scripts/services) && eval "$$env" && .venv/bin/dbimport-worker --config main.json check
