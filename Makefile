# tether's build. `make help` lists the targets. Everything a target needs is
# installed or built by the target itself: Debian packages through apt-get, Go
# tools and the Kubernetes fixture binaries through the Go module proxy.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CACHE        ?= $(CURDIR)/.cache
FIXTURES_BIN ?= $(CACHE)/bin
TOOLS_BIN    := $(CACHE)/tools
STATICCHECK_VERSION := v0.8.2
E2E_PROVIDER ?= local
# How long the e2e suite may run before go test stops it.
E2E_TIMEOUT  ?= 20m

export TETHER_FIXTURES_BIN := $(FIXTURES_BIN)
export GOFLAGS := -buildvcs=false

# Debian packages the tests need: ip (iproute2) and nft (nftables).
APT_PACKAGES := iproute2 nftables

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install the Debian packages the tests need (iproute2, nftables, haproxy, chromium for the console's browser test), if missing
	@missing=""; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install:$$missing (or install them yourself)" >&2; exit 1; fi; \
	  echo "deps: installing$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
.PHONY: build
build: ## build tether-relay, tether-agent and tether-proxy into bin/ (static, CGO_ENABLED=0, as the images and releases ship them)
	go build ./...
	CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/tether-k8s/tether/core/version.Version=$(VERSION)" -o bin/ ./cmd/tether-relay ./cmd/tether-agent ./cmd/tether-proxy

.PHONY: fixtures
fixtures: ## build kube-apiserver, kubectl, etcd, kwok..., and the fixture OpenID provider into .cache/bin (cold ~20 min, cached seconds)
	bash fixtures/tools/build.sh $(FIXTURES_BIN)
	bash fixtures/tools/build-op.sh $(FIXTURES_BIN)

.PHONY: kind-node
kind-node: ## the kind node image tether-kind-node:v1.35.4, built offline from debootstrap and Go modules (root and a Docker engine; cold ~40 min on 2 busy CPUs, cached seconds; fixtures/kind/build.sh)
	FIXTURES_BIN=$(FIXTURES_BIN) bash fixtures/kind/build.sh node

.PHONY: kind-cluster
kind-cluster: ## kind-node, then a kind cluster from it with kind's Go library: node Ready, a local image's pod Running, then deleted (KIND_KEEP=1 keeps it)
	FIXTURES_BIN=$(FIXTURES_BIN) bash fixtures/kind/build.sh cluster

STATICCHECK := $(TOOLS_BIN)/staticcheck-$(STATICCHECK_VERSION)
$(STATICCHECK):
	GOBIN=$(TOOLS_BIN)/tmp go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS_BIN)/tmp/staticcheck $@

.PHONY: lint
lint: $(STATICCHECK) ## gofmt, go vet and staticcheck, on every module; tether-proxy vetted for Windows and macOS too
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -path './.cache/*')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...
	cd fixtures/tools/kubernetes && go vet ./etcd && $(STATICCHECK) ./etcd
	cd fixtures/op && go vet ./... && $(STATICCHECK) ./...
	cd fixtures/kind && go vet ./... && $(STATICCHECK) ./...
	cd fixtures/tools/coredns && go vet ./... && $(STATICCHECK) ./...
	@# tether-proxy runs on laptops: it, and its tests, compile for Windows and macOS
	GOOS=windows GOARCH=amd64 go vet ./cmd/tether-proxy/...
	GOOS=darwin GOARCH=arm64 go vet ./cmd/tether-proxy/...

.PHONY: unit
unit: deps fixtures ## unit tests: everything but the packages that start clusters (the network fixture's need root; the registry's etcd tests, the fixture etcd)
	go test -race -count=1 $$(go list ./... | grep -v -e /fixtures/cluster -e /e2e -e /sim/internal/sim -e '/tether/images$$')  # those run in e2e, sim-quick and images-test
	cd fixtures/op && go test -race -count=1 ./...

.PHONY: e2e
e2e: deps fixtures build ## the e2e suite on E2E_PROVIDER: local (default; real kube-apiserver behind a firewall) or kind (the charts in a kind cluster; needs Docker, else runs local)
	go test -count=1 -v -timeout $(E2E_TIMEOUT) ./fixtures/cluster/...
	E2E_PROVIDER=$(E2E_PROVIDER) go test -count=1 -v -timeout $(E2E_TIMEOUT) ./e2e/... -args -ginkgo.v -ginkgo.no-color

.PHONY: charts
charts: $(STATICCHECK) ## Helm charts: vet, staticcheck, lint/render/schema tests with Helm's Go SDK (no cluster, no Docker)
	cd charts/test && go vet ./... && $(STATICCHECK) ./... && go test -count=1 ./...

.PHONY: charts-package
# A tag v1.2.3 packages the charts at 1.2.3; an untagged commit at 0.0.0-<commit>.
CHART_VERSION ?= $(if $(filter v%,$(VERSION)),$(patsubst v%,%,$(VERSION)),0.0.0-$(VERSION))
charts-package: ## package both charts at CHART_VERSION (from the git tag) as a chart repository, archives and index.yaml, in dist/charts; CHARTS_URL sets index.yaml's URLs
	cd charts/test && go run ./cmd/helmpackage -charts .. -out ../../dist/charts -version $(CHART_VERSION) $(if $(CHARTS_URL),-url $(CHARTS_URL))

# The images, built FROM scratch from static binaries built here: nothing is
# pulled (images/build.sh). IMAGE_TAG defaults to the charts' appVersion as
# `make charts-package` sets it, so that the packaged charts' default image
# references name what `make images` tags.
IMAGE_REPO ?= ghcr.io/tether-k8s
IMAGE_TAG  ?= $(CHART_VERSION)
IMAGES_DIR ?= $(CURDIR)/dist/images
IMAGES_ENV = IMAGES_DIR=$(IMAGES_DIR) IMAGE_REPO=$(IMAGE_REPO) IMAGE_TAG=$(IMAGE_TAG) VERSION=$(VERSION) \
	REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown)
.PHONY: images
images: ## build the tether-relay, tether-agent and tether-proxy images FROM scratch (IMAGE_REPO, IMAGE_TAG; needs a Docker engine, no registry)
	$(IMAGES_ENV) bash images/build.sh relay agent proxy

.PHONY: images-test
images-test: deps fixtures build ## build the images and the e2e workload image, then run them as containers: --help, and a real join and kubectl request (skips with one line without a Docker engine)
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
	  echo "images-test: skipped: no Docker engine (docker info failed or docker is not installed)"; exit 0; \
	fi; \
	$(IMAGES_ENV) bash images/build.sh relay agent proxy workload; \
	TETHER_IMAGE_REPO=$(IMAGE_REPO) TETHER_IMAGE_TAG=$(IMAGE_TAG) go test -count=1 -v -timeout 10m ./images/...

.PHONY: bench-check
bench-check: $(STATICCHECK) ## the benchmark harness's own tests (bench/, direct and tether only, ~30 s)
	cd bench && go vet ./... && $(STATICCHECK) ./... && go test -count=1 ./...

.PHONY: bench-quick
bench-quick: deps ## every benchmark workload for a few seconds, against every peer, so the harness cannot rot (~2 min warm; building the peers takes ~10 min the first time)
	cd bench && go run . -quick -timeout 30m -out $(CURDIR)/.cache/bench-quick.md

.PHONY: bench
bench: deps ## the full benchmarks against the peers, with tether's A/B variants; writes docs/benchmarks.md (~30 min)
	cd bench && go run . -ab -out $(CURDIR)/docs/benchmarks.md

.PHONY: sim-quick
sim-quick: ## the simulator's fixed seeds (regression scenarios), then its planted bug, which must be caught
	go test -race -count=1 ./sim/internal/sim/
	go test -v -count=1 -tags tether_plantedbug ./sim/internal/sim/ -args -ginkgo.focus=planted -ginkgo.v -ginkgo.no-color

SIM_FLAGS ?= -duration 60s
.PHONY: sim
sim: ## run the simulator's suite with a fresh seed and longer runs (SIM_FLAGS, default -duration 60s)
	go run ./sim $(SIM_FLAGS)

# A count, not a duration: Go 1.26's fuzz coordinator can fail a duration
# -fuzztime with a spurious "context deadline exceeded" on a loaded machine
# (go.dev/issue/75804, fixed in Go 1.27). 100000 runs take 5-10 s here.
FUZZTIME ?= 100000x
.PHONY: fuzz
fuzz: ## run every fuzz target briefly (FUZZTIME each, default 100000 runs, or a target's own //tether:fuzztime line)
	@for f in $$(grep -rl --include='*_test.go' '^func Fuzz' core cmd fixtures 2>/dev/null); do \
	  for fn in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
	    t=$(FUZZTIME); \
	    if [ "$(origin FUZZTIME)" = file ]; then \
	      own=$$(grep -B1 "^func $$fn(" $$f | sed -n 's|^//tether:fuzztime \([0-9]*x\)$$|\1|p'); t=$${own:-$$t}; \
	    fi; \
	    echo "go test -fuzz $$fn -fuzztime $$t ./$$(dirname $$f)"; \
	    go test -run '^$$' -fuzz "^$$fn$$" -fuzztime $$t ./$$(dirname $$f); \
	  done; \
	done

.PHONY: test
test: lint unit fuzz sim-quick charts bench-check e2e images-test bench-quick ## everything CI runs: lint, unit tests, fuzz targets briefly, the simulator's seeds, chart tests, e2e, the images as containers (with Docker), every benchmark workload briefly

.PHONY: demo
demo: deps fixtures build ## the whole path: cluster behind a firewall, relay, agent, proxy, kubectl through tether (KEEP=1 to stay up)
	go run ./fixtures/demo

.PHONY: clean
clean: ## remove built binaries and caches (.cache, bin, dist/images)
	rm -rf $(CACHE) bin $(IMAGES_DIR)
