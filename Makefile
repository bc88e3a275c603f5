# The two commands: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_SECONDS ?= 120

.PHONY: demo test test-long lint bench schema clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,plot]'
	touch $(STAMP)

demo: $(STAMP)
	DEMO_SECONDS=$(DEMO_SECONDS) $(BIN)/python -m lab.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-long: $(STAMP)
	EDGELOOP_LONG=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

schema: $(STAMP)
	$(BIN)/python tools/regen_schema.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Offline install bundles, dist/edgeloop-<version>-{x86_64,aarch64}.tar.gz: edgeloop's wheel,
# every runtime dependency's wheel (CPython 3.11 manylinux) and install.sh
# (`sudo systemd/install.sh --bundle FILE` on the gateway; docs/operations.md).
.PHONY: bundle
bundle: $(STAMP)
	$(BIN)/python tools/bundle.py --out dist

# aarch64 proof without a Pi (not part of `make test`; needs root, takes minutes): the
# aarch64 bundle built from HEAD (as `make bundle`), installed offline into an arm64 Debian
# root under qemu-user, then --version, check, control-eval and a 60 s `run` against hw_sim
# on the host (tools/pi_check.py).  The root is built once and cached as build/pi-root.tar.
.PHONY: pi-check
pi-check: $(STAMP)
	$(BIN)/python tools/pi_check.py $(PI_CHECK_ARGS)
