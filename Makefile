# sylphx developer tasks.
#
#   make venv         create .venv and install sylphx + dev extras (re-runs when pyproject changes)
#   make system-deps  install bubblewrap, slirp4netns, libseccomp2, umoci, skopeo,
#                     busybox-static, postgresql via apt when missing (root)
#   make demo         Monte-Carlo pi across 9 gang shards and their merge step, on the embedded
#                     local control plane
#   make ray-demo     the product page's example (9 large shards) on a two-node loopback Ray cluster
#   make test         lint, types, the whole suite on SQLite and PostgreSQL (what .ci/run runs)
#   make check        the fast loop: lint, types, the tests not marked slow on SQLite
#   make bench        the P1-P10 benchmarks (BENCHMARKS.md), each against a baseline in the same run
#   make bench-deps   install the wrk load generator (P3) via apt when missing (root)
#   make sdk          regenerate the sync SDK from the async one (make lint checks it)
#   make ts-wire      regenerate sdk/typescript/src/wire.ts from the OpenAPI document (lint checks it)
#   make node-deps    the TypeScript SDK's devDependencies: npm ci from its lockfile (when it changed)
#   make screenshots  the README's terminal pictures (docs/img/*.png); installs librsvg2-bin (root)
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

LINT_PATHS := src tests examples bench tools

# Demo knobs. SYLPHX_HOME from the environment wins; otherwise use a throwaway home.
DEMO_HOME    := $(if $(SYLPHX_HOME),$(SYLPHX_HOME),$(CURDIR)/.sylphx-demo)
DEMO_SHARDS  ?= 9
DEMO_MACHINE ?= nano

.PHONY: help venv system-deps demo ray-demo test check bench bench-deps lint fmt sdk screenshots \
  clean distclean node-deps ts-wire

help:
	@sed -n '3,17p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x "$(BIN)/python" ]; then \
	  echo ">> creating $(VENV)"; \
	  $(PYTHON) -m venv "$(VENV)"; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch "$@"

# command:package pairs; busybox-static is checked by package (tests copy its static binary).
SYSTEM_DEPS := bwrap:bubblewrap slirp4netns:slirp4netns setpriv:util-linux umoci:umoci skopeo:skopeo \
  busybox-static:busybox-static libseccomp2:libseccomp2 tmux:tmux node:nodejs npm:npm \
  chromium:chromium ip:iproute2

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_DEPS); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  if [ "$$pkg" = busybox-static ] || [ "$$pkg" = libseccomp2 ]; then \
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'ok installed' \
	      || missing="$$missing $$pkg"; \
	  elif ! command -v "$$cmd" >/dev/null 2>&1; then \
	    missing="$$missing $$pkg"; \
	  fi; \
	done; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
	  || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then \
	  echo ">> system packages present: bubblewrap slirp4netns libseccomp2 umoci skopeo busybox-static tmux nodejs npm chromium iproute2 postgresql"; \
	elif [ "$$(id -u)" -ne 0 ]; then \
	  echo ">> missing:$$missing and not root; skipping (install these Debian packages yourself)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo ">> missing:$$missing and no apt-get on this system; skipping"; \
	else \
	  echo ">> installing$$missing"; \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# Runs on the host in this directory (no --image). SYLPHX_URL is dropped so the CLI always
# starts the embedded local control plane; the trap stops it even when the run fails.
demo: venv system-deps
	@export SYLPHX_HOME="$(DEMO_HOME)"; \
	unset SYLPHX_URL; \
	mkdir -p "$$SYLPHX_HOME"; \
	trap '"$(BIN)/sylphx" local stop || true' EXIT; \
	echo ">> SYLPHX_HOME=$$SYLPHX_HOME"; \
	vol=$$("$(BIN)/sylphx" volumes create --name pi --json | "$(BIN)/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])'); \
	echo ">> shared volume $$vol, mounted at /out in every shard"; \
	set -x; \
	"$(BIN)/sylphx" run --parallelism $(DEMO_SHARDS) --machine $(DEMO_MACHINE) --follow \
	  --volume "$$vol:/out" --env OUT_DIR=/out \
	  --merge-command "python $(CURDIR)/examples/merge_pi.py /out" \
	  -- python "$(CURDIR)/examples/montecarlo_pi.py" | tee "$$SYLPHX_HOME/demo-run.txt"; \
	run_id=$$(awk 'NR==1 {print $$1}' "$$SYLPHX_HOME/demo-run.txt"); \
	"$(BIN)/sylphx" runs logs "$$run_id" --shard 3; \
	"$(BIN)/sylphx" runs logs "$$run_id" --shard 3 --stderr; \
	"$(BIN)/sylphx" runs logs "$$run_id" --merge

# The README's multi-node Ray commands with HEAD_IP=127.0.0.2, NODE_IP=127.0.0.3: two Ray
# nodes, `sylphx server` on the Ray executor, the page's 9 x large opportunistic run, the
# aggregate and shard 3's logs (examples/ray_demo.sh). Its trap stops the server and both
# nodes by process id (never `ray stop`, which would stop every Ray on the machine).
ray-demo: venv system-deps
	@time "$(CURDIR)/examples/ray_demo.sh"

test: venv system-deps node-deps lint
	SYLPHX_TEST_STORE=sqlite $(BIN)/pytest -q
	SYLPHX_TEST_STORE=postgresql $(BIN)/pytest -q

# Every benchmark measures its baseline in the same run and prints a table with the ratio;
# the tables of the last `make bench` are kept in bench/results.md (see BENCHMARKS.md).
# BENCHES=p1_fanout make bench runs a subset.
BENCHES ?= p1_fanout p2_gang p3_get_run p4_logs p5_scale p6_ray p7_runs p8_ui p9_usage p10_images

bench: venv system-deps bench-deps
	@cd bench && for b in $(BENCHES); do \
	  echo ">> bench/$$b.py" >&2; $(BIN)/python $$b.py || exit 1; \
	done | tee results.md

# wrk drives the HTTP benchmarks; without it bench/p3_get_run.py falls back to a (much
# heavier) asyncio httpx client.
bench-deps:
	@if command -v wrk >/dev/null 2>&1; then \
	  echo ">> wrk present"; \
	elif [ "$$(id -u)" -ne 0 ]; then \
	  echo ">> wrk missing and not root; skipping (apt-get install wrk)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo ">> wrk missing and no apt-get on this system; skipping"; \
	else \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk; \
	fi

lint: venv node-deps
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/python tools/unasync_sdk.py --check
	$(BIN)/python tools/openapi_ts.py --check
	cd $(TS_SDK) && npx --no-install tsc -p tsconfig.json --noEmit
	$(BIN)/lint-imports
	$(BIN)/mypy

# The fast loop: lint, types and the tests not marked slow, on SQLite (see SLOW_MODULES in
# tests/conftest.py), in under 90 s on 2 cores. make test is the whole suite on both stores,
# what CI runs. The schemathesis plugin serves only the fuzzer (a slow module): loading it
# cost a second per run. --durations shows what the loop spends its time on.
check: lint
	SYLPHX_TEST_STORE=sqlite $(BIN)/pytest -q -x -m "not slow" -p no:schemathesis --durations=5

# The README's terminal pictures: rich's SVG export rasterised by rsvg-convert (librsvg2-bin,
# installed via apt when missing, as root). docs/img/timeline.png is `sylphx runs timeline`
# of a real 24-shard run (retries, a preemption, a merge step) on a throwaway local control
# plane; tools/screenshots.py also turns an ANSI capture into a PNG (its `ansi` command).
screenshots: venv system-deps
	@if command -v rsvg-convert >/dev/null 2>&1; then \
	  echo ">> rsvg-convert present"; \
	elif [ "$$(id -u)" -ne 0 ]; then \
	  echo ">> rsvg-convert missing and not root: apt-get install librsvg2-bin" >&2; exit 1; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo ">> rsvg-convert missing and no apt-get on this system (install librsvg)" >&2; exit 1; \
	else \
	  echo ">> installing librsvg2-bin"; \
	  apt-get update; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends librsvg2-bin; \
	fi
	$(BIN)/python tools/screenshots.py demo -o docs/img/timeline.png
	$(BIN)/python tools/screenshots.py live -o docs/img/live.png --final docs/img/live-final.png

# The TypeScript SDK (sdk/typescript, @sylphx/sdk): its devDependencies (typescript,
# openapi-typescript, @types/node) installed by `npm ci` from the checked-in lockfile, again
# whenever package.json or the lockfile changes (the stamp is npm's own hidden lockfile).
TS_SDK    := $(CURDIR)/sdk/typescript
TS_STAMP  := $(TS_SDK)/node_modules/.package-lock.json

node-deps: $(TS_STAMP)

$(TS_STAMP): $(TS_SDK)/package.json $(TS_SDK)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo ">> npm missing: install Node.js >= 18 and npm (make system-deps)" >&2; exit 1; }
	cd $(TS_SDK) && npm ci --no-audit --no-fund
	@touch "$@"

# wire.ts: the TypeScript SDK's wire types, from the app's OpenAPI document (tools/openapi_ts.py)
ts-wire: venv node-deps
	$(BIN)/python tools/openapi_ts.py

# The sync SDK (_client/calls.py, runs.py, resources.py) is generated from the async one: edit
# _client/async_calls.py / async_runs.py / async_resources.py, then run this.
sdk: venv
	$(BIN)/python tools/unasync_sdk.py

fmt: venv
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

# Stops a demo control plane (if any) before deleting its home; keeps .venv.
clean:
	@if [ -x "$(BIN)/sylphx" ] && [ -d "$(CURDIR)/.sylphx-demo" ]; then \
	  SYLPHX_HOME="$(CURDIR)/.sylphx-demo" "$(BIN)/sylphx" local stop >/dev/null 2>&1 || true; \
	fi
	rm -rf "$(CURDIR)/.sylphx-demo" "$(CURDIR)/out" build dist .pytest_cache .mypy_cache .ruff_cache
	rm -rf "$(CURDIR)/sdk/typescript/dist"
	find src tests examples -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
	find src -maxdepth 1 -name '*.egg-info' -type d -exec rm -rf {} + 2>/dev/null || true

distclean: clean
	rm -rf "$(VENV)" "$(CURDIR)/sdk/typescript/node_modules"
