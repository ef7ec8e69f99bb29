// Package linux is the Linux plumbing every datapath mode of vnet-cni
// shares: a handle on a node's network namespace (netlink and nftables
// sockets bound to it, the node lock, sysctls), pod veths with the pod end
// created in place, the pod side's address and routes, the link-alias
// codec, and one reconciler for the nftables tables a mode owns, driven by
// a description of their wanted state.
//
// Netlink and nftables sockets are bound to the namespace, so no goroutine
// ever changes namespace except to read or write a sysctl. Mutations that
// must not interleave between plugin processes hold an exclusive flock on a
// file under the lock directory.
package linux

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultLockDir is where lock files live unless Options.LockDir says otherwise.
const DefaultLockDir = "/run/vnet-cni"

// NS is a handle on one node network namespace. It is not safe for
// concurrent use (its sockets are shared); goroutines that need parallelism
// open one NS each, and their changes are then serialised by the file lock
// exactly like those of separate plugin processes.
type NS struct {
	// Netlink and NFT are bound to the namespace. DiscardBatch replaces NFT.
	Netlink *netlink.Handle
	NFT     *nftables.Conn

	path    string // "" for the caller's namespace
	handle  netns.NsHandle
	lockDir string
	lockKey string // identifies the namespace in the lock file name
}

// Open binds an NS to the network namespace at nsPath, or to the calling
// thread's namespace when nsPath is empty; lockDir holds the lock files
// ("" is DefaultLockDir). Close releases it.
func Open(nsPath, lockDir string) (*NS, error) {
	h, err := OpenNS(nsPath)
	if err != nil {
		return nil, err
	}
	n := &NS{path: nsPath, handle: h, lockDir: lockDir}
	if n.lockDir == "" {
		n.lockDir = DefaultLockDir
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return nil, errors.Join(fmt.Errorf("stat node netns: %w", err), n.Close())
	}
	n.lockKey = fmt.Sprintf("%d-%d", st.Dev, st.Ino)
	if n.Netlink, err = netlinkHandle(nsPath, h); err != nil {
		return nil, errors.Join(fmt.Errorf("netlink handle in node netns: %w", err), n.Close())
	}
	if n.NFT, err = nftables.New(n.nftOptions(nftables.AsLasting())...); err != nil {
		return nil, errors.Join(fmt.Errorf("nftables connection in node netns: %w", err), n.Close())
	}
	return n, nil
}

// netlinkHandle opens a route netlink handle in the namespace at nsPath
// (h), or, for the caller's own namespace (nsPath empty), without
// switching namespaces: setns(2) needs CAP_SYS_ADMIN, which vnet-ipamd's
// container does without (docs/install.md), and the calling thread is in
// that namespace already.
func netlinkHandle(nsPath string, h netns.NsHandle) (*netlink.Handle, error) {
	if nsPath == "" {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
}

// nftOptions are the options of an nftables connection in the namespace:
// no namespace (no setns, see netlinkHandle) for the caller's own.
func (n *NS) nftOptions(opts ...nftables.ConnOption) []nftables.ConnOption {
	if n.path == "" {
		return opts
	}
	return append([]nftables.ConnOption{nftables.WithNetNSFd(int(n.handle))}, opts...)
}

// OpenNS opens the namespace at nsPath, or the calling thread's when
// nsPath is empty.
func OpenNS(nsPath string) (netns.NsHandle, error) {
	var h netns.NsHandle
	var err error
	if nsPath == "" {
		runtime.LockOSThread()
		h, err = netns.Get()
		runtime.UnlockOSThread()
	} else {
		h, err = netns.GetFromPath(nsPath)
	}
	if err != nil {
		return netns.None(), fmt.Errorf("open node netns %q: %w", nsPath, err)
	}
	return h, nil
}

// Close releases the sockets and the namespace handle.
func (n *NS) Close() error {
	var errs []error
	if n.NFT != nil {
		errs = append(errs, n.NFT.CloseLasting())
		n.NFT = nil
	}
	if n.Netlink != nil {
		n.Netlink.Close()
		n.Netlink = nil
	}
	if n.handle.IsOpen() {
		errs = append(errs, n.handle.Close())
		n.handle = netns.None()
	}
	return errors.Join(errs...)
}

// Lock takes the node's exclusive lock, waiting until ctx is done. Every call
// opens the lock file anew, so that two goroutines of one process exclude
// each other exactly as two processes do (flock locks belong to the open
// file description).
func (n *NS) Lock(ctx context.Context) (unlock func() error, err error) {
	if err := os.MkdirAll(n.lockDir, 0o700); err != nil {
		return nil, fmt.Errorf("create lock dir: %w", err)
	}
	path := filepath.Join(n.lockDir, "datapath-"+n.lockKey+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	wait := 200 * time.Microsecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return nil, errors.Join(fmt.Errorf("lock %s: %w", path, err), f.Close())
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(fmt.Errorf("lock %s: %w", path, ctx.Err()), f.Close())
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
	return func() error {
		// Closing the descriptor releases the lock.
		if err := f.Close(); err != nil {
			return fmt.Errorf("unlock %s: %w", path, err)
		}
		return nil
	}, nil
}

// doInNS runs fn on a locked thread inside the node namespace (only needed
// for /proc/sys); for the caller's own namespace it just runs fn.
func (n *NS) doInNS(fn func() error) error {
	if n.path == "" {
		return fn()
	}
	target, err := ns.GetNS(n.path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.path, err)
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return fn() })
}

// Sysctl is one /proc/sys setting; an Optional one is skipped when its Key
// does not exist (its module is not loaded).
type Sysctl struct {
	Key, Value string
	Optional   bool
}

// EnsureSysctls sets each /proc/sys/<key> to its value in the node
// namespace unless it already has it, with one switch into the namespace.
func (n *NS) EnsureSysctls(want ...Sysctl) error {
	return n.doInNS(func() error { return EnsureSysctls(want...) })
}

// EnsureSysctls sets each /proc/sys/<key> to its value in the calling
// thread's network namespace unless it already has it.
func EnsureSysctls(want ...Sysctl) error {
	for _, s := range want {
		p := filepath.Join("/proc/sys", s.Key)
		cur, err := os.ReadFile(p)
		if s.Optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", s.Key, err)
		}
		if strings.TrimSpace(string(cur)) == s.Value {
			continue
		}
		if err := os.WriteFile(p, []byte(s.Value), 0o644); err != nil {
			return fmt.Errorf("write sysctl %s: %w", s.Key, err)
		}
	}
	return nil
}

// RetryDump calls fn again while a netlink dump is interrupted by a
// concurrent change.
func RetryDump[T any](fn func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		v, err = fn()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// IsNotFound reports whether err says a link, address or object does not exist.
func IsNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// DiscardBatch drops the queued nftables messages by replacing the
// connection (the library has no way to abort a batch).
func (n *NS) DiscardBatch() error {
	old := n.NFT
	c, err := nftables.New(n.nftOptions(nftables.AsLasting())...)
	if err != nil {
		return fmt.Errorf("recreate nftables connection: %w", err)
	}
	n.NFT = c
	return old.CloseLasting()
}
