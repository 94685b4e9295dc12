# Two entry points for a newcomer: `make serve` and `make test`. Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup serve test lint typecheck pytest browser promtool postgres screenshots openapi figures bench bench-v2 bench-cohort test-quick train audit soak readme clean

# service/engine/_exact.c is compiled by the project install (a C compiler and Python's headers are needed); a change
# to it must rebuild the extension, which an editable install does not do by itself.
$(STAMP): pyproject.toml constraints.txt service/engine/_exact.c service/observe/_binning.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and exactly: the CPU wheel of 2.13.0 (an open range would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# The kernel is an optional extension (the base install, the client, needs no compiler), so a failed build does
	# not stop pip: refuse here a missing kernel, or a stale one older than its source.
	@test -n "$$(find service/engine -name '_exact*.so' -newer service/engine/_exact.c)" || { echo "the exact kernel \
	(service/engine/_exact.c) did not compile: install a C compiler and Python's headers, then run make setup" >&2; \
	exit 1; }
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(BIN)/gshap serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

# The page's tests drive Debian's headless Chromium through chromedriver (never a downloaded browser): installed
# here when missing and we are root (CI is); otherwise the tests say what to install (and fail under CI=true).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; \
	  fi; \
	fi

# promtool (Debian's prometheus package) checks and unit-tests deploy/prometheus/*.yml: installed here when missing
# and we are root, as the browser is; without it that one test is skipped and says what to install.
promtool:
	@if ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
	      || echo "could not install prometheus (promtool): its test will be skipped"; \
	  else \
	    echo "the alert rules' unit tests need promtool: sudo apt-get install prometheus"; \
	  fi; \
	fi

# The CDS state tests start Debian's PostgreSQL server themselves (tests/postgres.py: initdb and pg_ctl in a temporary
# directory on a free loopback port, as the postgres user when root) and stop it at the end: the package is installed
# here when missing and we are root, like the browser; otherwise the tests say what to install (and fail under CI).
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	  else \
	    echo "the PostgreSQL tests need Debian's postgresql: sudo apt-get install postgresql"; \
	  fi; \
	fi

pytest: setup browser promtool postgres
	$(BIN)/pytest

# docs/screenshots/*.png: the page at desktop and phone width, for the README
screenshots: setup browser
	$(BIN)/python scripts/screenshots.py

test: lint typecheck pytest

openapi: setup
	$(BIN)/gshap openapi

figures: setup
	$(BIN)/gshap figures

train: setup
	$(BIN)/gshap train --set-default

bench: setup browser
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python scripts/bench.py --json docs/bench/latest.json --md docs/bench/latest.md --goals
	# the README's summary from the same run
	$(BIN)/python scripts/readme.py --only performance

# the V2 protocol (Open Inference Protocol) against the JSON API, alternating rounds at c = 8 (docs/V2.md)
bench-v2: setup
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python scripts/bench.py --v2 --rounds 6 --concurrency 8 --json docs/bench/v2.json --md docs/bench/v2.md

# the cohort engines at 10k and 1M records, and serve --workers 1 vs 2 (about an hour on 2 cores; docs/SCALING.md)
bench-cohort: setup
	$(BIN)/python scripts/bench_cohort.py --json docs/bench/cohort.json --md docs/bench/cohort.md
	$(BIN)/python scripts/bench_workers.py --json docs/bench/workers.json

audit: setup
	./scripts/audit.sh

soak: setup
	$(BIN)/python scripts/soak.py

readme: setup
	$(BIN)/python scripts/readme.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build service/engine/*.so

# the edit-test loop: the fast, model-free and in-process tests (about a minute; `make test` stays the full run)
QUICK_TESTS := tests/engine/test_shapley.py tests/engine/test_baselines.py tests/test_schemas.py \
	tests/model/test_model_spec.py tests/training/test_calibration.py tests/scripts/test_bench.py tests/observe/test_drift.py
test-quick: setup
	$(BIN)/pytest -q -m "not slow" $(QUICK_TESTS)
