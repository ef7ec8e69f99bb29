package store

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Environment of the child process of TestKill9.
const (
	envKillDir  = "VNET_STORE_KILL_DIR"
	envKillIter = "VNET_STORE_KILL_ITER"
	envKillSeed = "VNET_STORE_KILL_SEED"
)

// TestKill9 runs a child process that performs a random stream of operations on
// a store and SIGKILLs it at a random moment, 30 times or more on the same
// directory.
// The child prints "begin <op>" before each operation and "ack <op> <result>"
// after it returned, i.e. after it was durable. After each kill the parent
// reopens the store and checks that the invariants hold, that every
// acknowledged operation is reflected, that no address was lost or invented,
// and that the one operation in flight was applied entirely or not at all.
//
// It runs on the disk (t.TempDir) and, as root, on a tmpfs, where the default
// storeDir lives and a record's fdatasync returns at once.
func TestKill9(t *testing.T) {
	if os.Getenv(envKillDir) != "" {
		t.Skip("in the child")
	}
	t.Run("disk", func(t *testing.T) { kill9(t, t.TempDir()) })
	t.Run("tmpfs", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("mounting a tmpfs needs root")
		}
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0700,size=16m"); err != nil {
			t.Fatalf("mount a tmpfs: %v", err)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		kill9(t, dir)
	})
}

func kill9(t *testing.T, dir string) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	acks := model{}
	var acked, inflightApplied int
	// 30 kills at least, and more on a slow machine (where each child
	// gets fewer operations done before its kill) until 100 operations
	// were acknowledged, at most 200 kills.
	for iter := 0; iter < 30 || acked < 100 && iter < 200; iter++ {
		lines, exited := runChild(t, dir, iter, seed, rng)
		if exited {
			t.Fatalf("iteration %d: child exited by itself:\n%s", iter, strings.Join(lines, "\n"))
		}
		var inflight []string
		for _, l := range lines {
			f := strings.Fields(l)
			switch {
			case len(f) >= 2 && f[0] == "begin":
				inflight = f[1:]
			case len(f) >= 2 && f[0] == "ack":
				if err := acks.ack(f[1:]); err != nil {
					t.Fatalf("iteration %d: %q: %v", iter, l, err)
				}
				inflight = nil
				acked++
			}
		}

		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("iteration %d: reopen after kill: %v", iter, err)
		}
		if err := s.Validate(); err != nil {
			t.Errorf("iteration %d: Validate after kill: %v", iter, err)
		}
		got := s.List()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		applied, err := checkAfterKill(acks, got, inflight)
		if err != nil {
			t.Fatalf("iteration %d (in flight %q): %v", iter, inflight, err)
		}
		if applied {
			inflightApplied++
		}
		acks = project(got)
	}
	t.Logf("%d acknowledged operations, %d in-flight operations found applied", acked, inflightApplied)
	if acked < 100 {
		t.Errorf("only %d operations acknowledged over all runs: the test proved little", acked)
	}
}

// runChild starts the child, kills it after a random delay and returns the
// complete lines it printed, and whether it exited before the kill.
func runChild(t *testing.T, dir string, iter int, seed uint64, rng *rand.Rand) ([]string, bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		envKillDir+"="+dir, envKillIter+"="+strconv.Itoa(iter), envKillSeed+"="+strconv.FormatUint(seed+uint64(iter), 10))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		r := bufio.NewReader(out)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return // a last line without newline was cut by the kill
			}
			lines <- strings.TrimSuffix(l, "\n")
		}
	}()
	var all []string
	exited := false
	if iter%5 == 4 {
		// Kill early, maybe during Open's recovery.
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
	} else {
		timeout := time.After(30 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					exited = true
					break wait
				}
				all = append(all, l)
				if l == "ready" {
					break wait
				}
			case <-timeout:
				_ = cmd.Process.Kill()
				t.Fatalf("iteration %d: child not ready", iter)
			}
		}
		time.Sleep(time.Duration(rng.IntN(25000)) * time.Microsecond)
	}
	_ = cmd.Process.Kill() // SIGKILL
	for l := range lines {
		all = append(all, l)
	}
	_ = cmd.Wait()
	if slices.ContainsFunc(all, func(l string) bool { return strings.HasPrefix(l, "fail") }) {
		exited = true
	}
	return all, exited
}

// TestKillChild is the child of TestKill9; it does nothing in a normal run.
func TestKillChild(t *testing.T) {
	dir := os.Getenv(envKillDir)
	if dir == "" {
		t.Skip("only runs as the child of TestKill9")
	}
	iter, _ := strconv.Atoi(os.Getenv(envKillIter))
	seed, _ := strconv.ParseUint(os.Getenv(envKillSeed), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 1))
	fail := func(err error) {
		fmt.Printf("fail %v\n", err)
		os.Exit(3)
	}
	// A small threshold so that kills also land in compactions.
	s, err := Open(dir, Options{CompactBytes: 2048})
	if err != nil {
		fail(err)
	}
	fmt.Println("ready")
	next := 0
	for {
		recs := s.List()
		pick := func(st State) string {
			var cand []string
			for _, r := range recs {
				if r.State == st {
					cand = append(cand, r.IP.String())
				}
			}
			rng.Shuffle(len(cand), func(i, j int) { cand[i], cand[j] = cand[j], cand[i] })
			return addrList(cand[:min(len(cand), 1+rng.IntN(3))])
		}
		switch n := rng.IntN(100); {
		case n < 12 && len(recs) < 50:
			var add []string
			for range 1 + rng.IntN(3) {
				next++
				add = append(add, netip.AddrFrom4([4]byte{10, byte(iter + 1), byte(next / 256), byte(next % 256)}).String())
			}
			fmt.Printf("begin add %s\n", addrList(add))
			added, err := s.AddFree("nic-0", parseList(addrList(add))...)
			if err != nil {
				fail(err)
			}
			fmt.Printf("ack add %s\n", addrs(added))
		case n < 45:
			id := fmt.Sprintf("c%d", rng.IntN(40))
			fmt.Printf("begin assign %s\n", id)
			r, err := s.Assign(Owner{ContainerID: id, IfName: "eth0", PodName: "p" + id})
			switch {
			case err == nil:
				fmt.Printf("ack assign %s %s\n", id, r.IP)
			case errors.Is(err, ErrNoFree):
				fmt.Printf("ack assign %s nofree\n", id)
			default:
				fail(err)
			}
		case n < 70:
			id := fmt.Sprintf("c%d", rng.IntN(40))
			fmt.Printf("begin release %s\n", id)
			_, found, err := s.Release(Attachment{ContainerID: id, IfName: "eth0"})
			if err != nil {
				fail(err)
			}
			fmt.Printf("ack release %s %v\n", id, found)
		case n < 80:
			now := time.Now()
			cooldown := time.Duration(rng.IntN(3000)) * time.Microsecond
			fmt.Printf("begin promote %d %d\n", now.UnixNano(), cooldown)
			promoted, err := s.Promote(now, cooldown)
			if err != nil {
				fail(err)
			}
			fmt.Printf("ack promote %s\n", addrs(promoted))
		case n < 88:
			l := pick(StateFree)
			fmt.Printf("begin mark %s\n", l)
			if err := s.MarkReleasing(parseList(l)...); err != nil {
				fail(err)
			}
			fmt.Printf("ack mark %s\n", l)
		case n < 94:
			l := pick(StateReleasing)
			fmt.Printf("begin remove %s\n", l)
			if err := s.Remove(parseList(l)...); err != nil {
				fail(err)
			}
			fmt.Printf("ack remove %s\n", l)
		default:
			// The cloud reports some addresses on the other interface: a
			// reconcile rewrites their records, keeping their states.
			l := pick([]State{StateFree, StateAssigned, StateCooling, StateReleasing}[rng.IntN(4)])
			onCloud := map[netip.Addr]string{}
			for _, r := range recs {
				onCloud[r.IP] = r.Interface
			}
			for _, a := range parseList(l) {
				onCloud[a] = otherInterface(onCloud[a])
			}
			fmt.Printf("begin move %s\n", l)
			if _, err := s.Reconcile(onCloud); err != nil {
				fail(err)
			}
			fmt.Printf("ack move %s\n", l)
		}
	}
}

// addrList joins addresses with commas; "-" is the empty list.
func addrList(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}

func addrs(ips []netip.Addr) string {
	l := make([]string, len(ips))
	for i, a := range ips {
		l[i] = a.String()
	}
	return addrList(l)
}

func parseList(s string) []netip.Addr {
	if s == "-" {
		return nil
	}
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		out = append(out, netip.MustParseAddr(f))
	}
	return out
}

// mrec is the model of one address: its state, when owned its container,
// and its interface.
type mrec struct {
	State State
	Owner string
	Iface string
}

// otherInterface swaps an address between the two interfaces of the test.
func otherInterface(iface string) string {
	if iface == "nic-0" {
		return "nic-1"
	}
	return "nic-0"
}

type model map[netip.Addr]mrec

func project(rs []Record) model {
	m := model{}
	for _, r := range rs {
		m[r.IP] = mrec{State: r.State, Owner: r.Owner.ContainerID, Iface: r.Interface}
	}
	return m
}

func (m model) owned(id string) (netip.Addr, bool) {
	for a, r := range m {
		if r.Owner == id {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// ack applies an acknowledged operation and checks that its result agrees
// with the model.
func (m model) ack(f []string) error {
	switch {
	case f[0] == "add" && len(f) == 2:
		for _, a := range parseList(f[1]) {
			if _, ok := m[a]; ok {
				return fmt.Errorf("added %s twice", a)
			}
			m[a] = mrec{State: StateFree, Iface: "nic-0"}
		}
	case f[0] == "assign" && len(f) == 3:
		if f[2] == "nofree" {
			for _, r := range m {
				if r.State == StateFree {
					return fmt.Errorf("no free address reported with free addresses in the model")
				}
			}
			return nil
		}
		a := netip.MustParseAddr(f[2])
		r, ok := m[a]
		if !ok || (r.State != StateFree && r.Owner != f[1]) {
			return fmt.Errorf("assigned %s, which the model holds as %+v", a, r)
		}
		if other, ok := m.owned(f[1]); ok && other != a {
			return fmt.Errorf("assigned %s while the attachment holds %s", a, other)
		}
		m[a] = mrec{State: StateAssigned, Owner: f[1], Iface: r.Iface}
	case f[0] == "release" && len(f) == 3:
		a, ok := m.owned(f[1])
		if strconv.FormatBool(ok) != f[2] {
			return fmt.Errorf("release found=%s, model has the attachment: %v", f[2], ok)
		}
		if ok {
			m[a] = mrec{State: StateCooling, Owner: f[1], Iface: m[a].Iface}
		}
	case f[0] == "promote" && len(f) == 2:
		for _, a := range parseList(f[1]) {
			if m[a].State != StateCooling {
				return fmt.Errorf("promoted %s, which the model holds as %+v", a, m[a])
			}
			m[a] = mrec{State: StateFree, Iface: m[a].Iface}
		}
	case f[0] == "mark" && len(f) == 2:
		for _, a := range parseList(f[1]) {
			m[a] = mrec{State: StateReleasing, Iface: m[a].Iface}
		}
	case f[0] == "remove" && len(f) == 2:
		for _, a := range parseList(f[1]) {
			delete(m, a)
		}
	case f[0] == "move" && len(f) == 2:
		for _, a := range parseList(f[1]) {
			r := m[a]
			r.Iface = otherInterface(r.Iface)
			m[a] = r
		}
	default:
		return fmt.Errorf("unknown acknowledgement")
	}
	return nil
}

// checkAfterKill compares the reopened store with the model of the
// acknowledged operations. The differences must be exactly the effect of the
// operation in flight (begin without ack), applied atomically, or none.
func checkAfterKill(m model, got []Record, inflight []string) (bool, error) {
	p := project(got)
	var diff []netip.Addr
	for a := range m {
		if p[a] != m[a] {
			diff = append(diff, a)
		}
	}
	for a := range p {
		if _, ok := m[a]; !ok {
			diff = append(diff, a)
		}
	}
	slices.SortFunc(diff, netip.Addr.Compare)
	if len(diff) == 0 {
		return false, nil
	}
	describe := func() string {
		var b strings.Builder
		for _, a := range diff {
			mr, inM := m[a]
			pr, inP := p[a]
			fmt.Fprintf(&b, "\n  %s: acknowledged %+v (%v), on disk %+v (%v)", a, mr, inM, pr, inP)
		}
		return b.String()
	}
	if len(inflight) == 0 {
		return false, fmt.Errorf("store differs from the acknowledged operations:%s", describe())
	}
	same := func(want []netip.Addr) bool { return slices.Equal(want, diff) }
	// want lists the addresses the in-flight op changes and checks each.
	var want []netip.Addr
	ok := true
	switch inflight[0] {
	case "add":
		for _, a := range parseList(inflight[1]) {
			if _, known := m[a]; !known {
				want = append(want, a)
				ok = ok && p[a] == mrec{State: StateFree, Iface: "nic-0"}
			}
		}
	case "assign":
		id := inflight[1]
		if len(diff) != 1 {
			return false, fmt.Errorf("assign %s in flight changed %d addresses:%s", id, len(diff), describe())
		}
		a := diff[0]
		want = diff
		prev, held := m.owned(id)
		ok = p[a] == mrec{State: StateAssigned, Owner: id, Iface: m[a].Iface} &&
			(held && prev == a && m[a].State == StateCooling || !held && m[a].State == StateFree)
	case "release":
		a, held := m.owned(inflight[1])
		if held {
			want = []netip.Addr{a}
		}
		ok = p[a] == mrec{State: StateCooling, Owner: inflight[1], Iface: m[a].Iface} && m[a].State == StateAssigned
	case "promote":
		ns, _ := strconv.ParseInt(inflight[1], 10, 64)
		cd, _ := strconv.ParseInt(inflight[2], 10, 64)
		cutoff := time.Unix(0, ns).Add(-time.Duration(cd))
		want = diff
		for _, a := range diff {
			ok = ok && m[a].State == StateCooling && p[a] == mrec{State: StateFree, Iface: m[a].Iface}
		}
		for _, r := range got { // atomic: nothing eligible may be left behind
			if r.State == StateCooling && !r.Since.After(cutoff) {
				return true, fmt.Errorf("promote partly applied: %s still cooling since %s, cutoff %s", r.IP, r.Since, cutoff)
			}
		}
	case "mark", "remove":
		from := StateFree
		if inflight[0] == "remove" {
			from = StateReleasing
		}
		for _, a := range parseList(inflight[1]) {
			if m[a].State != from {
				continue
			}
			want = append(want, a)
			if inflight[0] == "remove" {
				_, present := p[a]
				ok = ok && !present
			} else {
				ok = ok && p[a] == mrec{State: StateReleasing, Iface: m[a].Iface}
			}
		}
	case "move":
		want = parseList(inflight[1])
		for _, a := range want {
			moved := m[a]
			moved.Iface = otherInterface(moved.Iface)
			ok = ok && p[a] == moved
		}
	default:
		return false, fmt.Errorf("unknown operation in flight")
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if !ok || !same(want) {
		return false, fmt.Errorf("%v in flight, but the store differs from the acknowledged operations by something else:%s", inflight, describe())
	}
	return true, nil
}
