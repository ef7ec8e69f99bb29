package integration

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vnet-cni/vnet-cni/integration/soak"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// TestSoak runs the churn soak's short profile: 2 nodes, 100 pod slots
// each, random ADD/DEL for 20 s with 10 % 5xx, 429 storms, 2 s of ARM
// latency, vnet-ipamd SIGKILLed at random (the first kill damages its
// store) and ipConfigurations deleted out of band; then kernel, stores and
// cloud must agree (see package soak). `make soak` runs the long profile.
// On failure it prints the seed, the soak's events and the daemons'
// warnings and errors.
func TestSoak(t *testing.T) {
	nstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("soak skipped in -short")
	}
	dir := t.TempDir()
	var events syncBuffer
	res, err := soak.Run(context.Background(), soak.Short(), soak.Options{
		Dir: dir, BinDir: "../bin", Prefix: nstest.Prefix(t),
		Logger: slog.New(slog.NewTextHandler(&events, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	for _, v := range res.Violations {
		t.Errorf("violation: %s", v)
	}
	if err != nil {
		t.Error(err)
	}
	t.Logf("%d adds, %d dels, %d failed calls, %d live pods, %s, seed %d", res.Adds, res.Dels, res.Failed, res.LivePods, res.Elapsed, res.Seed)
	t.Log(res.FaultLine())
	t.Log(res.Line())
	if err == nil && (res.Adds == 0 || res.Dels == 0 || res.Restarts == 0 || res.Faults == 0) {
		t.Errorf("the soak did not exercise churn, faults and restarts: %+v", res)
	}
	if err == nil && (res.Damages.Total() == 0 || res.Drifts == 0) {
		t.Errorf("the soak did not exercise store damage and cloud drift: %+v", res)
	}
	if t.Failed() {
		t.Logf("the soak's events:\n%s", events.String())
		logs, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "ipamd.log"))
		for _, p := range logs {
			t.Logf("warnings and errors of %s:\n%s", p, warnings(p, 300))
		}
	}
}

// warnings returns the WARN and ERROR lines of a daemon's log, at most max
// of them (the last ones).
func warnings(path string, max int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	return strings.Join(lines, "\n")
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
