// Package nstest holds the testing.TB side of kernel tests that build
// topologies in named network namespaces: root detection, unique name
// prefixes, namespaces removed at the end of the test, endpoints closed at
// the end of the test, netlink handles. It imports testing, so only _test.go
// files import it (a lint rule keeps it so); what the harness, the demo, the
// benchmark and the soak need lives in package nsnet.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// Prefix returns a short prefix unique to this run, "t" and 6 hex digits,
// usable in namespace and link names.
func Prefix(t testing.TB) string {
	t.Helper()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random prefix: %v", err)
	}
	return "t" + hex.EncodeToString(b[:])
}

// NewNS creates the named network namespace /run/netns/name and returns its
// path; it is removed when the test ends.
func NewNS(t testing.TB, name string) string {
	t.Helper()
	if err := nsnet.CreateNamed(name); err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := nsnet.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return filepath.Join(nsnet.NSDir, name)
}

// ListenTCP is nsnet.ListenTCP with the listener closed when the test ends.
func ListenTCP(t testing.TB, nsPath string, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	bound, stop, err := nsnet.ListenTCP(nsPath, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return bound
}

// ListenUDP is nsnet.ListenUDP with the socket closed when the test ends.
func ListenUDP(t testing.TB, nsPath string, addr netip.AddrPort) <-chan netip.AddrPort {
	t.Helper()
	received, stop, err := nsnet.ListenUDP(nsPath, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return received
}

// Netlink returns a netlink handle bound to the namespace at nsPath, closed
// when the test ends.
func Netlink(t testing.TB, nsPath string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatalf("open netns %s: %v", nsPath, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink in %s: %v", nsPath, err)
	}
	t.Cleanup(nl.Close)
	return nl
}
