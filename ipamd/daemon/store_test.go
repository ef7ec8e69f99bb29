package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// TestStoreUnwritable runs the daemon on a store whose tmpfs fills up: a
// change that finds no space is answered NotReady (the plugin's "try again
// later", or a spooled DEL), never an internal error, and is not made; the
// daemon is not ready, refuses allocations and leaves the cloud alone; once
// space is back it is ready again by itself and the change goes through.
func TestStoreUnwritable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=2m"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	h := newHarness(t, sim.Options{}, Options{Targets: targets(3, 0, 10, 3, time.Hour), StoreProbeInterval: 50 * time.Millisecond})
	h.stop()
	h.start(dir)
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("a")
	if err != nil {
		t.Fatal(err)
	}

	ballast := filepath.Join(dir, "ballast")
	f, err := os.Create(ballast)
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{1}, 64<<10)
	for n := len(buf); n > 0; {
		if _, err := f.Write(buf[:n]); err != nil {
			n /= 2
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Use up the journal's reserve behind the daemon's back.
	churn := store.Owner{ContainerID: "churn", IfName: "eth0"}
	for i := 0; ; i++ {
		var err error
		if i%2 == 0 {
			_, err = h.st.Assign(churn)
		} else {
			_, _, err = h.st.Release(churn.Attachment())
		}
		if errors.Is(err, store.ErrUnwritable) {
			break
		}
		if err != nil || i > 10000 {
			t.Fatalf("change %d: %v", i, err)
		}
	}

	_, err = h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "a", IfName: "eth0"})
	if !api.IsNotReady(err) {
		t.Errorf("release with the store's disk full: %v, want NotReady", err)
	}
	if r, ok := h.st.Get(store.Attachment{ContainerID: "a", IfName: "eth0"}); !ok || r.State != store.StateAssigned || r.IP != a.IP {
		t.Errorf("the refused release changed a's record: %+v", r)
	}
	st := h.waitFor("not ready", 5*time.Second, func(s api.StatusResponse) bool { return !s.Ready })
	if !strings.Contains(st.Reason, "store cannot write") {
		t.Errorf("not-ready reason %q does not name the store", st.Reason)
	}
	// The churn above made the pool short, and the worker may have begun
	// a refill before the disk filled up: let it end, then count.
	time.Sleep(300 * time.Millisecond)
	puts := h.puts()
	if _, err := h.allocate("b"); !api.IsNotReady(err) {
		t.Errorf("allocate with the store's disk full: %v, want NotReady", err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := h.puts(); got != puts {
		t.Errorf("%d NIC updates while the store could not record them", got-puts)
	}

	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	h.waitFor("ready again", 5*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: "a", IfName: "eth0"}); err != nil {
		t.Errorf("release after space returned: %v", err)
	}
	if _, err := h.allocate("b"); err != nil {
		t.Errorf("allocate after space returned: %v", err)
	}
}
