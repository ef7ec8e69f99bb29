package nstest

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

func TestPrefix(t *testing.T) {
	a, b := Prefix(t), Prefix(t)
	if !regexp.MustCompile(`^t[0-9a-f]{6}$`).MatchString(a) {
		t.Errorf("Prefix() = %q, want t and 6 hex digits", a)
	}
	if a == b {
		t.Errorf("two prefixes are equal: %q", a)
	}
}

func TestEndpointsInNamespace(t *testing.T) {
	RequireRoot(t)
	name := Prefix(t) + "-a"
	var path string
	t.Run("create", func(t *testing.T) { path = NewNS(t, name) })
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("namespace %s still there after its test ended: %v", path, err)
	}

	path = NewNS(t, name)
	lo := netip.MustParseAddr("127.0.0.1")
	other := NewNS(t, Prefix(t)+"-b")
	for _, p := range []string{path, other} {
		if err := setLoUp(p); err != nil {
			t.Fatal(err)
		}
	}
	ap := ListenTCP(t, path, netip.AddrPortFrom(lo, 0))
	line, err := nsnet.DialTCP(t.Context(), path, lo, ap, time.Second)
	if err != nil {
		t.Fatalf("DialTCP: %v", err)
	}
	if want := filepath.Base(path) + " " + ap.String(); line != want {
		t.Errorf("answer = %q, want %q", line, want)
	}
	// The listener lives in its namespace only.
	if _, err := nsnet.DialTCP(t.Context(), other, lo, ap, 300*time.Millisecond); err == nil {
		t.Error("listener reachable from another namespace")
	}

	udp := netip.AddrPortFrom(lo, 5353)
	got := ListenUDP(t, path, udp)
	if !nsnet.UDPReaches(path, lo, udp, got, time.Second) {
		t.Error("datagram did not arrive")
	}
	if err := nsnet.Do(path, func() error { return nil }); err != nil || !strings.HasPrefix(path, nsnet.NSDir) {
		t.Errorf("Do: %v, path %s", err, path)
	}
}

// setLoUp brings lo up in the namespace at nsPath.
func setLoUp(nsPath string) error {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}
