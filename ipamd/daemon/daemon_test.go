package daemon

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/arm"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

const token = "daemon-test-token"

// harness is a daemon for node0 of a simulated control plane, served on a
// real rpc socket, with the real Azure provider.
type harness struct {
	t   *testing.T
	sim *sim.Sim
	d   *Daemon
	st  *store.Store
	// storeDir is st's directory.
	storeDir string
	client   *api.Client
	opts     Options
	cfg      azure.Config
	// connect, when set, replaces the Azure provider of cfg.
	connect Connect
	cancel  context.CancelFunc
	done    chan struct{}
}

func newHarness(t *testing.T, simOpts sim.Options, opts Options) *harness {
	t.Helper()
	return newHarnessAs(t, simOpts, opts, nil)
}

// newHarnessAs is newHarness with the daemon's identity: tokenFor returns
// the bearer token it uses (nil: the sim's static token, which may do
// everything).
func newHarnessAs(t *testing.T, simOpts sim.Options, opts Options, tokenFor func(*sim.Sim) string) *harness {
	t.Helper()
	return newHarnessWith(t, simOpts, opts, tokenFor, nil)
}

// newHarnessConnect is newHarness whose daemon connects with what connect
// returns for the harness's Azure configuration.
func newHarnessConnect(t *testing.T, simOpts sim.Options, opts Options, connect func(azure.Config) Connect) *harness {
	t.Helper()
	return newHarnessWith(t, simOpts, opts, nil, connect)
}

func newHarnessWith(t *testing.T, simOpts sim.Options, opts Options, tokenFor func(*sim.Sim) string, connect func(azure.Config) Connect) *harness {
	t.Helper()
	simOpts.Dir = t.TempDir()
	simOpts.NoFabric = true
	simOpts.StaticToken = token
	if simOpts.Nodes == 0 {
		simOpts.Nodes = 1
	}
	simOpts.OperationDuration = 30 * time.Millisecond
	simOpts.PollInterval = 20 * time.Millisecond
	s, err := sim.Start(context.Background(), simOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	h, _ := s.IMDSHandler("node0")
	imds := httptest.NewServer(h)
	t.Cleanup(imds.Close)
	tok := token
	if tokenFor != nil {
		tok = tokenFor(s)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	cred, err := azure.NewTokenFileCredential(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	d := s.Description()
	hs := &harness{t: t, sim: s, opts: opts, cfg: azure.Config{
		ResourceManagerEndpoint: d.ARMEndpoint, Audience: d.ARMAudience, CAFile: d.CAFile,
		IMDSEndpoint: imds.URL, Credential: cred, CallTimeout: 10 * time.Second,
		PollFrequency: 20 * time.Millisecond, MaxRetries: 1,
	}}
	if connect != nil {
		hs.connect = connect(hs.cfg)
	}
	if w, ok := opts.Witness.(*fakeWitness); ok {
		w.setNIC(d.Nodes[0].MAC)
	}
	hs.start(t.TempDir())
	return hs
}

// start opens the store in dir and starts the daemon and its socket.
func (h *harness) start(storeDir string) {
	t := h.t
	st, err := store.Open(storeDir, store.Options{Salvage: true})
	if err != nil {
		t.Fatal(err)
	}
	h.st, h.storeDir = st, storeDir
	opts := h.opts
	if opts.Conflist.Path == "" {
		opts.Conflist = Conflist{Path: filepath.Join(t.TempDir(), "10-vnet-cni.conflist"), Data: []byte(`{"name":"vnet-cni"}`)}
	}
	opts.MinWriteInterval = 10 * time.Millisecond
	if opts.ResyncInterval == 0 {
		opts.ResyncInterval = 500 * time.Millisecond
	}
	h.opts = opts
	connect := h.connect
	if connect == nil {
		connect = func(ctx context.Context) (Cloud, error) { return azure.New(ctx, h.cfg) }
	}
	d, err := New(st, connect, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.d = d
	sock := filepath.Join(t.TempDir(), "ipamd.sock")
	srv, err := server.New(sock, d, server.WithAllowedUIDs(uint32(os.Getuid())))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan struct{})
	go func() { _ = srv.Serve(ctx) }()
	go func() {
		defer close(h.done)
		_ = d.Run(ctx)
	}()
	h.client = api.NewClient(sock)
	t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.cancel = nil
	_ = h.st.Close()
}

func (h *harness) puts() int {
	n := 0
	for _, c := range h.sim.ARM().Stats().Calls["NetworkInterfaces_CreateOrUpdate"] {
		n += c
	}
	return n
}

func (h *harness) status() api.StatusResponse {
	h.t.Helper()
	st, err := h.client.Status(context.Background(), api.StatusRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// waitFor polls cond for up to timeout.
func (h *harness) waitFor(what string, timeout time.Duration, cond func(api.StatusResponse) bool) api.StatusResponse {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := h.status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; status %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nicSecondaries is what the cloud API says is on node0's NIC.
func (h *harness) nicSecondaries() []netip.Addr {
	for _, n := range h.sim.ARM().Snapshot().NICs {
		if n.Name == h.sim.Description().Nodes[0].NIC {
			return n.Secondary
		}
	}
	h.t.Fatal("node0's NIC not in the snapshot")
	return nil
}

func (h *harness) allocate(id string) (api.Assignment, error) {
	resp, err := h.client.Allocate(context.Background(), api.AllocateRequest{ContainerID: id, IfName: "eth0", PodNamespace: "default", PodName: "pod-" + id})
	return resp.Assignment, err
}

func targets(warm, minIPs, maxIPs, batch int, releaseDelay time.Duration) pool.Targets {
	return pool.Targets{WarmIPTarget: warm, MinIPTarget: minIPs, MaxIPs: maxIPs, BatchSize: batch, ReleaseDelay: releaseDelay}
}

func TestFillFromEmptyInOneBatchThenReady(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(10, 0, 30, 5, time.Hour), InitialBatch: 16})
	st := h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	if st.Pool.Free != 16 {
		t.Errorf("free = %d after the first fill, want the initial batch of 16", st.Pool.Free)
	}
	if got := h.puts(); got != 1 {
		t.Errorf("the first fill took %d NIC updates, want 1", got)
	}
	if got := len(h.nicSecondaries()); got != 16 {
		t.Errorf("the cloud shows %d secondaries, want 16", got)
	}
	desc := h.sim.Description()
	if st.Gateway.String() != desc.Gateway || st.Subnet.String() != desc.SubnetPrefix || st.PrimaryIP.String() != desc.Nodes[0].PrimaryIP {
		t.Errorf("status network %s %s %s, want %s %s %s", st.Gateway, st.Subnet, st.PrimaryIP, desc.Gateway, desc.SubnetPrefix, desc.Nodes[0].PrimaryIP)
	}
	data, err := os.ReadFile(h.opts.Conflist.Path)
	if err != nil || string(data) != `{"name":"vnet-cni"}` {
		t.Errorf("conflist not written when ready: %q, %v", data, err)
	}
	// Steady state: no further writes while nothing happens.
	time.Sleep(700 * time.Millisecond)
	if got := h.puts(); got != 1 {
		t.Errorf("%d NIC updates with nothing happening, want still 1", got)
	}
}

func TestNotReadyBeforeSync(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(4, 0, 30, 4, time.Hour)})
	// The cloud refuses everything: the daemon cannot sync.
	h.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(time.Hour), RetryAfterSeconds: 1}})
	h.stop()
	h.start(t.TempDir())
	time.Sleep(300 * time.Millisecond)
	st := h.status()
	if st.Ready || st.Reason == "" {
		t.Errorf("status %+v, want not ready with a reason", st)
	}
	_, err := h.allocate("c1")
	if !api.IsNotReady(err) {
		t.Errorf("allocate before the first sync: %v, want NotReady", err)
	}
	if _, err := os.Stat(h.opts.Conflist.Path); err == nil {
		t.Error("conflist written although not ready")
	}
	h.sim.ARM().SetFaults(arm.Faults{})
	h.waitFor("ready after the storm", 15*time.Second, func(s api.StatusResponse) bool { return s.Ready })
}

func TestRefillOnDemandWithoutCloudCallsOnAllocate(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(5, 0, 40, 5, time.Hour)})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready && s.Pool.Free == 5 })
	calls := h.sim.ARM().Stats().Total
	seen := map[netip.Addr]bool{}
	for i := range 5 {
		a, err := h.allocate("c" + string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		if seen[a.IP] {
			t.Fatalf("address %s handed out twice", a.IP)
		}
		if nic := "/networkInterfaces/" + h.sim.Description().Nodes[0].NIC; !strings.HasSuffix(a.Interface, nic) {
			t.Errorf("assignment on interface %q, want node0's NIC (…%s)", a.Interface, nic)
		}
		seen[a.IP] = true
	}
	// Allocations from a warm pool made no cloud call themselves; the refill
	// they trigger is the worker's.
	st := h.waitFor("refill", 10*time.Second, func(s api.StatusResponse) bool { return s.Pool.Free >= 5 })
	if st.Pool.Assigned != 5 || st.Pool.Total != 10 {
		t.Errorf("pool %+v, want 5 assigned and 10 in all", st.Pool)
	}
	writes := h.puts()
	if writes > 3 {
		t.Errorf("%d NIC updates for a fill and one refill of 5 allocations, want at most 3 (merged)", writes)
	}
	if h.sim.ARM().Stats().Total == calls {
		t.Error("the refill made no cloud call at all")
	}
	// Idempotent: the same attachment gets the same address.
	a1, err := h.allocate("ca")
	if err != nil || !seen[a1.IP] {
		t.Errorf("repeated allocate gave %s (%v), want the address it had", a1.IP, err)
	}
}

func TestReleaseOfExcessAfterCooldownAndDelay(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{
		Targets:  targets(2, 0, 40, 2, 300*time.Millisecond),
		Cooldown: 200 * time.Millisecond,
	})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	var ids []string
	for i := range 10 {
		id := "p" + string(rune('a'+i))
		if _, err := h.allocate(id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	h.waitFor("refill to warm", 10*time.Second, func(s api.StatusResponse) bool { return s.Pool.Free >= 2 })
	before := h.puts()
	for _, id := range ids {
		if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: id, IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	st := h.status()
	if st.Pool.Cooling != 10 {
		t.Errorf("cooling = %d right after 10 releases, want 10", st.Pool.Cooling)
	}
	st = h.waitFor("excess released", 10*time.Second, func(s api.StatusResponse) bool { return s.Pool.Total == 2 && s.Pool.Releasing == 0 })
	if st.Pool.Free != 2 {
		t.Errorf("pool %+v after release, want 2 free", st.Pool)
	}
	if got := h.puts() - before; got != 1 {
		t.Errorf("releasing the excess took %d NIC updates, want 1 batched", got)
	}
	if got := len(h.nicSecondaries()); got != 2 {
		t.Errorf("the cloud shows %d secondaries, want 2", got)
	}
}

func TestThrottlingBacksOff(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(5, 0, 40, 5, time.Hour), AllocateWait: 2500 * time.Millisecond})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready && s.Pool.Free == 5 })
	h.sim.ARM().ResetStats()
	h.sim.ARM().SetFaults(arm.Faults{Storm: &arm.Storm{Duration: arm.Duration(3 * time.Second), RetryAfterSeconds: 1}})
	// Pods still start from the warm pool during the storm.
	for i := range 5 {
		if _, err := h.allocate("s" + string(rune('a'+i))); err != nil {
			t.Fatalf("allocate from the warm pool during a storm: %v", err)
		}
	}
	// The pool is empty: the next pod waits for the refill, which is
	// throttled (the SDK's own retry honours the 1 s Retry-After first),
	// and is told to try again, with the reason.
	_, err := h.allocate("sx")
	if !api.IsTryAgain(err) || !strings.Contains(err.Error(), "throttled") {
		t.Errorf("allocate on an empty pool in a storm: %v, want TryAgain naming the throttling", err)
	}
	time.Sleep(3 * time.Second)
	throttled := h.sim.ARM().Stats().Throttled
	// Retry-After is 1 s, the SDK retries once per call: a worker that
	// honours it makes about 2 requests a second; hammering would be hundreds.
	if throttled > 10 {
		t.Errorf("%d throttled requests in a 3 s storm with Retry-After 1 s: not backing off", throttled)
	}
	if throttled == 0 {
		t.Error("no request reached the cloud during the storm: the refill never tried")
	}
	st := h.waitFor("catch up after the storm", 15*time.Second, func(s api.StatusResponse) bool { return s.Pool.Free >= 5 })
	if st.LastCloudError != "" {
		t.Errorf("last cloud error %q after recovery, want none", st.LastCloudError)
	}
	if _, err := h.allocate("sx"); err != nil {
		t.Errorf("allocate after recovery: %v", err)
	}
}

func TestNICLimitReportedWithoutFurtherCalls(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(300, 0, 255, 50, time.Hour), AllocateWait: 200 * time.Millisecond})
	st := h.waitFor("full NIC", 20*time.Second, func(s api.StatusResponse) bool { return s.Pool.Total == 255 && s.LimitReached })
	if st.Pool.Max != 255 {
		t.Errorf("max = %d, want 255", st.Pool.Max)
	}
	if got := len(h.nicSecondaries()); got != 255 {
		t.Errorf("the cloud shows %d secondaries, want 255", got)
	}
	writes := h.puts()
	time.Sleep(time.Second)
	if got := h.puts(); got != writes {
		t.Errorf("%d more NIC updates at the limit, want none", got-writes)
	}
	for i := range 255 {
		if _, err := h.allocate(strings.Repeat("x", 1+i/26) + string(rune('a'+i%26))); err != nil {
			t.Fatalf("allocation %d of 255: %v", i, err)
		}
	}
	_, err := h.allocate("one-too-many")
	if !api.IsTryAgain(err) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("allocation beyond the NIC limit: %v, want TryAgain naming the limit", err)
	}
}

func TestSubnetFullReported(t *testing.T) {
	// A /27 has 27 usable addresses; node0 takes one.
	h := newHarness(t, sim.Options{VNet: netip.MustParsePrefix("10.7.0.0/24"), Subnet: netip.MustParsePrefix("10.7.0.0/27")},
		Options{Targets: targets(40, 0, 100, 40, time.Hour), ResyncInterval: 2 * time.Second})
	st := h.waitFor("subnet full reported", 10*time.Second, func(s api.StatusResponse) bool {
		return strings.Contains(s.LastCloudError, "SubnetIsFull")
	})
	if !st.LimitReached {
		t.Errorf("status %+v, want limit reached", st)
	}
	writes := h.puts()
	time.Sleep(time.Second)
	if got := h.puts() - writes; got > 1 {
		t.Errorf("%d NIC updates within 1 s of a full subnet, want at most 1 (no hammering)", got)
	}
}

func TestConcurrentAllocateReleaseNeverDuplicates(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(20, 0, 200, 20, time.Hour), Cooldown: 50 * time.Millisecond, AllocateWait: 10 * time.Second})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				id := "g" + string(rune('A'+g/26)) + string(rune('a'+g%26)) + string(rune('0'+round))
				a, err := h.allocate(id)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if other, taken := owner[a.IP]; taken {
					errs <- &dupError{ip: a.IP, a: other, b: id}
				}
				owner[a.IP] = id
				mu.Unlock()
				time.Sleep(time.Millisecond)
				mu.Lock()
				delete(owner, a.IP)
				mu.Unlock()
				if _, err := h.client.Release(context.Background(), api.ReleaseRequest{ContainerID: id, IfName: "eth0"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := h.st.Validate(); err != nil {
		t.Errorf("store invariants: %v", err)
	}
}

type dupError struct {
	ip   netip.Addr
	a, b string
}

func (e *dupError) Error() string {
	return e.ip.String() + " held by " + e.a + " and " + e.b + " at once"
}

func TestRestartKeepsAssignmentsAndRebootReleasesThem(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(3, 0, 30, 3, time.Hour), BootID: "boot-1"})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	a, err := h.allocate("keep")
	if err != nil {
		t.Fatal(err)
	}
	dir := h.storeDir

	// A restart (same boot) keeps the assignment.
	h.stop()
	h.start(dir)
	h.waitFor("ready after restart", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	chk, err := h.client.Check(context.Background(), api.CheckRequest{ContainerID: "keep", IfName: "eth0"})
	if err != nil || chk.Assignment == nil || chk.Assignment.IP != a.IP {
		t.Fatalf("after restart check = %+v, %v; want %s", chk.Assignment, err, a.IP)
	}

	// A reboot (new boot id) discards it: the pod's datapath is gone.
	h.stop()
	h.opts.BootID = "boot-2"
	h.start(dir)
	h.waitFor("ready after reboot", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	chk, err = h.client.Check(context.Background(), api.CheckRequest{ContainerID: "keep", IfName: "eth0"})
	if err != nil || chk.Assignment != nil {
		t.Errorf("after reboot check = %+v, %v; want no assignment", chk.Assignment, err)
	}
}

func TestGCReleasesWhatIsNotValid(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(5, 0, 30, 5, time.Hour)})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready })
	for _, id := range []string{"a", "b", "c"} {
		if _, err := h.allocate(id); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := h.client.GC(context.Background(), api.GCRequest{Valid: []api.Attachment{{ContainerID: "b", IfName: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range resp.Released {
		got[r.ContainerID] = true
	}
	if len(got) != 2 || !got["a"] || !got["c"] {
		t.Errorf("gc released %v, want a and c", got)
	}
	if chk, _ := h.client.Check(context.Background(), api.CheckRequest{ContainerID: "b", IfName: "eth0"}); chk.Assignment == nil {
		t.Error("gc released the valid attachment b")
	}
}

func TestResyncAdoptsAndDropsExternalChanges(t *testing.T) {
	h := newHarness(t, sim.Options{}, Options{Targets: targets(3, 0, 30, 3, time.Hour), ResyncInterval: 200 * time.Millisecond})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready && s.Pool.Total == 3 })
	// Someone else adds two addresses to the NIC.
	p, err := azure.New(context.Background(), h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.Instance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	added, err := p.AddAddresses(context.Background(), inst.Interfaces[0].ID, 2)
	if err != nil {
		t.Fatal(err)
	}
	h.waitFor("adopt external addresses", 10*time.Second, func(s api.StatusResponse) bool { return s.Pool.Total >= 5 })
	list, err := h.client.List(context.Background(), api.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range list.Addresses {
		if (r.IP == added[0] || r.IP == added[1]) && r.State == "free" {
			found++
		}
		if r.Interface != inst.Interfaces[0].ID {
			t.Errorf("address %s listed on interface %q, want %q", r.IP, r.Interface, inst.Interfaces[0].ID)
		}
	}
	if found != 2 {
		t.Errorf("externally added %v not adopted as free: %+v", added, list.Addresses)
	}
}

func TestSetTargetsGrowsAndShrinksThePool(t *testing.T) {
	// No resync for an hour: only SetTargets' kick can wake the worker.
	h := newHarness(t, sim.Options{}, Options{Targets: targets(3, 0, 30, 3, 100*time.Millisecond), ResyncInterval: time.Hour})
	h.waitFor("ready", 10*time.Second, func(s api.StatusResponse) bool { return s.Ready && s.Pool.Total == 3 })
	time.Sleep(100 * time.Millisecond) // the worker is asleep

	if err := h.d.SetTargets(targets(12, 0, 20, 4, 100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	st := h.waitFor("growth to the new warm target", 5*time.Second, func(s api.StatusResponse) bool { return s.Pool.Free >= 12 })
	if st.Pool.Max != 20 {
		t.Errorf("max = %d after raising the targets, want the new maxIPs 20", st.Pool.Max)
	}
	if got := len(h.nicSecondaries()); got != st.Pool.Total {
		t.Errorf("the cloud shows %d secondaries, the pool %d", got, st.Pool.Total)
	}

	// Bad targets are refused and the pool keeps the old ones.
	if err := h.d.SetTargets(targets(5, 0, 20, 0, time.Second)); err == nil {
		t.Error("SetTargets accepted a batch size of 0")
	}
	if err := h.d.SetTargets(targets(-1, 0, 20, 1, time.Second)); err == nil {
		t.Error("SetTargets accepted a negative warm target")
	}

	before := h.puts()
	if err := h.d.SetTargets(targets(2, 0, 20, 1, 100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	st = h.waitFor("shrink to the new warm target", 10*time.Second, func(s api.StatusResponse) bool {
		return s.Pool.Total == 2 && s.Pool.Releasing == 0
	})
	if got := len(h.nicSecondaries()); got != 2 {
		t.Errorf("the cloud shows %d secondaries after lowering the targets, want 2", got)
	}
	if h.puts() == before {
		t.Error("the pool shrank without a NIC update")
	}
	// A maxIPs below the pool shrinks it even below the warm target.
	if err := h.d.SetTargets(targets(2, 0, 1, 1, 0)); err != nil {
		t.Fatal(err)
	}
	// The round that releases plans with the pool it had (2 free, the warm
	// target met); the next one finds the pool short and at its limit.
	st = h.waitFor("shrink to the new maxIPs, the limit reported", 10*time.Second, func(s api.StatusResponse) bool {
		return s.Pool.Total == 1 && s.Pool.Releasing == 0 && s.LimitReached
	})
	if !st.LimitReached || st.Pool.Max != 1 {
		t.Errorf("status %+v, want the limit of 1 reached", st.Pool)
	}
	if got := len(h.nicSecondaries()); got != 1 {
		t.Errorf("the cloud shows %d secondaries under maxIPs 1, want 1", got)
	}
}
