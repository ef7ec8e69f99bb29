package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// hostLockPath serialises the clusters of this host: two clusters share the
// host's mount points (/var/lib/containerd, /var/lib/kubelet, …, made and
// removed by whichever needs them) and its sysctls, so one run's Close
// could remove what another run's node still uses.
const hostLockPath = "/run/vnet-cni-k8s/cluster.lock"

// lockHost waits until no other cluster runs on the host (any process), or
// ctx is done, and returns the lock's file; closing it releases the lock
// (as the process's end does, also after a kill -9).
func lockHost(ctx context.Context, log *slog.Logger) (*os.File, error) {
	return lockFile(ctx, hostLockPath, log)
}

// lockFile takes an exclusive flock on path, waiting for it until ctx is
// done.
func lockFile(ctx context.Context, path string, log *slog.Logger) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	waited := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("host lock %s: %w", path, err)
		}
		if !waited {
			log.Info("another cluster runs on this host; waiting for it", "lock", path)
			waited = true
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for another cluster on this host (%s): %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
