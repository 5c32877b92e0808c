# Two commands for a new machine: `make run` and `make test`. Everything else is extra.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest pages chromium pebble bench soak clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "python venv module missing: installing python3-venv"; \
	  (apt-get update -qq && apt-get install -y -qq python3-venv) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

# A local etcd (when none answers), two example instances, the route to them, gogeta on :7777.
# ETCD_API=v3: gogeta speaks etcd's v3 API, and the etcd started here has no v2.
run: $(STAMP)
	$(if $(ETCD_API),GOGETA_ETCD_API=$(ETCD_API) )$(BIN)/python devtools/run_example.py $(RUN_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) chromium pebble
	$(BIN)/pytest

# The system's Chromium, for the browser tests (Playwright drives it) and `make pages`:
# Debian's package when none is installed (no browser download of Playwright's own).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing Debian's chromium (browser tests, make pages)"; \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null || \
	  echo "chromium could not be installed: the browser tests will be skipped"; }

# Debian's pebble and its mock DNS: the ACME server the certificate-on-demand tests order from.
pebble:
	@command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null || { \
	  echo "installing Debian's pebble (ACME tests)"; \
	  apt-get update -qq && apt-get install -y -qq pebble >/dev/null || \
	  echo "pebble could not be installed: the ACME tests will be skipped"; }

test: lint typecheck pytest

# Every status page and the live view as PNG (phone and desktop) into pages/, with headless
# Chromium.
pages: $(STAMP) chromium
	$(BIN)/python devtools/render_pages.py

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (minutes; not part of `make test`): see bench/README.md for BENCH_* variables.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# Soak (minutes; not part of `make test`): traffic while routes churn in etcd, see bench/SOAK.md.
soak: $(STAMP)
	$(BIN)/python bench/soak.py
