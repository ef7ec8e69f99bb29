# vnet-cni build, test and lint entry points.
GO       ?= go
BIN      := bin
GOFLAGS  := -trimpath
LDFLAGS  := -s -w
CGO_ENABLED ?= 0
export CGO_ENABLED

BINARIES := $(BIN)/vnet-sim $(BIN)/vnet-ipamd $(BIN)/vnet-cni

.PHONY: all build test lint clean

all: build

build: $(BINARIES)

$(BIN)/vnet-sim: FORCE
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./cloud/sim/cmd/vnet-sim

$(BIN)/vnet-ipamd: FORCE
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./ipamd/cmd/vnet-ipamd

$(BIN)/vnet-cni: FORCE
	$(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $@ ./cni/cmd/vnet-cni

# The race detector needs cgo. Tests that need root skip themselves without it;
# CI runs as root, so every tier runs there.
test: build
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m ./...

lint:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	golangci-lint run ./...

clean:
	rm -rf $(BIN)

FORCE:
