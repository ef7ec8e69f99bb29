package arm

import (
	"math"
	"sync"
	"time"
)

// requestClass is the throttling class of a request: ARM keeps separate
// per-subscription budgets for reads, writes and deletes.
type requestClass int

const (
	classRead requestClass = iota
	classWrite
	classDelete
)

// headerName is the x-ms-ratelimit-remaining header of the class.
func (c requestClass) headerName() string {
	switch c {
	case classWrite:
		return "x-ms-ratelimit-remaining-subscription-writes"
	case classDelete:
		return "x-ms-ratelimit-remaining-subscription-deletes"
	default:
		return "x-ms-ratelimit-remaining-subscription-reads"
	}
}

func (c requestClass) String() string {
	switch c {
	case classWrite:
		return "write"
	case classDelete:
		return "delete"
	default:
		return "read"
	}
}

// bucket is a token bucket.
type bucket struct {
	size   float64
	refill float64 // tokens per second
	tokens float64
	last   time.Time
}

func newBucket(size int, refill float64, now time.Time) *bucket {
	return &bucket{size: float64(size), refill: refill, tokens: float64(size), last: now}
}

// take removes one token. It returns the tokens left, or, when the bucket
// is empty, false and how long until a token is available.
func (b *bucket) take(now time.Time) (remaining int, ok bool, wait time.Duration) {
	if now.After(b.last) {
		b.tokens = math.Min(b.size, b.tokens+now.Sub(b.last).Seconds()*b.refill)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return int(b.tokens), true, 0
	}
	if b.refill <= 0 {
		return 0, false, time.Hour
	}
	return 0, false, time.Duration((1 - b.tokens) / b.refill * float64(time.Second))
}

// limiter holds the buckets of every subscription.
type limiter struct {
	cfg Throttle

	mu      sync.Mutex
	buckets map[string]*[3]*bucket // by lower-case subscription id
}

func newLimiter(cfg Throttle) *limiter {
	return &limiter{cfg: cfg, buckets: map[string]*[3]*bucket{}}
}

func (l *limiter) take(sub string, c requestClass, now time.Time) (remaining int, ok bool, wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	bs := l.buckets[sub]
	if bs == nil {
		bs = &[3]*bucket{
			classRead:   newBucket(l.cfg.ReadBucket, l.cfg.ReadRefill, now),
			classWrite:  newBucket(l.cfg.WriteBucket, l.cfg.WriteRefill, now),
			classDelete: newBucket(l.cfg.DeleteBucket, l.cfg.DeleteRefill, now),
		}
		l.buckets[sub] = bs
	}
	return bs[c].take(now)
}
