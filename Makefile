# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Everything else here is a step of theirs and can be run alone.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FRONT := $(VENV)/.front-built
CLI := $(PY) -m cli.main
DATASET ?= amazon-office
PYTEST_ARGS ?=

.PHONY: setup system proto neo4j-jars demo test check up down status bench-ingest bench-incremental bench-freshness dashboards clean

setup: system $(STAMP) $(FRONT) proto neo4j-jars

# System packages: Java 17 and Maven (Neo4j), redis-server, prometheus (its promtool checks deploy/ in the
# tests). Installed only when missing.
system:
	@command -v java >/dev/null && command -v mvn >/dev/null && command -v redis-server >/dev/null \
	  && command -v dot >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing system packages (java, maven, redis-server, graphviz, prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openjdk-17-jre-headless maven redis-server graphviz prometheus >/dev/null; }
	@# The Debian packages start their own redis on 6379 and prometheus on 9090; the project runs its own.
	@-systemctl disable --now redis-server >/dev/null 2>&1 || true
	@-systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true

# uv makes the several-GB torch install a matter of minutes and caches wheels between runs.
$(STAMP): pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q -p python3.11 $(VENV)
	@echo "installing the Python packages into $(VENV) (uv; torch makes it minutes the first time)"
	VIRTUAL_ENV=$(VENV) uv pip install -q -e ".[dev]"
	@touch $(STAMP)

# The server's native front end (server/native, Rust): cargo fetches its crates from crates.io the first time.
# Without a Rust toolchain the server runs on grpc's Python server alone (IG_SERVER_FRONT=auto).
$(FRONT): $(STAMP) server/native/Cargo.toml server/native/Cargo.lock $(wildcard server/native/src/*.rs)
	@if command -v cargo >/dev/null || test -x $$HOME/.cargo/bin/cargo; then \
	  echo "building the server's native gRPC front end (server/native, Rust; about 30 s the first time)"; \
	  PATH="$$HOME/.cargo/bin:$$PATH" VIRTUAL_ENV=$(VENV) uv pip install -q ./server/native && touch $@; \
	else echo "no Rust toolchain (cargo): the server will use grpc's Python server (IG_SERVER_FRONT=auto)"; fi

proto: $(STAMP)
	@$(PY) -m proto.generate

# Maven fetches the Neo4j jars once into ~/.m2; their classpath is remembered in ~/.cache/interest-graph.
neo4j-jars: $(STAMP)
	$(PY) -c "from graphdb.localstack import neo4j_classpath; from graphdb.settings import LocalStackSettings; neo4j_classpath(LocalStackSettings())"

up: setup
	$(CLI) stack up

down:
	$(CLI) stack down

status:
	$(CLI) stack status

# The main job end to end: stack, worker, scheduler, load, train, roll out, serve, live updates (cli/demo.py).
demo: setup
	$(CLI) demo --dataset $(DATASET)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The habits of the trade, run by .ci/run before the tests: lint, formatting, types (pyproject.toml), and the native
# front end's clippy and unit tests. Its tests link libpython (no extension-module feature), found through the
# venv's interpreter; without a Rust toolchain the Rust half is skipped, as the front end is (see $(FRONT)).
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	@export PATH="$$HOME/.cargo/bin:$$PATH"; \
	if ! command -v cargo >/dev/null; then \
	  echo "no Rust toolchain (cargo): clippy and the server/native tests are skipped"; exit 0; fi; \
	cargo clippy --version >/dev/null 2>&1 || rustup component add clippy; \
	libdir="$$($(PY) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"; \
	libpython="$$libdir/$$($(PY) -c 'import sysconfig; print(sysconfig.get_config_var("LDLIBRARY"))')"; \
	test -e "$$libpython" || { echo "installing libpython-dev: the Rust tests link $$libpython"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    "libpython$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev" >/dev/null; }; \
	export PYO3_PYTHON="$(abspath $(PY))" LD_LIBRARY_PATH="$$libdir$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"; \
	set -x; \
	cargo clippy --manifest-path server/native/Cargo.toml --all-targets --no-default-features --locked -- -D warnings && \
	cargo test --manifest-path server/native/Cargo.toml --no-default-features --locked
	$(VENV)/bin/ruff format --check .

bench-ingest: setup
	$(PY) -m bench.ingest

bench-incremental: setup
	$(PY) -m bench.incremental

bench-freshness: setup
	$(PY) -m bench.freshness

# docs/freshness-dashboard.png: freshness over time under load, from the metrics of a real bench.freshness run.
dashboards: setup
	$(PY) -m bench.dashboard --out docs/freshness-dashboard.png

clean: down
	rm -rf var
