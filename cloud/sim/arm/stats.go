package arm

import (
	"strconv"
	"sync"
)

// Stats counts the ARM requests that reached the API, throttled and failed
// ones included.
type Stats struct {
	// Calls counts requests by operationId and HTTP status, e.g.
	// {"NetworkInterfaces_CreateOrUpdate":{"201":3,"429":12}}.
	Calls map[string]map[string]int `json:"calls"`
	// Total is the number of requests.
	Total int `json:"total"`
	// Throttled is the number of 429 answers, whatever their cause.
	Throttled int `json:"throttled"`
	// Errors is the number of answers with a status of 400 or more.
	Errors int `json:"errors"`
}

// counters is the concurrency-safe store behind Stats.
type counters struct {
	mu sync.Mutex
	s  Stats
}

func (c *counters) add(op string, status int) {
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
	if status == 429 {
		c.s.Throttled++
	}
	if status >= 400 {
		c.s.Errors++
	}
}

// snapshot returns a deep copy.
func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.s
	out.Calls = make(map[string]map[string]int, len(c.s.Calls))
	for op, byStatus := range c.s.Calls {
		m := make(map[string]int, len(byStatus))
		for k, v := range byStatus {
			m[k] = v
		}
		out.Calls[op] = m
	}
	return out
}

func (c *counters) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s = Stats{}
}
