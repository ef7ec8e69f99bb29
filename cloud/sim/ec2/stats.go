package ec2

import (
	"strconv"
	"sync"
)

// Stats counts the EC2 requests that reached the server, refused and
// throttled ones included.
type Stats struct {
	// Calls counts requests by action and HTTP status, e.g.
	// {"AssignPrivateIpAddresses":{"200":3,"503":12}}.
	Calls map[string]map[string]int `json:"calls"`
	// Total is the number of requests.
	Total int `json:"total"`
	// Throttled is the number of RequestLimitExceeded answers, whatever
	// their cause (bucket or storm).
	Throttled int `json:"throttled"`
	// Errors is the number of answers with a status of 400 or more.
	Errors int `json:"errors"`
}

type counters struct {
	mu sync.Mutex
	s  Stats
}

func (c *counters) add(action string, status int, throttled bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.Calls == nil {
		c.s.Calls = map[string]map[string]int{}
	}
	byStatus := c.s.Calls[action]
	if byStatus == nil {
		byStatus = map[string]int{}
		c.s.Calls[action] = byStatus
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

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.s
	out.Calls = make(map[string]map[string]int, len(c.s.Calls))
	for a, byStatus := range c.s.Calls {
		m := make(map[string]int, len(byStatus))
		for k, v := range byStatus {
			m[k] = v
		}
		out.Calls[a] = m
	}
	return out
}

func (c *counters) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s = Stats{}
}
