# Every target bootstraps what it needs: a .venv with the package (and dev tools), and the
# Debian packages its tests use (apt-get when root; otherwise it names them and stops).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# command=package pairs the test suite needs on the machine
TEST_SYSTEM_PACKAGES := prometheus=prometheus docker-compose=docker-compose chromium=chromium wrk=wrk nginx=nginx
BENCH_SYSTEM_PACKAGES := wrk=wrk nginx=nginx
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench soak compose-up compose-down system-packages clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

system-packages:
	@scripts/ensure-system-packages.sh $(TEST_SYSTEM_PACKAGES)

demo: $(STAMP)
	@$(VENV)/bin/sidecar demo $(DEMO_ARGS)

# pytest exits 5 when it collects nothing; that is not a failure of the product.
test: $(STAMP) system-packages
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check sidecar tests demo_services bench
	$(VENV)/bin/mypy --strict sidecar

bench: $(STAMP)
	@scripts/ensure-system-packages.sh $(BENCH_SYSTEM_PACKAGES)
	@$(PY) -m bench.run $(BENCH_ARGS)

soak: $(STAMP) system-packages
	@$(PY) -m pytest -q -m slow tests -k soak $(PYTEST_ARGS)

compose-up:
	docker compose -f compose/docker-compose.yml up -d --build

compose-down:
	docker compose -f compose/docker-compose.yml down -v

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
