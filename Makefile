# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs everything it needs when missing; a stamp file
# keeps the second run fast.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# FiftyOne finds plugins below FIFTYONE_PLUGINS_DIR; .plugins/cam-audit links
# this repository (which is the plugin) there.
PLUGINS_DIR := $(CURDIR)/.plugins

export FIFTYONE_DO_NOT_TRACK := true
export FIFTYONE_DATABASE_VALIDATION := false
export FIFTYONE_SHOW_PROGRESS_BARS := false

.PHONY: install browser demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml; pip takes them from local disk here.
	$(PY) -m pip install --quiet -e '.[demo,dev,hf]'
	touch $(STAMP)

# Headless Chromium for the App and HTML-report tests (Debian package; never
# `playwright install`, which downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

$(PLUGINS_DIR)/cam-audit:
	mkdir -p $(PLUGINS_DIR)
	ln -sfn $(CURDIR) $@

demo: install $(PLUGINS_DIR)/cam-audit
	FIFTYONE_PLUGINS_DIR=$(PLUGINS_DIR) $(PY) -m gradcam_engine.demo $(ARGS)

# Two pytest-xdist workers, one test file each at a time (a module's fixtures,
# App server and browser stay in one process), the slowest files first
# (tests/conftest.py orders them). Serial: `make test PYTEST_PARALLEL=` or
# `make test PYTEST_ARGS="-n 0"`.
PYTEST_PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder
test: install browser
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_workflow.py
	$(PY) benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV) $(PLUGINS_DIR) build *.egg-info .pytest_cache
