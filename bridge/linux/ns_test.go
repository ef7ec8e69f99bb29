package linux

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLockExcludes takes the node lock from many goroutines, each through
// its own open of the lock file, and checks that holders never overlap and
// that a waiter gives up with its context.
func TestLockExcludes(t *testing.T) {
	// Only the lock is used: no namespace, no sockets.
	n := &NS{lockDir: t.TempDir(), lockKey: "test"}
	var active, maxActive atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 20 {
				unlock, err := n.Lock(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				a := active.Add(1)
				if a > maxActive.Load() {
					maxActive.Store(a)
				}
				time.Sleep(50 * time.Microsecond)
				active.Add(-1)
				if err := unlock(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if got := maxActive.Load(); got != 1 {
		t.Errorf("up to %d holders at once, want 1", got)
	}

	unlock, err := n.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unlock(); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := n.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("lock while held: %v, want deadline exceeded", err)
	}
}
