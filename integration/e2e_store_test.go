package integration

// Store damage with live pods: the daemon is killed, its journal is damaged
// (or its store directory deleted), and it is started again. Whatever was
// lost, no address a live pod holds is handed out again, and the live pods
// keep their connectivity.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// journalFrame is one record of a store journal as it lies in the file.
type journalFrame struct {
	off, size int
	op        string
}

// journalFrames lists the records of a journal (magic, length, CRC-32C,
// JSON payload; see ipamd/store/journal.go), up to the zero fill.
func journalFrames(t *testing.T, data []byte) []journalFrame {
	t.Helper()
	var out []journalFrame
	for off := 0; off+12 <= len(data) && data[off+1] == 'v'; {
		n := int(binary.LittleEndian.Uint32(data[off+4 : off+8]))
		payload := data[off+12 : off+12+n]
		var op string
		if i := strings.Index(string(payload), `"op":"`); i >= 0 {
			rest := string(payload[i+6:])
			op = rest[:strings.IndexByte(rest, '"')]
		}
		out = append(out, journalFrame{off: off, size: 12 + n, op: op})
		off += 12 + n
	}
	return out
}

// storeDamage is one way a store is damaged while its daemon is down.
type storeDamage struct {
	name string
	// damage changes the journal (data, with its records) or the directory.
	damage func(t *testing.T, dir string, data []byte, frames []journalFrame)
	// reason is the recovery's: "damaged" when the store itself finds the
	// damage, "lost" when it opens empty and the pods' veths show that it
	// held addresses in this boot; empty when either is right.
	reason string
}

func writeJournal(t *testing.T, dir string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "journal"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// lastAssign is the journal's last record, which the test requires to be
// the assignment of the last live pod.
func lastAssign(t *testing.T, frames []journalFrame) journalFrame {
	t.Helper()
	last := frames[len(frames)-1]
	if last.op != "assign" {
		t.Fatalf("the journal's last record is %q, want the last pod's assign", last.op)
	}
	return last
}

var storeDamages = []storeDamage{
	{name: "flipped byte in the last record", reason: "damaged", damage: func(t *testing.T, dir string, data []byte, frames []journalFrame) {
		last := lastAssign(t, frames)
		data[last.off+last.size/2] ^= 0x01
		writeJournal(t, dir, data)
	}},
	{name: "flipped byte in a record in the middle", reason: "damaged", damage: func(t *testing.T, dir string, data []byte, frames []journalFrame) {
		for _, f := range frames {
			if f.op == "assign" {
				data[f.off+f.size/2] ^= 0x01
				writeJournal(t, dir, data)
				return
			}
		}
		t.Fatal("no assign record in the journal")
	}},
	{name: "truncated inside the last record", reason: "damaged", damage: func(t *testing.T, dir string, data []byte, frames []journalFrame) {
		last := lastAssign(t, frames)
		writeJournal(t, dir, data[:last.off+last.size/2])
	}},
	{name: "truncated at a record boundary", reason: "damaged", damage: func(t *testing.T, dir string, data []byte, frames []journalFrame) {
		// Right after the first pod's assignment: the later ones are lost.
		for _, f := range frames {
			if f.op == "assign" {
				writeJournal(t, dir, data[:f.off+f.size])
				return
			}
		}
		t.Fatal("no assign record in the journal")
	}},
	// With the reserve vnet-ipamd keeps ahead of its records, a journal
	// that held one is longer than a journal without records can be, once
	// the daemon's probe (every second) extended it: then the store sees
	// the damage, else the witness sees the loss.
	{name: "a file of zeros", damage: func(t *testing.T, dir string, data []byte, _ []journalFrame) {
		writeJournal(t, dir, make([]byte, len(data)))
	}},
	{name: "an empty file", reason: "lost", damage: func(t *testing.T, dir string, _ []byte, _ []journalFrame) {
		writeJournal(t, dir, nil)
	}},
	{name: "random garbage", reason: "damaged", damage: func(t *testing.T, dir string, data []byte, _ []journalFrame) {
		garbage := make([]byte, len(data))
		if _, err := rand.Read(garbage); err != nil {
			t.Fatal(err)
		}
		writeJournal(t, dir, garbage)
	}},
	{name: "deleted store directory", reason: "lost", damage: func(t *testing.T, dir string, _ []byte, _ []journalFrame) {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}},
}

// TestE2EStoreDamage runs each damage case on a node with live pods: the
// daemon is SIGKILLed, the store damaged, the daemon started again. Then
// every address it hands out (through the plugin and the api, during the
// quarantine and after it) must differ from every live pod's, the live
// pods' assignments are rebuilt from their veths, they keep their
// connectivity, and the recovery is reported (log line, metric, status and
// /healthz while addresses are quarantined). One live pod was made by an
// earlier plugin (its veth records only address and MAC): its address is
// held, though the store cannot say by whom.
func TestE2EStoreDamage(t *testing.T) {
	for _, dmg := range storeDamages {
		t.Run(strings.ReplaceAll(dmg.name, " ", "_"), func(t *testing.T) { testStoreDamage(t, dmg) })
	}
}

// storeDamageGrace is the daemons' recoveryGrace in these tests.
const storeDamageGrace = 3 * time.Second

func testStoreDamage(t *testing.T, dmg storeDamage) {
	const livePods, maxIPs = 4, 14
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) {
		// The first fill covers the live pods with room to spare, so that
		// their ADDs cause no refill and the last record is an assignment.
		c.IPAddressCount = 8
		c.WarmIPTarget = 2
		c.BatchSize = 4
		c.MaxIPs = maxIPs
		c.Cooldown = config.Duration(time.Second)
		c.AllocateWait = config.Duration(time.Second)
		c.ResyncInterval = config.Duration(2 * time.Second)
		c.RecoveryGrace = config.Duration(storeDamageGrace)
	})
	e.start(t)
	n := e.c.Nodes[0]
	ctx := context.Background()

	live := map[netip.Addr]*cluster.Pod{}
	var pods []*cluster.Pod
	for i := range livePods {
		p := e2eAddPod(t, n, fmt.Sprintf("live%d", i))
		if q, dup := live[p.IP]; dup {
			t.Fatalf("%s and %s both got %s before any damage", p.Name, q.Name, p.IP)
		}
		live[p.IP] = p
		pods = append(pods, p)
	}
	// pods[0] as an earlier plugin made it.
	old := pods[0]
	nl := nstest.Netlink(t, n.NSPath)
	host, err := nl.LinkByName(linux.HostVethName(old.ContainerID, old.IfName))
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetAlias(host, linux.PodAlias(old.IP, linux.PodMAC(old.IP))); err != nil {
		t.Fatal(err)
	}

	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	dir := n.Config.StoreDir
	data, err := os.ReadFile(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	frames := journalFrames(t, data)
	if len(frames) == 0 {
		t.Fatal("the journal holds no record")
	}
	dmg.damage(t, dir, data, frames)
	logStart := logSize(t, n)
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}

	// Phase 1, as soon as the daemon serves: take every address it hands
	// out, through the plugin (real pods) and the api (as fast as it goes).
	var handed []netip.Addr
	waitServing(t, n)
	st, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready || !strings.Contains(st.Reason, "quarantined") || st.Pool.Quarantined == 0 {
		t.Errorf("status while addresses are quarantined: ready %v, reason %q, pool %+v; want not ready naming the quarantine", st.Ready, st.Reason, st.Pool)
	}
	t.Logf("status during the recovery: %s (pool %+v)", st.Reason, st.Pool)
	if code, body := healthz(t, n); code != http.StatusServiceUnavailable || !strings.Contains(body, "quarantined") {
		t.Errorf("/healthz while addresses are quarantined: %d %q", code, body)
	}
	for i := range 2 {
		p := e2eAddPod(t, n, fmt.Sprintf("new%d", i))
		handed = append(handed, p.IP)
		e2eExpect(t, "node -> "+p.Name, n.NSPath, e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80)), p.Name, e2eAddr(n.PrimaryIP))
	}
	handed = append(handed, drainPool(t, n, "during")...)

	// Phase 2: after the grace period the quarantined addresses are free.
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	handed = append(handed, drainPool(t, n, "after")...)

	seen := map[netip.Addr]bool{}
	for _, ip := range handed {
		if p, ok := live[ip]; ok {
			t.Errorf("%s of live pod %s was handed out again", ip, p.Name)
		}
		if seen[ip] {
			t.Errorf("%s handed out twice after the restart", ip)
		}
		seen[ip] = true
	}
	t.Logf("%d addresses handed out after the restart, none of the %d live pods'", len(handed), len(live))

	// The live pods' assignments are rebuilt, with their owners; the old
	// pod's address is assigned to it if the store kept that, else held.
	addrs := e2eList(t, n)
	for ip, p := range live {
		a := addrs[ip]
		if p == old && a.State == "quarantined" {
			continue
		}
		if a.State != "assigned" || a.ContainerID != p.ContainerID || a.IfName != p.IfName {
			t.Errorf("%s of live pod %s: %+v, want assigned to %s/%s", ip, p.Name, a, p.ContainerID, p.IfName)
		}
	}

	// The live pods keep their connectivity.
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	for _, p := range pods {
		dst := e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
		e2eExpect(t, "node -> "+p.Name, n.NSPath, dst, p.Name, e2eAddr(n.PrimaryIP))
		e2eExpect(t, p.Name+" -> internet", p.NSPath, internet, "internet", e2eAddr(n.PrimaryIP))
		if p == old && addrs[p.IP].State == "quarantined" {
			continue // the store cannot know its owner: CHECK finds no assignment
		}
		if err := n.Check(ctx, p); err != nil {
			t.Errorf("CHECK %s after the recovery: %v", p.Name, err)
		}
	}

	// One log line says what happened, and a metric counts it.
	var line string
	for l := range strings.Lines(logSince(t, n, logStart)) {
		if strings.Contains(l, `"msg":"recovered the address store`) {
			if line != "" {
				t.Errorf("two recovery lines:\n%s%s", line, l)
			}
			line = l
		}
	}
	var rec struct {
		Kind    string
		Rebuilt int
	}
	err = json.Unmarshal([]byte(line), &rec)
	if err != nil || rec.Kind != "damaged" && rec.Kind != "lost" || dmg.reason != "" && rec.Kind != dmg.reason || rec.Rebuilt == 0 {
		t.Errorf("recovery log line %q: %+v, %v; want kind %q with rebuilt assignments", line, rec, err, dmg.reason)
	}
	t.Logf("recovery: %s", line)
	if _, metrics := metricsGet(t, n, "/metrics"); metricValue(t, metrics, fmt.Sprintf(`vnetcni_ipamd_store_recoveries_total{reason=%q}`, rec.Kind)) != 1 {
		t.Errorf("vnetcni_ipamd_store_recoveries_total{reason=%q} is not 1", rec.Kind)
	}
	e.storeMatchesNIC(t, n)
}

// waitServing waits until the restarted daemon answers allocations (its
// first cloud sync is done), ready or not.
func waitServing(t *testing.T, n *cluster.Node) {
	t.Helper()
	if err := nsnet.Eventually(30*time.Second, func() error {
		st, err := n.Status(context.Background())
		if err != nil {
			return err
		}
		if !st.Subnet.IsValid() {
			return fmt.Errorf("not synced: %s", st.Reason)
		}
		return nil
	}); err != nil {
		t.Fatalf("vnet-ipamd never served after the restart: %v", err)
	}
}

// drainPool allocates through the api until the pool is empty at its limit
// and returns every address it got.
func drainPool(t *testing.T, n *cluster.Node, tag string) []netip.Addr {
	t.Helper()
	var got []netip.Addr
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("drain %s: the pool never ran dry (%d addresses)", tag, len(got))
		}
		id := make([]byte, 16)
		_, _ = rand.Read(id)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := n.Client().Allocate(ctx, api.AllocateRequest{ContainerID: "drain" + tag + hex.EncodeToString(id), IfName: "eth0"})
		cancel()
		if err == nil {
			got = append(got, resp.Assignment.IP)
			continue
		}
		if !api.IsTryAgain(err) {
			t.Fatalf("drain %s: allocate: %v", tag, err)
		}
		st, serr := n.Status(context.Background())
		if serr != nil {
			t.Fatal(serr)
		}
		if st.Pool.Free == 0 && st.Pool.Total >= st.Pool.Max {
			return got
		}
	}
}

func healthz(t *testing.T, n *cluster.Node) (int, string) {
	t.Helper()
	return metricsGet(t, n, "/healthz")
}

func logSize(t *testing.T, n *cluster.Node) int64 {
	t.Helper()
	fi, err := os.Stat(n.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func logSince(t *testing.T, n *cluster.Node, off int64) string {
	t.Helper()
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[off:])
}

// TestE2EStoreGoneWithTheBoot: a reboot takes the store on its tmpfs with
// the pods and their datapath. The empty store is then normal: no recovery,
// no quarantine, the NIC's addresses serve new pods at once.
func TestE2EStoreGoneWithTheBoot(t *testing.T) {
	e := newE2EEnv(t, 1, func(_ string, c *config.Config) { c.RecoveryGrace = config.Duration(time.Minute) })
	e.start(t)
	n := e.c.Nodes[0]
	ctx := context.Background()
	var old []*cluster.Pod
	for i := range 3 {
		old = append(old, e2eAddPod(t, n, fmt.Sprintf("old%d", i)))
	}
	if err := n.StopIPAMD(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, p := range old {
		if err := p.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	e2eFreshBoot(t, n, e2eAddr(e.desc.Gateway), netip.MustParsePrefix(e.desc.SubnetPrefix))
	if err := os.RemoveAll(n.Config.StoreDir); err != nil {
		t.Fatal(err)
	}
	onNIC := len(e.nicIPs(n))
	logStart := logSize(t, n)
	if err := n.StartIPAMD(); err != nil {
		t.Fatal(err)
	}
	// Ready without the minute a recovery would hold the pool back.
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pool.Quarantined != 0 || st.Pool.Free < onNIC {
		t.Errorf("pool after a fresh boot %+v, want the NIC's %d addresses free", st.Pool, onNIC)
	}
	if log := logSince(t, n, logStart); strings.Contains(log, "recover") {
		t.Errorf("a fresh boot was reported as a recovery:\n%s", log)
	}
	p := e2eAddPod(t, n, "new")
	e2eExpect(t, "node -> new", n.NSPath, e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80)), p.Name, e2eAddr(n.PrimaryIP))
}
