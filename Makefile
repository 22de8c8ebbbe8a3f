# Every target bootstraps what it needs: a .venv with the package (and dev tools), and the
# Debian packages its tests use (apt-get when root; otherwise it names them and stops).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The data path compiled with mypyc (setup.py); rebuilt when one of its sources changes.
NATIVE_STAMP := $(VENV)/.native-stamp
NATIVE_SOURCES := $(shell grep -v '^\#' native-modules.txt)
# command=package pairs the test suite needs on the machine
TEST_SYSTEM_PACKAGES := prometheus=prometheus docker-compose=docker-compose chromium=chromium wrk=wrk nginx=nginx curl=curl h2load=nghttp2-client
BENCH_SYSTEM_PACKAGES := wrk=wrk nginx=nginx h2load=nghttp2-client
PYTEST_ARGS ?=
LINT_PATHS := sidecar tests demo_services bench
# 1 (the default): `make lint` also checks formatting (`ruff format --check`); `make format`
# applies it.
FORMAT_CHECK ?= 1

.PHONY: venv native demo test test-unit lint format bench soak compose-up compose-down system-packages clean

venv: $(NATIVE_STAMP)

native: $(NATIVE_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

$(NATIVE_STAMP): $(STAMP) setup.py native-modules.txt scripts/build-native.sh $(NATIVE_SOURCES)
	@scripts/build-native.sh $(PY)
	@touch $(NATIVE_STAMP)

system-packages:
	@scripts/ensure-system-packages.sh $(TEST_SYSTEM_PACKAGES)

demo: $(NATIVE_STAMP)
	@$(VENV)/bin/sidecar demo $(DEMO_ARGS)

# pytest exits 5 when it collects nothing; that is not a failure of the product.
test: $(NATIVE_STAMP) system-packages
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# Unit tests only: pure Python, no system packages, no compiled build (about a minute).
test-unit: $(STAMP)
	@$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# Tests are type-checked too, with the relaxations in pyproject.toml's [[tool.mypy.overrides]].
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy --strict sidecar tests
	@if [ "$(FORMAT_CHECK)" = 1 ]; then \
		echo "$(VENV)/bin/ruff format --check $(LINT_PATHS)"; \
		$(VENV)/bin/ruff format --check $(LINT_PATHS); \
	fi

format: $(STAMP)
	$(VENV)/bin/ruff format $(LINT_PATHS)

bench: $(NATIVE_STAMP)
	@scripts/ensure-system-packages.sh $(BENCH_SYSTEM_PACKAGES)
	@$(PY) -m bench.run $(BENCH_ARGS)

soak: $(NATIVE_STAMP) system-packages
	@$(PY) -m pytest -q -m slow tests -k soak $(PYTEST_ARGS)

# scripts/compose.sh runs `docker compose` or `docker-compose`, whichever is installed.
compose-up:
	scripts/compose.sh -f compose/docker-compose.yml up -d --build

compose-down:
	scripts/compose.sh -f compose/docker-compose.yml down -v

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo build build-native.log
	find sidecar -name '*.so' -delete
