# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast install dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files re-run the install whenever pyproject.toml or the constraints change.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/mmpipe demo --out $(DEMO_OUT)

test: dev
	$(BIN)/python -m pytest -q

# The edit-run loop: everything but the slow, Ray, end-to-end and GPU tests.
test-fast: dev
	$(BIN)/python -m pytest -q -m 'not slow and not ray and not e2e and not gpu'

bench: dev  # the engines benchmark needs the ray extra
	$(BIN)/python benchmarks/embed_throughput.py
	$(BIN)/python benchmarks/moderate_throughput.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/serve_peer.py --peer infinity --json docs/serve-peer.json
	$(BIN)/python benchmarks/serve_memory.py
	$(BIN)/python benchmarks/engines.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/hash_match.py
	$(BIN)/python benchmarks/search_latency.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) demo_data
