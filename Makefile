# Two entry points for a newcomer: `make serve` and `make test`. Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup serve test lint typecheck pytest openapi figures bench train audit soak readme clean

# service/engine/_exact.c is compiled by the project install (a C compiler and Python's headers are needed); a change
# to it must rebuild the extension, which an editable install does not do by itself.
$(STAMP): pyproject.toml constraints.txt service/engine/_exact.c
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

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

openapi: setup
	$(BIN)/gshap openapi

figures: setup
	$(BIN)/gshap figures

train: setup
	$(BIN)/gshap train --set-default

bench: setup
	$(BIN)/python scripts/bench.py

audit: setup
	./scripts/audit.sh

soak: setup
	$(BIN)/python scripts/soak.py

readme: setup
	$(BIN)/python scripts/readme.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build service/engine/*.so
