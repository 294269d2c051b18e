# sylphx developer tasks.
#
#   make venv         create .venv and install sylphx + dev extras (re-runs when pyproject changes)
#   make system-deps  install bubblewrap (bwrap) via apt when missing and running as root
#   make demo         Monte-Carlo pi across 9 gang shards on the embedded local control plane
#   make test         ruff check, ruff format --check, mypy, pytest  (what .ci/run executes)
#   make bench        sylphx Ray executor vs raw Ray tasks, 200 trivial shards on a 3-node cluster
#   make lint | fmt | clean | distclean

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := $(CURDIR)/.venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sylphx-installed

# Shard commands (e.g. `python`) must resolve to the venv's interpreter, which has numpy.
export PATH := $(BIN):$(PATH)

LINT_PATHS := src tests examples bench

# Demo knobs. SYLPHX_HOME from the environment wins; otherwise use a throwaway home.
DEMO_HOME    := $(if $(SYLPHX_HOME),$(SYLPHX_HOME),$(CURDIR)/.sylphx-demo)
DEMO_OUT     ?= $(CURDIR)/out/pi
DEMO_SHARDS  ?= 9
DEMO_MACHINE ?= nano

.PHONY: help venv system-deps demo test bench lint fmt clean distclean

help:
	@sed -n '3,9p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x "$(BIN)/python" ]; then \
	  echo ">> creating $(VENV)"; \
	  $(PYTHON) -m venv "$(VENV)"; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch "$@"

system-deps:
	@if command -v bwrap >/dev/null 2>&1; then \
	  echo ">> bubblewrap present: $$(command -v bwrap)"; \
	elif [ "$$(id -u)" -ne 0 ]; then \
	  echo ">> bwrap not found and not root; skipping (install the 'bubblewrap' package yourself)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo ">> bwrap not found and no apt-get on this system; skipping"; \
	else \
	  echo ">> installing bubblewrap"; \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bubblewrap; \
	fi

# Runs on the host in this directory (no --image). SYLPHX_URL is dropped so the CLI always
# starts the embedded local control plane; the trap stops it even when the run fails.
demo: venv system-deps
	@export SYLPHX_HOME="$(DEMO_HOME)"; \
	unset SYLPHX_URL; \
	mkdir -p "$$SYLPHX_HOME"; \
	rm -rf "$(DEMO_OUT)"; mkdir -p "$(DEMO_OUT)"; \
	trap '"$(BIN)/sylphx" local stop || true' EXIT; \
	echo ">> SYLPHX_HOME=$$SYLPHX_HOME  OUT_DIR=$(DEMO_OUT)"; \
	set -x; \
	"$(BIN)/sylphx" run --parallelism $(DEMO_SHARDS) --machine $(DEMO_MACHINE) --follow \
	  --env OUT_DIR="$(DEMO_OUT)" \
	  -- python "$(CURDIR)/examples/montecarlo_pi.py" | tee "$$SYLPHX_HOME/demo-run.txt"; \
	run_id=$$(awk 'NR==1 {print $$1}' "$$SYLPHX_HOME/demo-run.txt"); \
	"$(BIN)/sylphx" runs logs "$$run_id" --shard 3; \
	"$(BIN)/sylphx" runs logs "$$run_id" --shard 3 --stderr; \
	"$(BIN)/python" "$(CURDIR)/examples/merge_pi.py" "$(DEMO_OUT)" --shards $(DEMO_SHARDS)

test: venv system-deps
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/pytest -q

# Starts its own loopback Ray cluster (3 nodes) unless BENCH_ARGS has --address HOST:PORT.
bench: venv
	$(BIN)/python bench/ray_overhead.py $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

# Stops a demo control plane (if any) before deleting its home; keeps .venv.
clean:
	@if [ -x "$(BIN)/sylphx" ] && [ -d "$(CURDIR)/.sylphx-demo" ]; then \
	  SYLPHX_HOME="$(CURDIR)/.sylphx-demo" "$(BIN)/sylphx" local stop >/dev/null 2>&1 || true; \
	fi
	rm -rf "$(CURDIR)/.sylphx-demo" "$(CURDIR)/out" build dist .pytest_cache .mypy_cache .ruff_cache
	find src tests examples -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
	find src -maxdepth 1 -name '*.egg-info' -type d -exec rm -rf {} + 2>/dev/null || true

distclean: clean
	rm -rf "$(VENV)"
