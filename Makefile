# livefilter — every target is idempotent; `make run` and `make test` install what they need.
SHELL := /bin/bash
CARGO ?= cargo
ENDPOINT_ADDR ?= 127.0.0.1:7000
RELAY_HTTP ?= 127.0.0.1:8080

.PHONY: setup build run run-test-pattern test lint bench fmt

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p livefilter-relay -p sora-endpoint

# The main job: the relay on localhost with the default filter and the local preview.
run: build
	scripts/run-local.sh

# The test pattern (no browser) published into a local Sora-compatible endpoint.
run-test-pattern: build
	scripts/run-test-pattern.sh

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- --test-threads=2

bench: build
	$(CARGO) run --release -p livefilter-relay -- bench

fmt:
	$(CARGO) fmt --all

# The CRD YAML under crds/, generated from operator/src/crd.rs. Checked in; the test
# `cargo test -p livefilter-operator --test crds` fails while it is stale.
.PHONY: crds
crds:
	$(CARGO) run -q -p livefilter-operator -- crd > crds/livefiltersessions.livefilter.dev.yaml.tmp
	mv crds/livefiltersessions.livefilter.dev.yaml.tmp crds/livefiltersessions.livefilter.dev.yaml
