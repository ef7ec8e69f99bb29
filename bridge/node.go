// Package bridge is the Linux datapath of vnet-cni's bridge mode: the azure0
// bridge that takes over the node's NIC, the pod veths, and the nftables
// tables that make pod traffic acceptable to the cloud fabric (MAC and ARP
// handling) and masquerade pod traffic leaving the virtual network.
//
// Every operation works on one node network namespace through a Node, opened
// from the namespace's path ("" is the caller's own namespace). Netlink and
// nftables sockets are bound to that namespace, so no goroutine ever changes
// namespace except to read or write a sysctl. Mutations that must not
// interleave between plugin processes (taking over the NIC, rewriting the
// nftables tables, changing set elements) hold an exclusive flock on a file
// under the lock directory.
package bridge

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

// Options tune how a Node is opened.
type Options struct {
	// LockDir holds the lock files serialising plugin processes; default
	// DefaultLockDir.
	LockDir string
}

// Node is the datapath of one node network namespace. A Node is not safe
// for concurrent use (its sockets are shared); goroutines that need
// parallelism open one Node each, and their changes are then serialised by
// the file lock exactly like those of separate plugin processes.
type Node struct {
	nsPath  string // "" for the caller's namespace
	handle  netns.NsHandle
	nl      *netlink.Handle
	nft     *nftables.Conn
	lockDir string
	lockKey string // identifies the namespace in the lock file name
}

// Open binds a Node to the network namespace at nsPath, or to the calling
// thread's namespace when nsPath is empty. Close releases it.
func Open(nsPath string, opts Options) (*Node, error) {
	h, err := openNodeNS(nsPath)
	if err != nil {
		return nil, err
	}
	n := &Node{nsPath: nsPath, handle: h, lockDir: opts.LockDir}
	if n.lockDir == "" {
		n.lockDir = DefaultLockDir
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return nil, errors.Join(fmt.Errorf("stat node netns: %w", err), n.Close())
	}
	n.lockKey = fmt.Sprintf("%d-%d", st.Dev, st.Ino)
	if n.nl, err = netlink.NewHandleAt(h); err != nil {
		return nil, errors.Join(fmt.Errorf("netlink handle in node netns: %w", err), n.Close())
	}
	if n.nft, err = nftables.New(nftables.WithNetNSFd(int(h)), nftables.AsLasting()); err != nil {
		return nil, errors.Join(fmt.Errorf("nftables connection in node netns: %w", err), n.Close())
	}
	return n, nil
}

// openNodeNS opens the namespace at nsPath, or the calling thread's when
// nsPath is empty.
func openNodeNS(nsPath string) (netns.NsHandle, error) {
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
func (n *Node) Close() error {
	var errs []error
	if n.nft != nil {
		errs = append(errs, n.nft.CloseLasting())
		n.nft = nil
	}
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	if n.handle.IsOpen() {
		errs = append(errs, n.handle.Close())
		n.handle = netns.None()
	}
	return errors.Join(errs...)
}

// lock takes the node's exclusive lock, waiting until ctx is done. Every call
// opens the lock file anew, so that two goroutines of one process exclude
// each other exactly as two processes do (flock locks belong to the open
// file description).
func (n *Node) lock(ctx context.Context) (unlock func() error, err error) {
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
func (n *Node) doInNS(fn func() error) error {
	if n.nsPath == "" {
		return fn()
	}
	target, err := ns.GetNS(n.nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.nsPath, err)
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return fn() })
}

// sysctl is one /proc/sys setting; an optional one is skipped when its key
// does not exist (its module is not loaded).
type sysctl struct {
	key, value string
	optional   bool
}

// ensureSysctls sets each /proc/sys/<key> to its value in the node
// namespace unless it already has it, with one switch into the namespace.
func (n *Node) ensureSysctls(want ...sysctl) error {
	return n.doInNS(func() error {
		for _, s := range want {
			p := filepath.Join("/proc/sys", s.key)
			cur, err := os.ReadFile(p)
			if s.optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read sysctl %s: %w", s.key, err)
			}
			if strings.TrimSpace(string(cur)) == s.value {
				continue
			}
			if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil {
				return fmt.Errorf("write sysctl %s: %w", s.key, err)
			}
		}
		return nil
	})
}

// retryDump calls fn again while a netlink dump is interrupted by a
// concurrent change.
func retryDump[T any](fn func() (T, error)) (T, error) {
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

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}
