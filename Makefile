# RelayCache developer entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CONFIG ?=
DOCKER ?= docker
# Default image tags; the Helm chart's appVersion and the operator's
# --default-image use the same ones.
IMAGE ?= relaycache/relaycache:0.1.0
OPERATOR_IMAGE ?= relaycache/relaycache-operator:0.1.0
# Upper bound on the scenarios as a whole (each wait has its own deadline);
# on expiry the runner is sent TERM and still tears the control plane down.
E2E_TOTAL_TIMEOUT ?= 1800
# Which build's binaries go into the images of the real-pod scenarios.
# make e2e-images: release (as shipped). make e2e: the debug build it has
# just made for the kwok scenarios, unless E2E_IMAGE_PROFILE=release: a
# cold release build (thin LTO) would add 15-30 minutes to make test on
# 2 cores (docs/testing.md).
E2E_IMAGE_PROFILE ?=

.PHONY: help run demo build release test test-deps toolchain fmt fmt-check lint unit e2e-bin e2e-smoke bench clean \
	image image-operator chart-crds chart-check e2e-chart e2e e2e-images e2e-real-pods chaos

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Every entry point builds the whole workspace with one feature set, so
# that run, demo, bench and the tests reuse each other's artifacts instead
# of compiling shared dependencies again with other features.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

run: release ## Run the proxy on its embedded default (single mode, 0.0.0.0:8787 -> api.anthropic.com)
	$(TARGET_DIR)/release/relaycache serve $(if $(CONFIG),--config $(CONFIG))

demo: release ## Offline demo: the mock upstream behind relaycache on 127.0.0.1:8787
	scripts/demo.sh

build: ## Debug build of every crate
	$(CARGO) build --workspace

release: ## Release build of the workspace (the proxy, the operator, the mock upstream)
	$(CARGO) build --release --workspace

toolchain: ## Make sure rustfmt and clippy are installed
	@command -v cargo-fmt >/dev/null && command -v cargo-clippy >/dev/null || rustup component add rustfmt clippy

fmt: toolchain ## Format the code
	$(CARGO) fmt --all

fmt-check: toolchain
	$(CARGO) fmt --all -- --check

lint: toolchain ## Clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-deps: ## Install what the tests need: moto (a local S3-compatible server), the Anthropic SDK with zstd support, PyYAML, jq, openssl, curl, libfaketime; the real node's containerd, runc, CNI plugins, iptables, busybox-static
	@missing=""; for tool in jq openssl curl faketime; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	for pkg in containerd runc containernetworking-plugins iptables busybox-static gcc libc6-dev ca-certificates; do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v moto_server >/dev/null || python3 -m pip install --quiet 'moto[server]'
	@python3 -c 'import anthropic' 2>/dev/null || python3 -m pip install --quiet anthropic
	@python3 -c 'import sys; sys.version_info >= (3, 14) or __import__("backports.zstd")' 2>/dev/null \
	  || python3 -m pip install --quiet backports.zstd
	@python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml; }

# The chaos test runs alone (it saturates the machine); --workspace keeps
# the feature set of the test build above, so nothing compiles again.
unit: test-deps ## Every Rust test (unit and integration), then the chaos test alone for 75 s
	$(CARGO) test --workspace
	CHAOS_SECONDS=$${CHAOS_SECONDS:-75} $(CARGO) test --workspace --test it chaos:: -- --ignored --nocapture

chaos: test-deps ## The chaos test with a checker for CHAOS_SECONDS (default 900); make test runs it for 75
	CHAOS_SECONDS=$${CHAOS_SECONDS:-900} $(CARGO) test --workspace --test it chaos:: -- --ignored --nocapture

test: fmt-check lint unit chart-check e2e ## Everything CI runs: format check, clippy, all tests, chart checks, end to end
	@echo "make test: all checks passed"

chart-check: test-deps ## Lint, render and assert the Helm chart; check the compose example (builds helm if missing)
	e2e/build-binaries.sh helm
	scripts/chart-check.sh

chart-crds: ## Copy the generated CRD (crds/) into the Helm chart
	scripts/sync-chart-crds.sh

image: ## Build the proxy image (needs a Docker engine)
	$(DOCKER) build -f docker/relaycache.Dockerfile -t $(IMAGE) .

image-operator: ## Build the operator image (needs a Docker engine)
	$(DOCKER) build -f docker/relaycache-operator.Dockerfile -t $(OPERATOR_IMAGE) .

e2e-bin: ## Build the control-plane binaries (kube-apiserver, etcd, kwok, helm, ...) into .e2e-bin/ (cached)
	e2e/build-binaries.sh

e2e-smoke: e2e-bin ## Start a real control plane on loopback, check it, stop it
	e2e/smoke-control-plane.sh

e2e-chart: e2e-bin ## helm install/upgrade/uninstall the chart on a real control plane (Pod Security, RBAC, CRD kept)
	SMOKE_THEN=e2e/chart-install.sh e2e/smoke-control-plane.sh

e2e-images: ## OCI archives of the proxy, operator, mock-upstream, client and pause images, from the release binaries (E2E_IMAGE_PROFILE=debug: the debug ones), no registry (.e2e-images/)
	$(CARGO) build $(if $(filter debug,$(E2E_IMAGE_PROFILE)),,--release) --workspace
	E2E_IMAGE_BIN_DIR=$(TARGET_DIR)/$(or $(E2E_IMAGE_PROFILE),release) e2e/build-images.sh

# The real-pod scenarios: a node (containerd, kubelet, kube-proxy, CoreDNS)
# next to the control plane, running the images of e2e-images.
e2e-real-pods: test-deps e2e-images ## End to end in real pods on a local node (root; prints SKIPPED where the machine cannot run one)
	e2e/build-binaries.sh
	timeout --signal=TERM $(E2E_TOTAL_TIMEOUT) e2e/run-real-pods.sh

# With E2E_KUBECONFIG set, no control plane is started: only kubectl and
# helm are built, and the real-pod scenarios (which start their own node)
# do not run.
e2e: test-deps ## End to end: kwok scenarios on a real control plane, then the real-pod scenarios on a local node (E2E_KUBECONFIG=... for an existing cluster)
	e2e/build-binaries.sh $(if $(E2E_KUBECONFIG),kubectl helm)
	$(CARGO) build --workspace --all-targets
	timeout --signal=TERM $(E2E_TOTAL_TIMEOUT) e2e/run-scenarios.sh
	$(if $(E2E_KUBECONFIG),,$(if $(filter release,$(E2E_IMAGE_PROFILE)),$(CARGO) build --release --workspace,@:))
	$(if $(E2E_KUBECONFIG),,E2E_IMAGE_BIN_DIR=$(TARGET_DIR)/$(or $(E2E_IMAGE_PROFILE),debug) e2e/build-images.sh)
	$(if $(E2E_KUBECONFIG),,timeout --signal=TERM $(E2E_TOTAL_TIMEOUT) e2e/run-real-pods.sh)

bench: ## Benchmarks: mock direct vs nginx proxy_cache vs relaycache (installs wrk, nginx)
	scripts/bench.sh

clean:
	$(CARGO) clean

.PHONY: crds
crds: ## Regenerate crds/relaycache.io_relaycaches.yaml from the operator's types, and the chart's copy (make test fails when stale)
	@mkdir -p crds
	$(CARGO) run -q -p relaycache-operator -- crdgen > crds/relaycache.io_relaycaches.yaml.tmp
	mv crds/relaycache.io_relaycaches.yaml.tmp crds/relaycache.io_relaycaches.yaml
	scripts/sync-chart-crds.sh
