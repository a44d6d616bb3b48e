# make demo: set up a fresh Debian 12 machine and run a local 3-node cluster.
# make test: set up and run every test, lint and type check.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-v2 lint unit bench proto clean

# Byte-compiled as pip does for a wheel: the checkout is an editable install, and where
# PYTHONDONTWRITEBYTECODE is set (CI, containers) each orch command would compile its modules
# again (~60 ms of CPU at every CLI start, docs/benchmarks.md). Quick when nothing changed.
setup: $(VENV)/.installed
	@$(BIN)/python -m compileall -q cli node scheduler proto/orch

$(VENV)/.installed: pyproject.toml deploy/install-deps.sh
	bash deploy/install-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c 'from node.runtime.native import check; check()'  # the C programs build here
	touch $@

demo: setup
	bash deploy/demo.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# --durations: where the suite's time goes (it must stay well under 15 minutes).
# PYTEST_FLAGS: e.g. -v, so a long run (the VM's) names each failure as it happens.
# TEST_WORKERS: pytest-xdist workers, each taking whole modules (a module's cluster stays on one);
# most of an e2e test is waiting on leases, probes and restarts, so two overlap well on two cores.
# The host-is-clean check runs afterwards on its own: it must see the host after every test.
PYTEST_FLAGS ?= -q
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest $(PYTEST_FLAGS) -p no:cacheprovider --durations=30 -n $(TEST_WORKERS) --dist loadfile \
		--ignore=tests/zz_host; rc=$$?; \
	$(BIN)/pytest $(PYTEST_FLAGS) -p no:cacheprovider tests/zz_host || rc=1; exit $$rc

# The whole suite on a fresh Debian 12 VM with systemd and pure cgroup v2 (the committed HEAD;
# software emulation here: ~2 h 45 min with its set-up). DEBIAN_VM: the steering repo's shared/tools/debian-vm.
DEBIAN_VM ?= ../shared/tools/debian-vm
test-v2:
	$(DEBIAN_VM) . -- env ORCH_TEST_TRACE_AT_ONCE=1 make test PYTEST_FLAGS=-v TEST_WORKERS=1

unit: setup
	$(BIN)/pytest -q tests/unit

bench: setup
	bash deploy/install-deps.sh bench
	$(BIN)/python -m bench

proto: setup
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) build *.egg-info .state
