package bench

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		name string
		in   []time.Duration
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"one", []time.Duration{3 * time.Millisecond}, Summary{N: 1, P50: 3, P90: 3, P99: 3, Max: 3, Mean: 3}},
		{"hundred", d, Summary{N: 100, P50: 50, P90: 90, P99: 99, Max: 100, Mean: 50.5}},
		{"two", []time.Duration{2 * time.Millisecond, time.Millisecond}, Summary{N: 2, P50: 1, P90: 2, P99: 2, Max: 2, Mean: 1.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParsePluginLog(t *testing.T) {
	log := `{"time":"x","level":"INFO","msg":"cni ADD","verb":"ADD","durationMs":4.25,"containerID":"a","ifName":"eth0","result":"ok"}
not json
{"level":"INFO","msg":"cni DEL","verb":"DEL","durationMs":2.5,"containerID":"a","ifName":"eth0","result":"ok"}
`
	got := parsePluginLog([]byte(log))
	if len(got) != 2 || got[callKey{"ADD", "a"}] != 4250*time.Microsecond || got[callKey{"DEL", "a"}] != 2500*time.Microsecond {
		t.Errorf("parsePluginLog = %v", got)
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP x
vnetcni_ipamd_allocations_total{result="ok"} 250
vnetcni_ipamd_allocate_duration_seconds_bucket{le="0.05"} 249
vnetcni_ipamd_allocate_duration_seconds_count 250
`
	if v := metricValue(text, `vnetcni_ipamd_allocations_total{result="ok"}`); v != 250 {
		t.Errorf("ok = %v", v)
	}
	if v := metricValue(text, `vnetcni_ipamd_allocate_duration_seconds_bucket{le="0.05"}`); v != 249 {
		t.Errorf("bucket = %v", v)
	}
	if v := metricValue(text, `missing`); v != 0 {
		t.Errorf("missing = %v", v)
	}
}
