package server_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// BenchmarkFreshProcess measures what the plugin pays per pod: exec a fresh
// static binary that connects and makes one Status call
// (internal/cmd/rpcstatus), against exec of a static binary that does
// nothing (internal/cmd/noop), interleaved in the same run. One iteration is
// one exec of each; run with -benchtime=200x for N=200:
//
//	go test -run XXX -bench FreshProcess -benchtime=200x ./ipamd/server/
func BenchmarkFreshProcess(b *testing.B) {
	dir := b.TempDir()
	statusBin := buildStatic(b, dir, "./internal/cmd/rpcstatus")
	noopBin := buildStatic(b, dir, "./internal/cmd/noop")
	ts := startServer(b, &fakeHandler{})

	run := func(bin string, args ...string) time.Duration {
		cmd := exec.Command(bin, args...)
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%s: %v", bin, err)
		}
		return time.Since(start)
	}
	for range 10 { // warm the page cache
		run(noopBin)
		run(statusBin, ts.path)
	}
	var status, noop []time.Duration
	for b.Loop() {
		noop = append(noop, run(noopBin))
		status = append(status, run(statusBin, ts.path))
	}
	sp50, sp99 := percentile(status, 50), percentile(status, 99)
	np50, np99 := percentile(noop, 50), percentile(noop, 99)
	b.ReportMetric(ms(sp50), "status-p50-ms")
	b.ReportMetric(ms(sp99), "status-p99-ms")
	b.ReportMetric(ms(np50), "noop-p50-ms")
	b.ReportMetric(ms(np99), "noop-p99-ms")
	b.ReportMetric(ms(sp50-np50), "delta-p50-ms")
	b.ReportMetric(float64(sp50)/float64(np50), "ratio-p50")
	b.Logf("N=%d execs each\n"+
		"  fresh process, one status call: p50 %6.3f ms  p99 %6.3f ms\n"+
		"  reference, static noop binary:  p50 %6.3f ms  p99 %6.3f ms\n"+
		"  difference p50 %.3f ms, p99 %.3f ms; ratio p50 %.2f, p99 %.2f",
		len(status), ms(sp50), ms(sp99), ms(np50), ms(np99),
		ms(sp50-np50), ms(sp99-np99), float64(sp50)/float64(np50), float64(sp99)/float64(np99))
}

// BenchmarkWarmClient measures one call (connect, request, response) from a
// process that is already running.
func BenchmarkWarmClient(b *testing.B) {
	a := testAssignment("c1", "10.240.0.17")
	h := &fakeHandler{
		allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
			return api.AllocateResponse{Assignment: a}, nil
		},
		release: func(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error) {
			return api.ReleaseResponse{Known: true, IP: a.IP}, nil
		},
	}
	calls := []struct {
		name string
		call func(context.Context, *api.Client) error
	}{
		{"status", func(ctx context.Context, c *api.Client) error {
			_, err := c.Status(ctx, api.StatusRequest{})
			return err
		}},
		{"allocate", func(ctx context.Context, c *api.Client) error {
			_, err := c.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "default",
				PodName: "pod-c1", Netns: "/var/run/netns/cni-1234"})
			return err
		}},
		{"release", func(ctx context.Context, c *api.Client) error {
			_, err := c.Release(ctx, api.ReleaseRequest{ContainerID: "c1", IfName: "eth0"})
			return err
		}},
	}
	for _, tc := range calls {
		b.Run(tc.name, func(b *testing.B) {
			ts := startServer(b, h)
			// The fake records every request; keep that out of the numbers' memory.
			h.mu.Lock()
			h.requests = nil
			h.mu.Unlock()
			var lat []time.Duration
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				start := time.Now()
				err := tc.call(ctx, ts.client)
				lat = append(lat, time.Since(start))
				cancel()
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(us(percentile(lat, 50)), "p50-µs")
			b.ReportMetric(us(percentile(lat, 99)), "p99-µs")
			b.Logf("warm %s: N=%d p50 %.1f µs p99 %.1f µs", tc.name, len(lat), us(percentile(lat, 50)), us(percentile(lat, 99)))
		})
	}
}

// buildStatic builds the main package pkg the way the plugin is shipped.
func buildStatic(b *testing.B, dir, pkg string) string {
	b.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		b.Skipf("no go tool: %v", err)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	if fi, err := os.Stat(out); err == nil {
		b.Logf("%s: %d bytes", filepath.Base(pkg), fi.Size())
	}
	return out
}

// percentile returns the p-th percentile (nearest rank) of d.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
