# dnspulse: every command a developer runs starts here. `make help` lists them.
SHELL        := /usr/bin/env bash
GO          ?= go
OUTPUT      ?= _output
BIN         ?= $(OUTPUT)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Evaluated once, so the binaries and the image labels of one make run agree.
VERSION     := $(VERSION)
GIT_COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     ?= -s -w -X main.GitCommit=$(GIT_COMMIT) -X github.com/dnspulse/dnspulse/healer/version.Version=$(VERSION)
GOFLAGS_BUILD ?= -trimpath
GOLANGCI_LINT_VERSION ?= v2.15.0
BENCH_COUNT ?= 10
# Packages whose tests need no CoreDNS binary and no cluster (the inner loop).
UNIT_PKGS   ?= $$($(GO) list ./... | grep -v -e /build/coredns -e /e2e)

.DEFAULT_GOAL := help

##@ General
.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Build
.PHONY: build build-coredns build-healer
build: build-coredns build-healer ## Build the custom CoreDNS and the healer into _output/bin.

build-coredns: ## Build CoreDNS with the pulse plugin (all upstream plugins; ~2 min cold).
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags '$(LDFLAGS)' -o $(BIN)/coredns ./build/coredns

build-healer: ## Build the healer.
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags '$(LDFLAGS)' -o $(BIN)/healer ./healer/cmd/healer

.PHONY: image image-coredns image-healer
image: image-coredns image-healer ## Build both images (docker if an engine answers, else buildah -> _output/images/*.tar).

image-coredns: build-coredns ## Build the CoreDNS image (FROM scratch; see build/README.md to push it).
	VERSION=$(VERSION) REVISION=$(GIT_COMMIT) OUTPUT=$(OUTPUT) build/image/build.sh coredns

image-healer: build-healer ## Build the healer image.
	VERSION=$(VERSION) REVISION=$(GIT_COMMIT) OUTPUT=$(OUTPUT) build/image/build.sh healer

##@ Test
.PHONY: test test-unit test-integration test-coredns-suite e2e
test: test-unit test-integration test-coredns-suite test-image e2e ## The whole proof: unit, integration (real CoreDNS), CoreDNS's own suite with pulse, end to end (local cluster).

test-unit: ## Unit tests with -race; compiles no CoreDNS binary (the inner loop).
	$(GO) test -race -count=1 $(UNIT_PKGS)

test-integration: build ## Integration tests against the real custom CoreDNS and healer binaries.
	COREDNS_BIN=$(abspath $(BIN)/coredns) HEALER_BIN=$(abspath $(BIN)/healer) \
		$(GO) test -count=1 -tags integration ./build/coredns/... ./test/... ./corefile-examples/

test-coredns-suite: ## CoreDNS's own test/ package without and with pulse in every server block, compared test by test (~1-3 min warm).
	$(GO) run ./hack/coresuite -work $(abspath $(OUTPUT)/coredns-suite)

test-image: image ## Unpack both image archives, check their config and run their entrypoints (root).
	IMAGES_DIR=$(abspath $(OUTPUT)/images) $(GO) test -count=1 -tags image ./build/image/

e2e: cluster-bins build ## End-to-end tests on the local cluster (builds the control plane once: ~10 min cold on a quiet 2-core machine, cached in ~/.cache/dnspulse).
	DNSPULSE_BIN_DIR=$(abspath $(BIN)) $(GO) test -count=1 -p 1 -tags e2e -timeout 40m -v ./e2e/...

.PHONY: e2e-repeat
e2e-repeat: cluster-bins build ## The flake count: the whole e2e suite N times (default 10), never stopping at a failure; HOG=1 adds a busy loop per CPU; summary per run and per test, logs per run in _output/e2e-repeat (root).
	BIN=$(BIN) N=$(N) HOG=$(HOG) RUN='$(RUN)' PKGS='$(PKGS)' hack/e2e-repeat.sh

.PHONY: cluster-bins cluster cluster-down
cluster-bins: ## Build etcd, kube-apiserver/-controller-manager/-scheduler, kubectl, helm (cached outside the tree by pins).
	OUT_BIN=$(abspath $(BIN)) e2e/hack/build-cluster-bins.sh

cluster: cluster-bins build ## Run the local cluster with CoreDNS+pulse until Ctrl-C; prints the kubectl commands (root).
	BIN=$(BIN) hack/cluster.sh

cluster-down: ## Remove anything a local cluster left behind (processes, netns, links, bridge, state); idempotent.
	BIN=$(BIN) hack/cluster.sh down

##@ Benchmarks
.PHONY: bench bench-plugin bench-watch
bench: bench-plugin bench-watch ## Every benchmark.

bench-plugin: ## ServeDNS with and without pulse (benchstat; BASE_REF=ref compares with a commit) and dnsperf CPU per query.
	hack/bench-plugin.sh

bench-watch: build-coredns ## CPU per tick of serving 0, 1, 2, 10 heartbeat streams (GET /pulse?watch=1).
	COREDNS_BIN=$(abspath $(BIN)/coredns) hack/bench-watch.sh

.PHONY: bench-detect bench-scale
bench-detect: ## Healer detection per fault class, flapping, benign situations, healthy soak (SOAK=10m, HOG=2 for a busy machine).
	hack/bench-detect.sh

bench-scale: build ## The healer with 100 and 1,000 simulated replicas, stream vs poll: CPU, memory, probes/s, heartbeat bytes/s, hang detection (SIZES, ROUNDS, DESIGNS, PROFILE=dir, BASE_REF=ref for the design stream@base).
	BIN=$(BIN) SIZES=$(SIZES) ROUNDS=$(ROUNDS) WINDOW=$(WINDOW) INJECTIONS=$(INJECTIONS) DESIGNS='$(DESIGNS)' PROFILE=$(PROFILE) hack/bench-scale.sh

.PHONY: bench-e2e
bench-e2e: cluster-bins build ## In-cluster healing: each fault class ROUNDS times (default 10), fault to verdict/drained/replacement (root; PROBES=defaults, the chart's, or loaded, the e2e suite's).
	BIN=$(BIN) ROUNDS=$(ROUNDS) FAULTS=$(FAULTS) PROBES=$(PROBES) hack/bench-e2e.sh

##@ Run
.PHONY: demo demo-local
demo: cluster-bins build ## The main job: local cluster, healer by helm, one replica hung and healed, timeline; until Ctrl-C (DEMO_WAIT=0 ends after the story; root).
	BIN=$(BIN) hack/demo.sh

demo-local: build ## Three local CoreDNS replicas with pulse, the healer in static mode, one replica frozen and healed.
	BIN=$(BIN) hack/demo-local.sh

##@ Lint
.PHONY: lint fmt chart-lint
lint: ## golangci-lint (pinned, run through the go command).
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...

chart-lint: ## helm lint the healer chart with every ci values file (helm binary if built, else the Helm SDK test).
	@if [ -x $(BIN)/helm ]; then \
		for f in "" healer/chart/ci/*-values.yaml; do \
			$(BIN)/helm lint --strict --kube-version 1.37.2 healer/chart $${f:+--values $$f} || exit 1; \
		done; \
	else \
		$(GO) test -count=1 -run 'TestLint|TestSchema' ./healer/chart/; \
	fi

fmt: ## gofmt the tree.
	gofmt -w $$(git ls-files '*.go')

.PHONY: clean
clean: ## Remove _output.
	rm -rf $(OUTPUT)
