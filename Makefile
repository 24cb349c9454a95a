# livefilter — every target is idempotent; `make run` and `make test` install what they need.
SHELL := /bin/bash
CARGO ?= cargo
ENDPOINT_ADDR ?= 127.0.0.1:7000
RELAY_HTTP ?= 127.0.0.1:8080

.PHONY: setup build run test lint bench fmt

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --workspace

# The main job: a local Sora-compatible endpoint and the relay publishing the test pattern to it.
run: build
	scripts/run-local.sh

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: lint
	$(CARGO) test --workspace -- --test-threads=2

bench: build
	$(CARGO) run --release -p livefilter-relay -- bench

fmt:
	$(CARGO) fmt --all
