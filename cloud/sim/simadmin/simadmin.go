// Package simadmin is what the simulator's control planes (ARM, EC2) share
// for their operators and tests: request counters and the plain-HTTP admin
// endpoints that read them and set the injected faults.
package simadmin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Stats counts the requests that reached an API, refused, throttled and
// failed ones included.
type Stats struct {
	// Calls counts requests by operation (ARM's operationId, EC2's action)
	// and HTTP status, e.g. {"NetworkInterfaces_CreateOrUpdate":{"201":3,"429":12}}.
	Calls map[string]map[string]int `json:"calls"`
	// Total is the number of requests.
	Total int `json:"total"`
	// Throttled is the number of throttling answers (ARM's 429, EC2's
	// RequestLimitExceeded), whatever their cause.
	Throttled int `json:"throttled"`
	// Errors is the number of answers with a status of 400 or more.
	Errors int `json:"errors"`
}

// Counters is the concurrency-safe store behind Stats. The zero value is
// ready to use.
type Counters struct {
	mu sync.Mutex
	s  Stats
}

// Add counts one answer.
func (c *Counters) Add(op string, status int, throttled bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.Calls == nil {
		c.s.Calls = map[string]map[string]int{}
	}
	byStatus := c.s.Calls[op]
	if byStatus == nil {
		byStatus = map[string]int{}
		c.s.Calls[op] = byStatus
	}
	byStatus[strconv.Itoa(status)]++
	c.s.Total++
	if throttled {
		c.s.Throttled++
	}
	if status >= 400 {
		c.s.Errors++
	}
}

// Snapshot returns a deep copy.
func (c *Counters) Snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.s
	out.Calls = make(map[string]map[string]int, len(c.s.Calls))
	for op, byStatus := range c.s.Calls {
		out.Calls[op] = maps.Clone(byStatus)
	}
	return out
}

// Reset zeroes the counters.
func (c *Counters) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s = Stats{}
}

// Control is what the admin endpoints act on; F is the control plane's
// type of faults.
type Control[F any] struct {
	// Name names the control plane in the log ("arm", "ec2").
	Name     string
	Log      *slog.Logger
	Counters *Counters
	// Faults returns the active faults; SetFaults replaces them (the zero
	// F removes them all); Validate checks faults before they are set.
	Faults    func() F
	SetFaults func(F)
	Validate  func(F) error
}

// Handler serves the control endpoints, meant for plain HTTP on loopback:
//
//	GET  /stats         the request counters (Stats)
//	POST /stats/reset   zero the counters
//	GET  /faults        the active faults
//	PUT  /faults        replace the faults; answers the stored faults
//	POST /faults/reset  remove all faults
func Handler[F any](c Control[F]) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, c.Counters.Snapshot())
	})
	mux.HandleFunc("POST /stats/reset", func(w http.ResponseWriter, _ *http.Request) {
		c.Counters.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, c.Faults())
	})
	mux.HandleFunc("PUT /faults", func(w http.ResponseWriter, r *http.Request) {
		var f F
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			http.Error(w, "decode faults: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := c.Validate(f); err != nil {
			http.Error(w, "invalid faults: "+err.Error(), http.StatusBadRequest)
			return
		}
		c.SetFaults(f)
		c.Log.Info(c.Name+" faults set", "faults", f)
		writeJSON(w, http.StatusOK, c.Faults())
	})
	mux.HandleFunc("POST /faults/reset", func(w http.ResponseWriter, _ *http.Request) {
		var zero F
		c.SetFaults(zero)
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "marshal response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// Duration is a time.Duration that is a Go duration string in JSON
// ("250ms"), as the faults documents write latencies and storms.
type Duration time.Duration

// MarshalJSON writes the duration as a string like "1.5s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts a duration string like "250ms".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"250ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("parse duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

// StatusClientClosed is counted when the client went away before an
// answer (during injected latency).
const StatusClientClosed = 499

// StatusRecorder remembers the status written, for the counters.
type StatusRecorder struct {
	http.ResponseWriter
	// Status is the first status written, 0 before any.
	Status int
	// Throttled is set by the control plane when it answers a throttle.
	Throttled bool
}

// WriteHeader records the first status.
func (r *StatusRecorder) WriteHeader(code int) {
	if r.Status == 0 {
		r.Status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records 200 when nothing was written before.
func (r *StatusRecorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}
