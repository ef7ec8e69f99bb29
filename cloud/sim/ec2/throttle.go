package ec2

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Bucket is the size and refill rate (tokens per second) of a token bucket.
type Bucket struct {
	Size   int     `json:"size"`
	Refill float64 `json:"refill"`
}

// Throttle configures EC2's request-rate limits: every action has its own
// token bucket per account, sized by its class unless Actions names it.
type Throttle struct {
	// Describe is the bucket of each Describe* action (default 100 + 20/s).
	Describe Bucket
	// Mutate is the bucket of each ENI and IP mutation and of CreateTags
	// (default 100 + 5/s, issue 14's figures).
	Mutate Bucket
	// Actions overrides the bucket of single actions.
	Actions map[string]Bucket
}

func (t Throttle) withDefaults() Throttle {
	if t.Describe == (Bucket{}) {
		t.Describe = Bucket{Size: 100, Refill: 20}
	}
	if t.Mutate == (Bucket{}) {
		t.Mutate = Bucket{Size: 100, Refill: 5}
	}
	return t
}

func (t Throttle) validate() error {
	var errs []error
	check := func(name string, b Bucket) {
		if b.Size < 1 || b.Refill < 0 {
			errs = append(errs, fmt.Errorf("throttle bucket %s: size must be at least 1 and refill not negative", name))
		}
	}
	check("describe", t.Describe)
	check("mutate", t.Mutate)
	for a, b := range t.Actions {
		check(a, b)
	}
	return errors.Join(errs...)
}

// bucketFor is the bucket configuration of action.
func (t Throttle) bucketFor(action string) Bucket {
	if b, ok := t.Actions[action]; ok {
		return b
	}
	if actions[action].describe {
		return t.Describe
	}
	return t.Mutate
}

// bucket is a token bucket.
type bucket struct {
	size, refill, tokens float64
	last                 time.Time
}

// take removes one token, or reports how long until one is available.
func (b *bucket) take(now time.Time) (ok bool, wait time.Duration) {
	if now.After(b.last) {
		b.tokens = math.Min(b.size, b.tokens+now.Sub(b.last).Seconds()*b.refill)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	if b.refill <= 0 {
		return false, time.Hour
	}
	return false, time.Duration((1 - b.tokens) / b.refill * float64(time.Second))
}

// limiter holds one bucket per action.
type limiter struct {
	cfg Throttle

	mu      sync.Mutex
	buckets map[string]*bucket
}

func newLimiter(cfg Throttle) *limiter {
	return &limiter{cfg: cfg, buckets: map[string]*bucket{}}
}

func (l *limiter) take(action string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[action]
	if b == nil {
		c := l.cfg.bucketFor(action)
		b = &bucket{size: float64(c.Size), refill: c.Refill, tokens: float64(c.Size), last: now}
		l.buckets[action] = b
	}
	return b.take(now)
}
