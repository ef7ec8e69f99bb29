package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// fillDisk writes a ballast file in dir until its filesystem is full and
// returns the file's path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "ballast")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = 0xa5
	}
	for size := len(buf); size > 0; {
		if _, err := f.Write(buf[:size]); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("ballast: %v", err)
			}
			size /= 2
		}
	}
	return path
}

// metricsGet returns the status code and body of path on the daemon's
// metrics listener, asked from inside the node (it is on the node's
// loopback).
func metricsGet(t *testing.T, n *cluster.Node, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsnet.DialContextIn(n.NSPath)}}
	resp, err := client.Get("http://" + n.Config.MetricsAddr.String() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestStoreDiskFull fills the filesystem under vnet-ipamd's store (a small
// tmpfs mounted for the test) while pods run, through the real daemon and
// plugin: while the store cannot write, the daemon is not ready (STATUS 50
// naming the store, /healthz 503), ADD fails with error 11 and DEL still
// succeeds; once space is back the same process is ready again, ADD and DEL
// work, and the store holds every acknowledged change and no torn record.
func TestStoreDiskFull(t *testing.T) {
	ctx := context.Background()
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) {
		// A released address is reusable at once: the test's own churn
		// never waits for a cooldown.
		c.Cooldown = 0
	})
	n := e.c.Nodes[0]
	storeDir := n.Config.StoreDir
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", storeDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=2m"); err != nil {
		t.Fatalf("mount a tmpfs on the store: %v", err)
	}
	t.Cleanup(func() {
		if err := n.StopIPAMD(syscall.SIGTERM); err != nil {
			t.Error(err)
		}
		if err := unix.Unmount(storeDir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", storeDir, err)
		}
	})
	e.start(t)
	pid := n.PID()
	running := e2eAddPod(t, n, "running")

	ballast := fillDisk(t, storeDir)
	t.Logf("filled the store's tmpfs (ballast %s)", ballast)

	// Changes through the socket (an attachment taking and releasing its
	// address: one journal record each) until the daemon says it cannot
	// write. ackedIP is the attachment's last acknowledged state. At this
	// pace the daemon's probe (every second) sees the journal's reserve run
	// low and the daemon goes not ready before a change finds no space;
	// a change that does is refused as NotReady too (ipamd/daemon's
	// TestStoreUnwritable covers that path).
	client := n.Client()
	churn := api.ReleaseRequest{ContainerID: "diskfull-churn", IfName: "eth0"}
	var ackedIP string // "" = released (or never assigned)
	var refused error
	calls := 0
	for ; calls < 4000; calls++ {
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if !st.Ready {
			break
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if calls%2 == 0 {
			var resp api.AllocateResponse
			resp, err = client.Allocate(cctx, api.AllocateRequest{ContainerID: churn.ContainerID, IfName: churn.IfName})
			if err == nil {
				ackedIP = resp.Assignment.IP.String()
			}
		} else {
			_, err = client.Release(cctx, churn)
			if err == nil {
				ackedIP = ""
			}
		}
		cancel()
		if err != nil {
			refused = err
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Logf("%d changes before the daemon went not ready (a change refused: %v)", calls, refused)
	if refused != nil && !api.IsNotReady(refused) && !api.IsTryAgain(refused) {
		t.Errorf("a change on a full disk failed with %v, want NotReady or TryAgain (retry later)", refused)
	}

	// Not ready, and saying why, everywhere the node's readiness is read.
	var st api.StatusResponse
	if err := nsnet.Eventually(10*time.Second, func() error {
		var err error
		if st, err = n.Status(ctx); err != nil {
			return err
		}
		if st.Ready {
			return errors.New("status still says ready")
		}
		return nil
	}); err != nil {
		t.Errorf("with the store's disk full: %v", err)
	}
	t.Logf("status: ready=%v reason=%q", st.Ready, st.Reason)
	if !strings.Contains(st.Reason, "store") {
		t.Errorf("not-ready reason %q does not name the store", st.Reason)
	}
	if code, body := metricsGet(t, n, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz with the store's disk full: %d %q, want 503", code, body)
	}
	_, metrics := metricsGet(t, n, "/metrics")
	if v := metricValue(t, metrics, "vnetcni_ipamd_store_writable"); v != 0 {
		t.Errorf("store_writable = %v with the store's disk full", v)
	}
	if v := metricValue(t, metrics, "vnetcni_ipamd_ready"); v != 0 {
		t.Errorf("ready = %v with the store's disk full", v)
	}
	if err := n.PluginStatus(ctx); e2eCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "store") {
		t.Errorf("plugin STATUS with the store's disk full: %v, want error 50 naming the store", err)
	}
	refusedPod, err := n.NewPod("default", "refused")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Add(ctx, refusedPod); e2eCode(err) != types.ErrTryAgainLater {
		t.Errorf("ADD with the store's disk full: %v, want error 11", err)
	}
	if left := e2eLeftovers(t, refusedPod); len(left) > 0 {
		t.Errorf("the refused ADD left %v", left)
	}
	if a := assignment(t, n, refusedPod.ContainerID, "eth0"); a != nil {
		t.Errorf("the refused ADD holds %s", a.IP)
	}
	if err := n.Del(ctx, running); err != nil {
		t.Errorf("DEL with the store's disk full: %v", err)
	}

	// Space is back: ready again by itself, the same process.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	if err := n.WaitReady(ctx); err != nil {
		t.Fatalf("after space returned: %v", err)
	}
	t.Logf("ready %s after the ballast was removed", time.Since(freed).Round(time.Millisecond))
	if got := n.PID(); got != pid {
		t.Errorf("vnet-ipamd was restarted (pid %d, then %d)", pid, got)
	}
	if code, body := metricsGet(t, n, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after space returned: %d %q", code, body)
	}
	if err := n.PluginStatus(ctx); err != nil {
		t.Errorf("plugin STATUS after space returned: %v", err)
	}
	_, metrics = metricsGet(t, n, "/metrics")
	if v := metricValue(t, metrics, "vnetcni_ipamd_store_writable"); v != 1 {
		t.Errorf("store_writable = %v after space returned", v)
	}
	if v := metricValue(t, metrics, "vnetcni_ipamd_store_unwritable_total"); v != 1 {
		t.Errorf("store_unwritable_total = %v, want 1", v)
	}
	after := e2eAddPod(t, n, "after")
	if err := n.Check(ctx, after); err != nil {
		t.Errorf("CHECK after space returned: %v", err)
	}
	if err := n.Del(ctx, refusedPod); err != nil {
		t.Errorf("DEL of the refused pod: %v", err)
	}
	if a := assignment(t, n, running.ContainerID, "eth0"); a != nil {
		t.Errorf("the pod deleted while the disk was full still holds %s", a.IP)
	}

	// Every acknowledged change is in the store, on disk too: a kill -9
	// and a fresh open find them and no half-written record.
	churnState := func(addrs []api.AddressRecord) string {
		for _, r := range addrs {
			if r.ContainerID == churn.ContainerID && r.State == "assigned" {
				return r.IP.String()
			}
		}
		return ""
	}
	// The worker may still promote or refill: wait until the list holds still.
	var listed []api.AddressRecord
	if err := nsnet.Eventually(10*time.Second, func() error {
		a := addresses(t, n)
		time.Sleep(300 * time.Millisecond)
		if b := addresses(t, n); !cmp.Equal(a, b, cmpopts.EquateComparable(netip.Addr{})) {
			return errors.New("the daemon's addresses keep changing")
		}
		listed = a
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := churnState(listed); got != ackedIP {
		t.Errorf("the churned attachment holds %q, its last acknowledged change says %q", got, ackedIP)
	}
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(storeDir, store.Options{})
	if err != nil {
		t.Fatalf("open the store after kill -9: %v", err)
	}
	defer s.Close()
	if rec := s.Stats().Recovery; rec.TruncatedBytes != 0 {
		t.Errorf("the journal ends in %d bytes of a half-written record", rec.TruncatedBytes)
	}
	want := map[string]string{}
	for _, r := range listed {
		want[r.IP.String()] = r.State + " " + r.ContainerID + "/" + r.IfName
	}
	got := map[string]string{}
	for _, r := range s.List() {
		o := r.Owner
		id := "/"
		if o.ContainerID != "" {
			id = fmt.Sprintf("%s/%s", o.ContainerID, o.IfName)
		}
		got[r.IP.String()] = string(r.State) + " " + id
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("the store on disk after kill -9 differs from what the daemon listed (-listed +on disk):\n%s", d)
	}
}
