# vnet-cni build, test and lint entry points.
GO       ?= go
BIN      := bin
GOFLAGS  := -trimpath
LDFLAGS  := -s -w
CGO_ENABLED ?= 0
export CGO_ENABLED

BINARIES := $(BIN)/vnet-sim $(BIN)/vnet-ipamd $(BIN)/vnet-cni
# The simulated cloud of make demo and make soak: azure or aws.
CLOUD    ?= azure
# The datapath mode of make demo: empty is the cloud's default (azure:
# bridge; aws: routed); azure also runs routed or kubenet.
MODE     ?=

.PHONY: all build test lint clean demo

all: build

build: $(BINARIES)

$(BIN)/vnet-sim: FORCE
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./cloud/sim/cmd/vnet-sim

$(BIN)/vnet-ipamd: FORCE
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./ipamd/cmd/vnet-ipamd

$(BIN)/vnet-cni: FORCE
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./cni/cmd/vnet-cni

# vnet-cni's node image (what the DaemonSet in manifests/ runs): vnet-ipamd
# and vnet-cni, static, and the build host's CA bundle in one OCI layer,
# written as an OCI image layout tarball without a daemon or a registry;
# the same binaries give the same bytes. `ctr -n k8s.io images import
# bin/vnet-cni-image.tar` loads it; IMAGE_REF names it.
IMAGE_REF ?= vnet-cni.invalid/vnet-cni:dev
.PHONY: image
image: $(BIN)/vnet-ipamd $(BIN)/vnet-cni
	$(GO) run ./internal/cmd/vnet-image -bin $(BIN) -ref $(IMAGE_REF) -o $(BIN)/vnet-cni-image.tar

# The race detector needs cgo. Tests that need root skip themselves without it;
# CI runs as root, so every tier runs there.
# The Kubernetes tier needs the binaries of k8s-bins: built here when missing
# (cold about 15 minutes on 2 cores), nothing to do when they are there.
test: build fuzz-short k8s-bins
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m ./...

# Every fuzz target for FUZZTIME executions, from its committed seed corpus in
# testdata/fuzz; `go test -fuzz` takes one target at a time. The budget is a
# count, not a duration: with a duration, Go 1.26's fuzz coordinator can report
# a spurious "context deadline exceeded" failure when the time runs out while a
# worker is mid-call (golang/go#75804, fixed in Go 1.27); a count has no such
# deadline to race.
FUZZTIME ?= 20000x
FUZZ_TARGETS := \
	./cni/plugin:FuzzLoadNetConf ./cni/plugin:FuzzCNIEnv \
	./ipamd/config:FuzzParse \
	./ipamd/api:FuzzReadFrame ./ipamd/server:FuzzDecodeRequest \
	./cloud/azure:FuzzParseInstance ./cloud/azure:FuzzParseSubnetID \
	./cloud/azure:FuzzRetryAfter ./cloud/azure:FuzzClassify \
	./cloud/aws:FuzzParseIdentity ./cloud/aws:FuzzClassify

.PHONY: fuzz-short
fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn ($$pkg, $(FUZZTIME))"; \
		out=$$($(GO) test $$pkg -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s -parallel 2 2>&1) || { echo "$$out"; exit 1; }; \
		echo "$$out" | tail -n 2; \
	done

# The churn soak (integration/soak): 2 nodes x 100 pod slots, faults and
# SIGKILLs, at most 5 minutes; ends with "soak: N operations, ...".
# CLOUD=aws runs it on the simulated EC2 (routed mode, ENIs, no drift).
.PHONY: soak
soak: build
	$(GO) run ./integration/cmd/vnet-soak -bin $(BIN) -cloud $(CLOUD)

# The Kubernetes binaries integration/k8s runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl),
# built from k8s.io/kubernetes through the module proxy into
# $$VNET_K8S_BIN_DIR (default $$XDG_CACHE_HOME/vnet-cni-k8s/<version>),
# then containerd v2 (containerd, its runc shim, ctr) and the CNI plugins
# portmap and loopback from their modules into containerd-<version> and
# plugins-<version> next to it; nothing to do when they are there. Cold:
# see docs/kubernetes.md.
.PHONY: k8s-bins
k8s-bins:
	$(GO) run ./integration/cmd/vnet-k8s-bins

lint:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	golangci-lint run ./...

# The whole system on the simulated cloud (as root): installs Debian's
# nftables, iproute2 and reference CNI plugins if missing, then runs
# integration/cmd/vnet-demo against the binaries in bin/. CLOUD=aws runs it
# on the simulated EC2 (routed mode, ENIs). MODE=kubenet runs the nodes in
# kubenet mode (pod CIDRs on a local bridge, the VNet's route table; Azure
# only), MODE=routed the routed mode on Azure.
demo:
	@if [ "$(CLOUD)" = aws ] && [ "$(MODE)" = kubenet ]; then \
		echo "make demo: MODE=kubenet programs an Azure route table; it does not run with CLOUD=aws (use CLOUD=azure)" >&2; exit 2; fi
	@$(MAKE) --no-print-directory build
	@sh integration/cmd/vnet-demo/install-deps.sh
	$(GO) build $(GOFLAGS) -o $(BIN)/vnet-demo ./integration/cmd/vnet-demo
	$(BIN)/vnet-demo --bin $(BIN) --cloud $(CLOUD) --mode=$(MODE)

# The demo under Kubernetes (as root): a control plane and two workers with
# containerd, kubelet, kube-proxy and vnet-ipamd on the simulated VNet, a
# 20-pod Deployment through vnet-cni, traffic checks, scale to 0; builds
# the Kubernetes binaries first when missing (make k8s-bins). MODE=kubenet
# runs it in kubenet mode (manifests/overlays/kubenet: the Nodes' pod
# CIDRs from kube-controller-manager, the route table, NetworkUnavailable,
# the route controller's Lease).
.PHONY: demo-k8s
demo-k8s: build k8s-bins
	@sh integration/cmd/vnet-demo/install-deps.sh etcd-server runc
	$(GO) build $(GOFLAGS) -o $(BIN)/vnet-demo-k8s ./integration/cmd/vnet-demo-k8s
	$(BIN)/vnet-demo-k8s --bin $(BIN) --mode $(or $(MODE),bridge)

# Pod start-up through kubelet (as root, a few minutes): clusterloader2's
# node-throughput profile (100 pods at 5/s on one node) with vnet-cni and
# with Debian's bridge + host-local, alternating; writes
# bench-k8s-results.json.
.PHONY: bench-k8s
bench-k8s: build k8s-bins
	@sh integration/cmd/vnet-demo/install-deps.sh etcd-server runc
	$(GO) build $(GOFLAGS) -o $(BIN)/vnet-bench-k8s ./integration/cmd/vnet-bench-k8s
	$(BIN)/vnet-bench-k8s -bin $(BIN) -out $(CURDIR)/bench-k8s-results.json

# vnet-cni against Debian's reference plugins on the simulated cloud (as
# root, a few minutes per mode), every mode (bridge, routed, kubenet) against
# its like-for-like reference: prints a table and writes bench-results.json
# (bridge) and bench-results-<mode>.json.
.PHONY: bench
bench: build
	$(GO) build $(GOFLAGS) -o $(BIN)/vnet-bench ./integration/cmd/vnet-bench
	$(BIN)/vnet-bench -bin $(BIN) -out $(CURDIR)/bench-results.json

clean:
	rm -rf $(BIN)

FORCE:
