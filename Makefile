# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need; `make test` also installs the
# Debian packages the tests and benchmarks drive (nginx, Varnish, wrk, ...).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Two stamps: the runtime alone (`make demo`: what `pip install .` brings) and the runtime with
# the test, benchmark and analyze extras (everything else). Either is redone when pyproject.toml changes.
RUNTIME_STAMP := $(VENV)/.runtime-$(SUM)
STAMP         := $(VENV)/.installed-$(SUM)
# The hot path's modules that setup.py compiles with mypyc: editing one rebuilds (the compiled
# module, not the source, is what Python imports).
COMPILED := $(shell sed -n 's/^ *"\(src\/kalkan\/[a-z_/]*\.py\)",$$/\1/p' setup.py) \
	src/kalkan/defense/_rows.c src/kalkan/edge/_head.c src/kalkan/observe/_log_line.c \
	src/kalkan/edge/_sendfile.c

.PHONY: demo test lint typecheck venv runtime debian-deps bench bench-throughput \
	bench-conformance bench-defense bench-firewall bench-clients bench-lab bench-fuzz \
	bench-scale bench-tail bench-memory bench-instructions bench-h2 bench-cluster bench-workers \
	bench-alliance coverage clean

$(RUNTIME_STAMP): pyproject.toml setup.py $(COMPILED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	find src -name '*.so' -delete  # a failed build then leaves the sources, never a stale mix
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	rm -f $(VENV)/.runtime-*
	touch $@

$(STAMP): pyproject.toml setup.py $(COMPILED)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	find src -name '*.so' -delete  # a failed build then leaves the sources, never a stale mix
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench,analyze]'
	rm -f $(VENV)/.installed-* $(VENV)/.runtime-*
	touch $@ $(RUNTIME_STAMP)

venv: $(STAMP)        # runtime + test and benchmark extras

runtime: $(RUNTIME_STAMP)  # the runtime dependencies only

debian-deps:
	bash scripts/install-debian-deps.sh

demo: $(RUNTIME_STAMP)
	$(BIN)/kalkan demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts

typecheck: $(STAMP)  # [tool.mypy] in pyproject.toml: strict on edge/ and defense/
	$(BIN)/mypy

test: $(STAMP) debian-deps lint typecheck
	bash scripts/run-tests.sh

bench: bench-throughput bench-tail bench-conformance bench-defense bench-scale bench-memory bench-clients \
	bench-firewall bench-instructions bench-h2 bench-cluster bench-workers bench-alliance

bench-defense: $(STAMP) debian-deps
	$(BIN)/python -m bench.defense_cost

bench-scale: $(STAMP) debian-deps  # the defence with 100,000 clients vs off, readers load
	$(BIN)/python -m bench.defense_scale

bench-workers: $(STAMP) debian-deps  # 1 and 2 workers, Kalkan and nginx, readers load
	$(BIN)/python -m bench.workers

bench-alliance: $(STAMP) debian-deps  # a botnet hops from newsroom A to B: B alone vs allied
	$(BIN)/python -m bench.alliance_hop

bench-cluster: $(STAMP) debian-deps  # three edges and Redis: propagation, Redis ops per request
	$(BIN)/python -m bench.cluster

bench-memory: $(STAMP) debian-deps  # RSS per idle connection and per cached page
	$(BIN)/python -m bench.connection_memory

bench-instructions: $(STAMP) debian-deps  # instructions per readers-load hit, under valgrind
	$(BIN)/python -m bench.hit_instructions

coverage: $(STAMP) debian-deps  # edge/ and defense/ under the whole suite (pure-Python build)
	bash scripts/coverage.sh

bench-h2: $(STAMP) debian-deps  # HTTP/2 (h2load) against nginx's HTTP/2
	$(BIN)/python -m bench.h2

bench-clients: $(STAMP)
	$(BIN)/python -m bench.client_memory

bench-firewall: $(STAMP) debian-deps  # needs root: builds network namespaces
	$(BIN)/python -m bench.firewall

bench-lab: $(STAMP) debian-deps
	$(BIN)/python -m bench.lab

bench-fuzz: $(STAMP)  # the framing fuzzer's long run (tests/integration/test_framing_fuzz.py)
	$(BIN)/python -m bench.fuzz_framing

bench-throughput: $(STAMP) debian-deps
	$(BIN)/python -m bench.throughput

bench-tail: $(STAMP) debian-deps  # p99 below saturation: fixed rates, runs pooled, vs nginx
	$(BIN)/python -m bench.tail_latency

bench-conformance: $(STAMP) debian-deps
	$(BIN)/python -m bench.cache_conformance

clean:
	rm -rf $(VENV) var build dist src/*.egg-info
	find src -name '*.so' -delete
