package podbench

import (
	"strings"
	"testing"
	"time"
)

const exposition = `# HELP containerd_cri_sandbox_create_network_seconds time to create the network for a sandbox
# TYPE containerd_cri_sandbox_create_network_seconds histogram
containerd_cri_sandbox_create_network_seconds_bucket{le="0.005"} 0
containerd_cri_sandbox_create_network_seconds_bucket{le="0.01"} 0
containerd_cri_sandbox_create_network_seconds_bucket{le="0.025"} 10
containerd_cri_sandbox_create_network_seconds_bucket{le="0.05"} 90
containerd_cri_sandbox_create_network_seconds_bucket{le="0.1"} 100
containerd_cri_sandbox_create_network_seconds_bucket{le="+Inf"} 100
containerd_cri_sandbox_create_network_seconds_sum 4
containerd_cri_sandbox_create_network_seconds_count 100
containerd_cri_sandbox_list_seconds_bucket{le="+Inf"} 7
`

func TestParseHistogramAndQuantiles(t *testing.T) {
	h, err := ParseHistogram(strings.NewReader(exposition), "containerd_cri_sandbox_create_network_seconds")
	if err != nil {
		t.Fatal(err)
	}
	if h.Count() != 100 || h.Sum != 4 || len(h.Bounds) != 6 {
		t.Fatalf("parsed %+v", h)
	}
	// Rank 50 lies in (0.025, 0.05]: 40 of its 80 observations in.
	if got, want := h.Quantile(0.5), 37500*time.Microsecond; got != want {
		t.Errorf("p50 = %s, want %s", got, want)
	}
	// Rank 99 lies in (0.05, 0.1]: 9 of its 10.
	if got, want := h.Quantile(0.99), 95*time.Millisecond; got != want {
		t.Errorf("p99 = %s, want %s", got, want)
	}
	if got := h.Mean(); got != 40*time.Millisecond {
		t.Errorf("mean = %s", got)
	}
}

func TestHistogramSub(t *testing.T) {
	before, err := ParseHistogram(strings.NewReader(exposition), "containerd_cri_sandbox_create_network_seconds")
	if err != nil {
		t.Fatal(err)
	}
	after := before
	after.Counts = []float64{0, 0, 10, 90, 150, 150}
	after.Sum = 9
	d, err := after.Sub(before)
	if err != nil {
		t.Fatal(err)
	}
	if d.Count() != 50 || d.Sum != 5 {
		t.Fatalf("difference %+v", d)
	}
	// Every new observation is in (0.05, 0.1].
	if got := d.Quantile(0.5); got != 75*time.Millisecond {
		t.Errorf("p50 of the difference = %s", got)
	}
	if _, err := before.Sub(after); err == nil {
		t.Error("a histogram that went backwards was accepted")
	}
}

func TestParseHistogramErrors(t *testing.T) {
	for name, text := range map[string]string{
		"missing":      "other_bucket{le=\"+Inf\"} 1\n",
		"no +Inf":      "h_bucket{le=\"0.1\"} 1\n",
		"labels":       "h_bucket{op=\"x\",le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 1\n",
		"bad count":    "h_bucket{le=\"+Inf\"} x\n",
		"bad bound":    "h_bucket{le=\"y\"} 1\n",
		"no brace end": "h_bucket{le=\"+Inf\"\n",
	} {
		if _, err := ParseHistogram(strings.NewReader(text), "h"); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
