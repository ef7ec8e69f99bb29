package controlplane

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
)

// A component that dies while starting fails Start, and Start leaves
// nothing behind: no directory, no process.
func TestStartFailureCleansUp(t *testing.T) {
	tmp := t.TempDir()
	script := filepath.Join(tmp, "etcd")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho etcd cannot start here >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(tmp, "runs")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cp, err := Start(ctx, Config{Bin: binaries.Set{Dir: tmp}, Etcd: script, TempDir: parent, ReadyTimeout: 20 * time.Second})
	if err == nil {
		_ = cp.Stop()
		t.Fatal("Start succeeded with an etcd that exits")
	}
	for _, want := range []string{"etcd exited while starting", "exit status 3", "etcd cannot start here"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	left, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("Start left %d entries in its temp dir, first %s", len(left), left[0].Name())
	}
}

// A context that ends stops the control plane; Stop after that is no error.
func TestContextEndStops(t *testing.T) {
	tmp := t.TempDir()
	script := filepath.Join(tmp, "etcd")
	// An etcd that never gets healthy: Start waits until its context ends.
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(tmp, "runs")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := Start(ctx, Config{Bin: binaries.Set{Dir: tmp}, Etcd: script, TempDir: parent})
	if err == nil || !strings.Contains(err.Error(), "etcd not ready") {
		t.Fatalf("Start with a hanging etcd: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("Start took %s to give up and stop", d)
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("Start left %d entries in its temp dir", len(left))
	}
}

func TestFirstIP(t *testing.T) {
	for in, want := range map[string]string{"10.96.0.0/16": "10.96.0.1", "10.96.5.7/16": "10.96.0.1", "fd00::/108": "fd00::1"} {
		got, err := firstIP(mustPrefix(t, in))
		if err != nil || got.String() != want {
			t.Errorf("firstIP(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	if _, err := firstIP(mustPrefix(t, "10.0.0.1/32")); err == nil {
		t.Error("a /32 has a first service address")
	}
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
