package cluster

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// TestLockHost: while one cluster holds the host lock a second waits and
// gives up with its context; once the first is closed the second gets it.
func TestLockHost(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	path := filepath.Join(t.TempDir(), "cluster.lock")
	first, err := lockFile(context.Background(), path, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if f, err := lockFile(ctx, path, log); !errors.Is(err, context.DeadlineExceeded) {
		if f != nil {
			_ = f.Close()
		}
		t.Fatalf("a second lock while the first is held: %v, want it to wait until its deadline", err)
	}
	done := make(chan error, 1)
	go func() {
		f, err := lockFile(context.Background(), path, log)
		if err == nil {
			err = f.Close()
		}
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after the first was released: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting lock did not get the lock after the first was released")
	}
}
