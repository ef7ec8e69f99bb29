package store

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

var cmpAddr = cmpopts.EquateComparable(netip.Addr{})

// clock is a manual clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// nic0 and nic1 are interface IDs as the cloud names them.
const (
	nic0 = "nic-0"
	nic1 = "nic-1"
)

// onNIC is what the cloud reports: every address on iface.
func onNIC(iface string, addrs ...netip.Addr) map[netip.Addr]string {
	m := make(map[netip.Addr]string, len(addrs))
	for _, a := range addrs {
		m[a] = iface
	}
	return m
}

func ip(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(n / 256), byte(n % 256)}) }

func ips(ns ...int) []netip.Addr {
	out := make([]netip.Addr, 0, len(ns))
	for _, n := range ns {
		out = append(out, ip(n))
	}
	return out
}

func owner(id string) Owner {
	return Owner{ContainerID: id, IfName: "eth0", PodNamespace: "default", PodName: "pod-" + id, Netns: "/var/run/netns/" + id}
}

func att(id string) Attachment { return Attachment{ContainerID: id, IfName: "eth0"} }

func openTest(t *testing.T, dir string, clk *clock) *Store {
	t.Helper()
	s, err := Open(dir, Options{Now: clk.Now})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// must(f())(t) returns f's value and fails the test on f's error.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func free(n int, since time.Time) Record {
	return Record{IP: ip(n), Interface: nic0, State: StateFree, Since: since}
}

func assigned(n int, id string, at time.Time) Record {
	return Record{IP: ip(n), Interface: nic0, State: StateAssigned, Owner: owner(id), Since: at, AssignedAt: at}
}

func cooling(n int, id string, assignedAt, releasedAt time.Time) Record {
	return Record{IP: ip(n), Interface: nic0, State: StateCooling, Owner: owner(id), Since: releasedAt, AssignedAt: assignedAt, ReleasedAt: releasedAt}
}

func releasing(n int, since time.Time) Record {
	return Record{IP: ip(n), Interface: nic0, State: StateReleasing, Since: since}
}

// on returns r on interface iface.
func on(iface string, r Record) Record {
	r.Interface = iface
	return r
}

// TestTransitions runs every operation from a known state and checks the
// result, the error and the records afterwards, then reopens the store and
// checks that the records survived.
func TestTransitions(t *testing.T) {
	t1 := t0.Add(time.Second)
	t2 := t0.Add(2 * time.Second)

	// base, all on nic0: 1, 2 and 3 free since t1, 4 assigned to "a",
	// 5 cooling from "b", 6 releasing.
	base := func(t *testing.T, s *Store, clk *clock) {
		clk.advance(time.Second)
		// Only 4 and 5 are free at first, so that they are the ones
		// assigned.
		must(s.AddFree(nic0, ip(4), ip(5)))(t)
		r := must(s.Assign(owner("a")))(t)
		if r.IP != ip(4) {
			t.Fatalf("setup: assigned %s, want %s", r.IP, ip(4))
		}
		r = must(s.Assign(owner("b")))(t)
		if r.IP != ip(5) {
			t.Fatalf("setup: assigned %s, want %s", r.IP, ip(5))
		}
		must(s.AddFree(nic0, ips(1, 2, 3, 6)...))(t)
		mustDo(t, s.MarkReleasing(ip(6)))
		clk.advance(time.Second)
		_, _, err := s.Release(att("b"))
		mustDo(t, err)
		clk.advance(time.Second)
	}
	// State after base, at clock t0+3s:
	baseRecords := []Record{
		free(1, t1), free(2, t1), free(3, t1),
		assigned(4, "a", t1), cooling(5, "b", t1, t2), releasing(6, t1),
	}
	t3 := t0.Add(3 * time.Second)

	tests := []struct {
		name string
		op   func(s *Store, clk *clock) (any, error)
		// wantResult is compared with the operation's result when not nil.
		wantResult any
		wantErr    error
		// wantTransition, when set, is the *TransitionError expected.
		wantTransition *TransitionError
		want           []Record
	}{
		{
			name:       "base state",
			op:         func(*Store, *clock) (any, error) { return nil, nil },
			wantResult: nil,
			want:       baseRecords,
		},
		{
			name:       "add free skips known addresses and duplicates",
			op:         func(s *Store, _ *clock) (any, error) { return s.AddFree(nic0, ip(7), ip(1), ip(7), ip(4), ip(8)) },
			wantResult: ips(7, 8),
			want:       append(cloneRecords(baseRecords), free(7, t3), free(8, t3)),
		},
		{
			name:    "add free rejects an invalid address and adds nothing",
			op:      func(s *Store, _ *clock) (any, error) { return s.AddFree(nic0, ip(7), netip.Addr{}) },
			wantErr: ErrInvalidIP,
			want:    baseRecords,
		},
		{
			name:    "add free rejects a zoned address",
			op:      func(s *Store, _ *clock) (any, error) { return s.AddFree(nic0, netip.MustParseAddr("fe80::1%eth0")) },
			wantErr: ErrInvalidIP,
			want:    baseRecords,
		},
		{
			name:       "assign takes the longest free, lowest address first",
			op:         func(s *Store, _ *clock) (any, error) { return s.Assign(owner("c")) },
			wantResult: assigned(1, "c", t3),
			want:       replace(baseRecords, assigned(1, "c", t3)),
		},
		{
			name: "assign is idempotent for the same attachment",
			op: func(s *Store, _ *clock) (any, error) {
				return s.Assign(Owner{ContainerID: "a", IfName: "eth0", PodName: "other"})
			},
			wantResult: assigned(4, "a", t1),
			want:       baseRecords,
		},
		{
			name: "assign to another interface of the same container gets another address",
			op: func(s *Store, _ *clock) (any, error) {
				return s.Assign(Owner{ContainerID: "a", IfName: "net1"})
			},
			wantResult: Record{IP: ip(1), Interface: nic0, State: StateAssigned, Owner: Owner{ContainerID: "a", IfName: "net1"}, Since: t3, AssignedAt: t3},
			want:       replace(baseRecords, Record{IP: ip(1), Interface: nic0, State: StateAssigned, Owner: Owner{ContainerID: "a", IfName: "net1"}, Since: t3, AssignedAt: t3}),
		},
		{
			name:       "assign gives a cooling address back to its own attachment",
			op:         func(s *Store, _ *clock) (any, error) { return s.Assign(owner("b")) },
			wantResult: assigned(5, "b", t3),
			want:       replace(baseRecords, assigned(5, "b", t3)),
		},
		{
			name: "assign with no free address fails with ErrNoFree",
			op: func(s *Store, _ *clock) (any, error) {
				if err := s.MarkReleasing(ips(1, 2, 3)...); err != nil {
					return nil, err
				}
				return s.Assign(owner("c"))
			},
			wantErr: ErrNoFree,
			want:    replace(baseRecords, releasing(1, t3), releasing(2, t3), releasing(3, t3)),
		},
		{
			name:    "assign without interface name is invalid",
			op:      func(s *Store, _ *clock) (any, error) { return s.Assign(Owner{ContainerID: "c"}) },
			wantErr: ErrInvalidAttachment,
			want:    baseRecords,
		},
		{
			name:       "release moves assigned to cooling",
			op:         func(s *Store, _ *clock) (any, error) { return release(s, att("a")) },
			wantResult: releaseResult{cooling(4, "a", t1, t3), true},
			want:       replace(baseRecords, cooling(4, "a", t1, t3)),
		},
		{
			name:       "release of a cooling address is idempotent",
			op:         func(s *Store, _ *clock) (any, error) { return release(s, att("b")) },
			wantResult: releaseResult{cooling(5, "b", t1, t2), true},
			want:       baseRecords,
		},
		{
			name:       "release of an unknown attachment is reported, not an error",
			op:         func(s *Store, _ *clock) (any, error) { return release(s, att("zzz")) },
			wantResult: releaseResult{},
			want:       baseRecords,
		},
		{
			name:    "release without container id is invalid",
			op:      func(s *Store, _ *clock) (any, error) { return release(s, Attachment{IfName: "eth0"}) },
			wantErr: ErrInvalidAttachment,
			want:    baseRecords,
		},
		{
			name:       "promote before the cooldown does nothing",
			op:         func(s *Store, _ *clock) (any, error) { return s.Promote(t3, 1500*time.Millisecond) },
			wantResult: []netip.Addr(nil),
			want:       baseRecords,
		},
		{
			name:       "promote at exactly the cooldown frees the address",
			op:         func(s *Store, _ *clock) (any, error) { return s.Promote(t3, time.Second) },
			wantResult: ips(5),
			want:       replace(baseRecords, free(5, t3)),
		},
		{
			name: "a promoted address is assigned after those free longer",
			op: func(s *Store, _ *clock) (any, error) {
				if _, err := s.Promote(t3, 0); err != nil {
					return nil, err
				}
				var got []netip.Addr
				for _, id := range []string{"c", "d", "e", "f"} {
					r, err := s.Assign(owner(id))
					if err != nil {
						return got, err
					}
					got = append(got, r.IP)
				}
				return got, nil
			},
			wantResult: ips(1, 2, 3, 5),
			want: []Record{
				assigned(1, "c", t3), assigned(2, "d", t3), assigned(3, "e", t3),
				assigned(4, "a", t1), assigned(5, "f", t3), releasing(6, t1),
			},
		},
		{
			name:       "mark releasing moves free to releasing; releasing stays",
			op:         func(s *Store, _ *clock) (any, error) { return nil, s.MarkReleasing(ip(2), ip(6), ip(2)) },
			wantResult: nil,
			want:       replace(baseRecords, releasing(2, t3)),
		},
		{
			name:           "mark releasing refuses an assigned address and changes nothing",
			op:             func(s *Store, _ *clock) (any, error) { return nil, s.MarkReleasing(ip(1), ip(4)) },
			wantTransition: &TransitionError{IP: ip(4), From: StateAssigned, To: StateReleasing},
			want:           baseRecords,
		},
		{
			name:           "mark releasing refuses a cooling address",
			op:             func(s *Store, _ *clock) (any, error) { return nil, s.MarkReleasing(ip(5)) },
			wantTransition: &TransitionError{IP: ip(5), From: StateCooling, To: StateReleasing},
			want:           baseRecords,
		},
		{
			name:    "mark releasing of an unknown address fails and changes nothing",
			op:      func(s *Store, _ *clock) (any, error) { return nil, s.MarkReleasing(ip(1), ip(99)) },
			wantErr: ErrUnknownIP,
			want:    baseRecords,
		},
		{
			name: "remove deletes releasing addresses and skips unknown ones",
			op:   func(s *Store, _ *clock) (any, error) { return nil, s.Remove(ip(6), ip(99)) },
			want: remove(baseRecords, 6),
		},
		{
			name:           "remove refuses a free address",
			op:             func(s *Store, _ *clock) (any, error) { return nil, s.Remove(ip(6), ip(1)) },
			wantTransition: &TransitionError{IP: ip(1), From: StateFree},
			want:           baseRecords,
		},
		{
			name:           "remove refuses an assigned address",
			op:             func(s *Store, _ *clock) (any, error) { return nil, s.Remove(ip(4)) },
			wantTransition: &TransitionError{IP: ip(4), From: StateAssigned},
			want:           baseRecords,
		},
		{
			name: "reconcile adds unknown addresses as free, drops free ones that left the NIC, keeps owned ones as lost",
			op: func(s *Store, _ *clock) (any, error) {
				return s.Reconcile(onNIC(nic0, ips(1, 3, 4, 6, 10, 11)...))
			},
			wantResult: ReconcileResult{Added: ips(10, 11), Dropped: []Record{free(2, t1)}, Lost: []Record{lost(cooling(5, "b", t1, t2), t3)}},
			want:       append(replace(remove(baseRecords, 2), lost(cooling(5, "b", t1, t2), t3)), free(10, t3), free(11, t3)),
		},
		{
			name: "reconcile finds a lost address again, on the interface the cloud names",
			op: func(s *Store, clk *clock) (any, error) {
				if _, err := s.Reconcile(onNIC(nic0, ips(1, 2, 3, 6)...)); err != nil {
					return nil, err
				}
				clk.advance(time.Second)
				m := onNIC(nic0, ips(1, 2, 3, 5, 6)...)
				m[ip(4)] = nic1
				return s.Reconcile(m)
			},
			wantResult: ReconcileResult{Moved: ips(4), Found: ips(4, 5)},
			want:       replace(baseRecords, on(nic1, assigned(4, "a", t1))),
		},
		{
			name: "reconcile leaves a lost address lost, from when it was first missed",
			op: func(s *Store, clk *clock) (any, error) {
				if _, err := s.Reconcile(onNIC(nic0, ips(1, 2, 3, 5, 6)...)); err != nil {
					return nil, err
				}
				clk.advance(time.Second)
				return s.Reconcile(onNIC(nic0, ips(1, 2, 3, 5, 6)...))
			},
			wantResult: ReconcileResult{},
			want:       replace(baseRecords, lost(assigned(4, "a", t1), t3)),
		},
		{
			name: "a lost cooling address is never promoted, and forgotten after its cooldown",
			op: func(s *Store, clk *clock) (any, error) {
				if _, err := s.Reconcile(onNIC(nic0, ips(1, 2, 3, 4, 6)...)); err != nil {
					return nil, err
				}
				if p, err := s.Promote(t3.Add(time.Hour), 0); err != nil || len(p) != 0 {
					return nil, fmt.Errorf("promote = %v, %w; want nothing", p, err)
				}
				if g, err := s.ForgetLost(t2.Add(time.Second-time.Nanosecond), time.Second); err != nil || len(g) != 0 {
					return nil, fmt.Errorf("forget before the cooldown = %v, %w; want nothing", g, err)
				}
				return s.ForgetLost(t3, time.Second)
			},
			wantResult: []Record{lost(cooling(5, "b", t1, t2), t3)},
			want:       remove(baseRecords, 5),
		},
		{
			name: "a lost cooling address given back to its own attachment stays lost",
			op: func(s *Store, _ *clock) (any, error) {
				if _, err := s.Reconcile(onNIC(nic0, ips(1, 2, 3, 4, 6)...)); err != nil {
					return nil, err
				}
				return s.Assign(owner("b"))
			},
			wantResult: lost(assigned(5, "b", t3), t3),
			want:       replace(baseRecords, lost(assigned(5, "b", t3), t3)),
		},
		{
			name: "allocation again with a later stamp records it, with an earlier one changes nothing",
			op: func(s *Store, _ *clock) (any, error) {
				if _, err := s.AssignAt(owner("a"), stamp(20)); err != nil {
					return nil, err
				}
				return s.AssignAt(owner("a"), stamp(10))
			},
			wantResult: stamped(assigned(4, "a", t1), stamp(20)),
			want:       replace(baseRecords, stamped(assigned(4, "a", t1), stamp(20))),
		},
		{
			name: "a release made before the latest allocation is superseded",
			op: func(s *Store, _ *clock) (any, error) {
				if _, err := s.AssignAt(owner("a"), stamp(20)); err != nil {
					return nil, err
				}
				return releaseAt(s, att("a"), stamp(20))
			},
			wantErr: ErrSuperseded,
			want:    replace(baseRecords, stamped(assigned(4, "a", t1), stamp(20))),
		},
		{
			name: "a release made after the latest allocation releases",
			op: func(s *Store, _ *clock) (any, error) {
				if _, err := s.AssignAt(owner("a"), stamp(20)); err != nil {
					return nil, err
				}
				return releaseAt(s, att("a"), stamp(21))
			},
			wantResult: releaseResult{stamped(cooling(4, "a", t1, t3), stamp(20)), true},
			want:       replace(baseRecords, stamped(cooling(4, "a", t1, t3), stamp(20))),
		},
		{
			name: "a release of another boot, or without boot clock, is ordered by the wall clock",
			op: func(s *Store, _ *clock) (any, error) {
				if _, err := s.AssignAt(owner("a"), stamp(20)); err != nil {
					return nil, err
				}
				other := Stamp{Boot: 1 << 40, BootID: "another-boot", Wall: t1}
				if _, _, err := s.ReleaseAt(att("a"), other); !errors.Is(err, ErrSuperseded) {
					return nil, fmt.Errorf("release of another boot stamped before the allocation: %w, want ErrSuperseded", err)
				}
				if _, _, err := s.ReleaseAt(att("a"), Stamp{Wall: t1}); !errors.Is(err, ErrSuperseded) {
					return nil, fmt.Errorf("release without boot clock stamped before the allocation: %w, want ErrSuperseded", err)
				}
				return releaseAt(s, att("a"), Stamp{Wall: stamp(20).Wall.Add(time.Second)})
			},
			wantResult: releaseResult{stamped(cooling(4, "a", t1, t3), stamp(20)), true},
			want:       replace(baseRecords, stamped(cooling(4, "a", t1, t3), stamp(20))),
		},
		{
			name: "a record without stamp orders releases by its assignment time",
			op: func(s *Store, _ *clock) (any, error) {
				if _, _, err := s.ReleaseAt(att("a"), Stamp{Wall: t1}); !errors.Is(err, ErrSuperseded) {
					return nil, fmt.Errorf("release stamped at the assignment: %w, want ErrSuperseded", err)
				}
				return releaseAt(s, att("a"), Stamp{Wall: t2})
			},
			wantResult: releaseResult{cooling(4, "a", t1, t3), true},
			want:       replace(baseRecords, cooling(4, "a", t1, t3)),
		},
		{
			name:       "reconcile with the same addresses changes nothing",
			op:         func(s *Store, _ *clock) (any, error) { return s.Reconcile(onNIC(nic0, ips(1, 2, 3, 4, 5, 6)...)) },
			wantResult: ReconcileResult{},
			want:       baseRecords,
		},
		{
			name: "reconcile records the interface the cloud reports, keeping the state",
			op: func(s *Store, _ *clock) (any, error) {
				m := onNIC(nic0, ips(1, 2, 3, 5, 6)...)
				m[ip(4)] = nic1
				m[ip(12)] = nic1
				return s.Reconcile(m)
			},
			wantResult: ReconcileResult{Added: ips(12), Moved: ips(4)},
			want:       append(replace(baseRecords, on(nic1, assigned(4, "a", t1))), on(nic1, free(12, t3))),
		},
		{
			name: "reconcile with an empty NIC drops every address no pod holds and keeps the others as lost",
			op:   func(s *Store, _ *clock) (any, error) { return s.Reconcile(nil) },
			wantResult: ReconcileResult{
				Dropped: []Record{free(1, t1), free(2, t1), free(3, t1), releasing(6, t1)},
				Lost:    []Record{lost(assigned(4, "a", t1), t3), lost(cooling(5, "b", t1, t2), t3)},
			},
			want: []Record{lost(assigned(4, "a", t1), t3), lost(cooling(5, "b", t1, t2), t3)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &clock{now: t0}
			s := openTest(t, dir, clk)
			base(t, s, clk)
			got, err := tc.op(s, clk)
			switch {
			case tc.wantTransition != nil:
				var te *TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("error = %v, want a *TransitionError", err)
				}
				if diff := cmp.Diff(tc.wantTransition, te, cmpAddr); diff != "" {
					t.Errorf("TransitionError mismatch (-want +got):\n%s", diff)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			default:
				if diff := cmp.Diff(tc.wantResult, got, cmpAddr, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("result mismatch (-want +got):\n%s", diff)
				}
			}
			if err := s.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
			if diff := cmp.Diff(sortRecords(tc.want), s.List(), cmpAddr, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("records mismatch (-want +got):\n%s", diff)
			}
			// Everything is durable: a reopened store has the same records.
			mustDo(t, s.Close())
			s2 := openTest(t, dir, clk)
			if diff := cmp.Diff(sortRecords(tc.want), s2.List(), cmpAddr, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("records after reopen mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

type releaseResult struct {
	Record Record
	Found  bool
}

func release(s *Store, a Attachment) (any, error) {
	r, ok, err := s.Release(a)
	return releaseResult{r, ok}, err
}

func releaseAt(s *Store, a Attachment, at Stamp) (any, error) {
	r, ok, err := s.ReleaseAt(a, at)
	return releaseResult{r, ok}, err
}

// stamp is a call at n seconds of the boot clock of one boot.
func stamp(n int) Stamp {
	return Stamp{Boot: int64(n) * int64(time.Second), BootID: "boot-1", Wall: t0.Add(time.Duration(n) * time.Second)}
}

// stamped returns r allocated at st.
func stamped(r Record, st Stamp) Record {
	r.Allocated = st
	return r
}

// lost returns r lost since at.
func lost(r Record, at time.Time) Record {
	r.LostAt = at
	return r
}

func cloneRecords(rs []Record) []Record { return append([]Record(nil), rs...) }

// replace returns rs with the records of the same addresses replaced.
func replace(rs []Record, with ...Record) []Record {
	out := cloneRecords(rs)
	for _, w := range with {
		for i := range out {
			if out[i].IP == w.IP {
				out[i] = w
			}
		}
	}
	return out
}

func remove(rs []Record, ns ...int) []Record {
	var out []Record
	for _, r := range rs {
		keep := true
		for _, n := range ns {
			if r.IP == ip(n) {
				keep = false
			}
		}
		if keep {
			out = append(out, r)
		}
	}
	return out
}

func sortRecords(rs []Record) []Record {
	out := cloneRecords(rs)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].IP.Less(out[i].IP) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// lookup returns the listed record of an address.
func lookup(s *Store, a netip.Addr) (Record, bool) {
	for _, r := range s.List() {
		if r.IP == a {
			return r, true
		}
	}
	return Record{}, false
}

func TestGetListCounts(t *testing.T) {
	clk := &clock{now: t0}
	s := openTest(t, t.TempDir(), clk)
	must(s.AddFree(nic0, ips(1, 2, 3, 4)...))(t)
	a := must(s.Assign(owner("a")))(t)
	must(s.Assign(owner("b")))(t)
	_, _, err := s.Release(att("b"))
	mustDo(t, err)
	mustDo(t, s.MarkReleasing(ip(4)))

	got, ok := s.Get(att("a"))
	if !ok || got.IP != a.IP {
		t.Errorf("Get(a) = %v, %v; want %s", got, ok, a.IP)
	}
	if _, ok := s.Get(att("b")); !ok {
		t.Errorf("Get(b) of a cooling attachment: not found")
	}
	if r, ok := s.Get(att("zzz")); ok {
		t.Errorf("Get(zzz) = %v, want not found", r)
	}
	if r, ok := lookup(s, ip(4)); !ok || r.State != StateReleasing {
		t.Errorf("listed %s: %v, %v; want releasing", ip(4), r, ok)
	}
	want := Counts{Free: 1, Assigned: 1, Cooling: 1, Releasing: 1}
	if diff := cmp.Diff(want, s.Counts()); diff != "" {
		t.Errorf("Counts mismatch (-want +got):\n%s", diff)
	}
	if got := s.Counts().Total(); got != 4 {
		t.Errorf("Total = %d, want 4", got)
	}
	// List returns copies.
	l := s.List()
	l[0].State = StateReleasing
	if r, _ := lookup(s, l[0].IP); r.State == StateReleasing && l[0].IP != ip(4) {
		t.Errorf("List shares memory with the store")
	}
}

func TestBootID(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	steps := []struct {
		boot        string
		wantChanged bool
	}{
		{"boot-a", false}, // nothing recorded yet: a new store is not a reboot
		{"boot-a", false}, // same boot
		{"boot-b", true},  // rebooted
		{"boot-b", false},
	}
	for i, st := range steps {
		changed, err := s.SetBootID(st.boot)
		mustDo(t, err)
		if changed != st.wantChanged {
			t.Errorf("step %d: SetBootID(%q) = %v, want %v", i, st.boot, changed, st.wantChanged)
		}
	}
	mustDo(t, s.Close())
	// The boot id is durable: after a reopen the same boot is no change,
	// another one is.
	s = openTest(t, dir, clk)
	if changed := must(s.SetBootID("boot-b"))(t); changed {
		t.Errorf("SetBootID after reopen with the same boot: reported as changed")
	}
	if changed := must(s.SetBootID("boot-c"))(t); !changed {
		t.Errorf("SetBootID after reopen with a new boot: not reported as changed")
	}
}

// TestTornTail writes every kind of torn tail where the journal's next
// record would go, as a crash in the middle of a write leaves it (a prefix
// of the record over the zero fill), and checks that Open clears it, keeps
// every acknowledged record, and that the store keeps working and reopening
// afterwards. Tails that a crash cannot leave are damage (TestJournalDamage).
func TestTornTail(t *testing.T) {
	// A valid frame to cut: what the next change would have written.
	next := appendFrame(nil, []byte(`{"seq":99,"op":"add","put":[{"ip":"10.1.0.50","state":"free","since":"2025-01-01T12:00:00Z"}]}`))
	tails := map[string][]byte{
		"first byte of the magic": frameMagic[:1],
		"magic only":              frameMagic[:],
		"header cut":              next[:7],
		"header without checksum": next[:9],
		"header only":             next[:headerSize],
		"payload cut":             next[:len(next)-5],
		"all but the last byte":   next[:len(next)-1],
		"zeros":                   make([]byte, 4096),
		"frame of length zero":    append(frameMagic[:4:4], 0, 0, 0, 0, 0, 0, 0, 0),
		"frame header then noise": append(append([]byte(nil), next[:headerSize]...), []byte("{\"seq\":")...),
	}
	for name, tail := range tails {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &clock{now: t0}
			s := openTest(t, dir, clk)
			must(s.AddFree(nic0, ips(1, 2, 3)...))(t)
			must(s.Assign(owner("a")))(t)
			want := s.List()
			mustDo(t, s.Close())

			writeAtEnd(t, filepath.Join(dir, journalName), tail)
			s = openTest(t, dir, clk)
			if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
				t.Errorf("records after torn tail mismatch (-want +got):\n%s", diff)
			}
			// Zeros are the journal's free space, not a torn record.
			if got, want := s.Stats().Recovery.TruncatedBytes, int64(len(bytes.TrimRight(tail, "\x00"))); got != want {
				t.Errorf("TruncatedBytes = %d, want %d", got, want)
			}
			// The store goes on: new changes land after the cut and replay.
			r := must(s.Assign(owner("b")))(t)
			want = s.List()
			mustDo(t, s.Close())
			s = openTest(t, dir, clk)
			if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
				t.Errorf("records after second reopen mismatch (-want +got):\n%s", diff)
			}
			if got, ok := s.Get(att("b")); !ok || got.IP != r.IP {
				t.Errorf("Get(b) = %v, %v after reopen; want %s", got, ok, r.IP)
			}
			if st := s.Stats().Recovery; st.TruncatedBytes != 0 || st.Replayed != 3 {
				t.Errorf("second reopen recovery = %+v, want 3 replayed, nothing truncated", st)
			}
		})
	}
}

// TestJournalZeroFilled checks the journal's layout: records are written
// over zero-filled space that grows a chunk at a time, so the file's size
// stays a whole number of chunks ahead of the records, and the records
// written across a chunk boundary replay like any other.
func TestJournalZeroFilled(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s, err := Open(dir, Options{Now: clk.Now, CompactBytes: 8 * journalChunk})
	mustDo(t, err)
	must(s.AddFree(nic0, ips(1, 2, 3)...))(t)
	path := filepath.Join(dir, journalName)
	size := func() int64 {
		fi, err := os.Stat(path)
		mustDo(t, err)
		return fi.Size()
	}
	if got := size(); got != journalChunk {
		t.Fatalf("journal is %d bytes after the first record, want one chunk of %d", got, journalChunk)
	}
	changes := 1
	for i := 0; s.Stats().JournalBytes <= journalChunk; i++ {
		id := fmt.Sprintf("pod%d", i)
		must(s.Assign(owner(id)))(t)
		_, _, err := s.Release(att(id))
		mustDo(t, err)
		must(s.Promote(clk.Now(), 0))(t)
		changes += 3
	}
	if got := size(); got != 2*journalChunk {
		t.Errorf("journal is %d bytes with %d bytes of records, want two chunks", got, s.Stats().JournalBytes)
	}
	data, err := os.ReadFile(path)
	mustDo(t, err)
	if end := int64(len(bytes.TrimRight(data, "\x00"))); end != s.Stats().JournalBytes {
		t.Errorf("last non-zero byte of the journal at %d, records end at %d", end, s.Stats().JournalBytes)
	}
	want := s.List()
	mustDo(t, s.Close())

	s = openTest(t, dir, clk)
	if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
		t.Errorf("records after reopen mismatch (-want +got):\n%s", diff)
	}
	if st := s.Stats().Recovery; st.Replayed != changes || st.TruncatedBytes != 0 {
		t.Errorf("recovery = %+v, want %d replayed and nothing cleared", st, changes)
	}
	// Compaction starts a new journal that is zero-filled already.
	mustDo(t, s.Compact())
	if got := size(); got != journalChunk {
		t.Errorf("new journal after compaction is %d bytes, want %d", got, journalChunk)
	}
	if st := s.Stats(); st.JournalBytes != 0 {
		t.Errorf("records in the new journal: %d bytes, want 0", st.JournalBytes)
	}
}

// writeAtEnd writes b where the journal at path would take its next record:
// after the last frame, over the zero-filled space (a frame ends with the
// closing brace of its JSON, never with a zero byte).
func writeAtEnd(t *testing.T, path string, b []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	mustDo(t, err)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	mustDo(t, err)
	_, err = f.WriteAt(b, int64(len(bytes.TrimRight(data, "\x00"))))
	mustDo(t, errors.Join(err, f.Close()))
}

// TestCorruptionRefused checks that damage that is not a torn tail makes Open
// fail with ErrCorrupt instead of silently losing acknowledged records.
func TestCorruptionRefused(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
	}{
		{
			name: "flipped byte in the first journal record",
			damage: func(t *testing.T, dir string) {
				flipByte(t, filepath.Join(dir, journalName), headerSize+5)
			},
		},
		{
			name: "damaged snapshot",
			damage: func(t *testing.T, dir string) {
				flipByte(t, filepath.Join(dir, snapshotName), headerSize+5)
			},
		},
		{
			name: "truncated snapshot",
			damage: func(t *testing.T, dir string) {
				p := filepath.Join(dir, snapshotName)
				fi, err := os.Stat(p)
				mustDo(t, err)
				mustDo(t, os.Truncate(p, fi.Size()-1))
			},
		},
		{
			name: "a gap in the sequence",
			damage: func(t *testing.T, dir string) {
				writeAtEnd(t, filepath.Join(dir, journalName),
					appendFrame(nil, []byte(`{"seq":1000,"op":"add","put":[{"ip":"10.1.0.60","state":"free","since":"2025-01-01T12:00:00Z"}]}`)))
			},
		},
		{
			name: "records breaking the invariants",
			damage: func(t *testing.T, dir string) {
				s := must(Open(dir, Options{}))(t)
				seq := s.Stats().Seq
				mustDo(t, s.Close())
				// Give attachment "a" a second address.
				writeAtEnd(t, filepath.Join(dir, journalName), appendFrame(nil, []byte(fmt.Sprintf(
					`{"seq":%d,"op":"assign","put":[{"ip":"10.1.0.3","state":"assigned","owner":{"containerID":"a","ifName":"eth0"},"since":"2025-01-01T12:00:00Z"}]}`,
					seq+1))))
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &clock{now: t0}
			s := openTest(t, dir, clk)
			must(s.AddFree(nic0, ips(1, 2, 3)...))(t)
			must(s.Assign(owner("a")))(t)
			mustDo(t, s.Compact())
			must(s.Assign(owner("b")))(t)
			must(s.Assign(owner("c")))(t)
			mustDo(t, s.Close())

			tc.damage(t, dir)
			s2, err := Open(dir, Options{Now: clk.Now})
			if err == nil {
				_ = s2.Close()
				t.Fatal("Open of a damaged store succeeded")
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Open error = %v, want ErrCorrupt", err)
			}
			// A refused Open must release the lock.
			if _, err := lockDir(dir); err != nil {
				t.Errorf("lock after refused Open: %v", err)
			}
		})
	}
}

func flipByte(t *testing.T, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	mustDo(t, err)
	b[off] ^= 0x20
	mustDo(t, os.WriteFile(path, b, fileMode))
}

// TestCompaction drives the journal past a small threshold many times and
// checks that the state survives, that a crash between the snapshot and the
// journal switch is harmless, and that the journal stays small.
func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s, err := Open(dir, Options{Now: clk.Now, CompactBytes: 4096})
	mustDo(t, err)
	must(s.AddFree(nic0, ips(1, 2, 3, 4, 5, 6, 7, 8)...))(t)
	for i := range 200 {
		id := fmt.Sprintf("c%d", i%5)
		must(s.Assign(owner(id)))(t)
		if i%3 == 0 {
			_, _, err := s.Release(att(id))
			mustDo(t, err)
			clk.advance(time.Second)
			must(s.Promote(clk.Now(), 0))(t)
		}
	}
	st := s.Stats()
	if st.Compactions < 5 || st.LastCompactionError != nil {
		t.Errorf("stats = %+v, want several compactions and no error", st)
	}
	if st.JournalBytes >= 4096 {
		t.Errorf("journal is %d bytes, want below the threshold", st.JournalBytes)
	}
	want := s.List()
	wantSeq := st.Seq
	mustDo(t, s.Close())

	s = openTest(t, dir, clk)
	if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
		t.Errorf("records after reopen mismatch (-want +got):\n%s", diff)
	}
	if got := s.Stats().Seq; got != wantSeq {
		t.Errorf("seq after reopen = %d, want %d", got, wantSeq)
	}

	// Crash between the snapshot's rename and the journal switch: the old
	// journal, whose records the snapshot already holds, is still there.
	must(s.Assign(owner("late")))(t)
	oldJournal, err := os.ReadFile(filepath.Join(dir, journalName))
	mustDo(t, err)
	if len(oldJournal) == 0 {
		t.Fatal("journal empty before Compact")
	}
	mustDo(t, s.Compact())
	want = s.List()
	mustDo(t, s.Close())
	mustDo(t, os.WriteFile(filepath.Join(dir, journalName), oldJournal, fileMode))
	s = openTest(t, dir, clk)
	if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
		t.Errorf("records with a stale journal mismatch (-want +got):\n%s", diff)
	}
	if got := s.Stats().Recovery.Replayed; got != 0 {
		t.Errorf("replayed %d stale records, want 0", got)
	}
	// New records follow the stale ones and replay after the next reopen.
	r := must(s.Assign(owner("later")))(t)
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if got, ok := s.Get(att("later")); !ok || got.IP != r.IP {
		t.Errorf("Get(later) = %v, %v; want %s", got, ok, r.IP)
	}
}

func TestFileModes(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "store")
	// A pre-existing directory with a lax mode is tightened.
	mustDo(t, os.Mkdir(dir, 0o755))
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	must(s.AddFree(nic0, ip(1)))(t)
	mustDo(t, s.Compact())
	must(s.AddFree(nic0, ip(2)))(t)

	want := map[string]os.FileMode{
		".":          os.ModeDir | 0o700,
		lockName:     0o600,
		journalName:  0o600,
		snapshotName: 0o600,
	}
	got := map[string]os.FileMode{}
	for name := range want {
		fi, err := os.Stat(filepath.Join(dir, name))
		mustDo(t, err)
		got[name] = fi.Mode()
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modes mismatch (-want +got):\n%s", diff)
	}
}

func TestLockAndClose(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := must(Open(dir, Options{Now: clk.Now}))(t)
	if s2, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		if err == nil {
			_ = s2.Close()
		}
		t.Fatalf("second Open error = %v, want ErrLocked", err)
	}
	mustDo(t, s.Close())

	ops := map[string]func() error{
		"AddFree":       func() error { _, err := s.AddFree(nic0, ip(1)); return err },
		"Assign":        func() error { _, err := s.Assign(owner("a")); return err },
		"Release":       func() error { _, _, err := s.Release(att("a")); return err },
		"Promote":       func() error { _, err := s.Promote(t0, 0); return err },
		"MarkReleasing": func() error { return s.MarkReleasing(ip(1)) },
		"Remove":        func() error { return s.Remove(ip(1)) },
		"Reconcile":     func() error { _, err := s.Reconcile(onNIC(nic0, ip(1))); return err },
		"SetBootID":     func() error { _, err := s.SetBootID("x"); return err },
		"Compact":       s.Compact,
		"Close":         s.Close,
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: error = %v, want ErrClosed", name, err)
		}
	}
	s = openTest(t, dir, clk)
	if err := s.Validate(); err != nil {
		t.Errorf("Validate after reopen: %v", err)
	}
}

// TestWriteFailureRepaired makes the journal's writes fail (its descriptor
// is swapped for a read-only one) and checks that the change is neither
// applied nor acknowledged, that the store refuses changes while the failed
// record's space cannot be cleared, and that it takes changes again, without
// a reopen, once writes succeed: the record's space is zeroed first, so the
// journal holds nothing of the failed change.
func TestWriteFailureRepaired(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	must(s.AddFree(nic0, ips(1, 2)...))(t)
	mustDo(t, s.Probe())
	path := filepath.Join(dir, journalName)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	rw := s.journal
	s.journal = ro
	s.mu.Unlock()

	if _, err := s.Assign(owner("a")); !errors.Is(err, ErrUnwritable) {
		t.Fatalf("Assign with a failing journal: error = %v, want ErrUnwritable", err)
	}
	if _, ok := s.Get(att("a")); ok {
		t.Errorf("a failed Assign was applied in memory")
	}
	if _, err := s.AddFree(nic0, ip(3)); !errors.Is(err, ErrUnwritable) {
		t.Errorf("AddFree while the failed record cannot be cleared: error = %v, want ErrUnwritable", err)
	}
	if err := s.Probe(); !errors.Is(err, ErrUnwritable) {
		t.Errorf("Probe while writes fail: %v, want ErrUnwritable", err)
	}

	// Writes work again (the disk came back): the same store goes on.
	s.mu.Lock()
	s.journal = rw
	s.mu.Unlock()
	mustDo(t, ro.Close())
	mustDo(t, s.Probe())
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("the journal changed although no change was acknowledged")
	}
	r := must(s.Assign(owner("a")))(t)
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if got, ok := s.Get(att("a")); !ok || got.IP != r.IP {
		t.Errorf("after reopen a holds %v (%v), want %s", got.IP, ok, r.IP)
	}
	if diff := cmp.Diff(Counts{Free: 1, Assigned: 1}, s.Counts()); diff != "" {
		t.Errorf("Counts after reopen mismatch (-want +got):\n%s", diff)
	}
	if n := s.Stats().Recovery.TruncatedBytes; n != 0 {
		t.Errorf("reopen cleared %d bytes of a torn record", n)
	}
}

// TestValidateDetects breaks each invariant in memory and checks that Validate
// reports it (so the tests that rely on Validate can fail).
func TestValidateDetects(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(s *Store)
	}{
		{"two addresses for one attachment", func(s *Store) {
			r := s.records[ip(2)]
			r.State, r.Owner, r.AssignedAt = StateAssigned, owner("a"), t0
			s.records[ip(2)] = r
		}},
		{"unknown state", func(s *Store) {
			r := s.records[ip(2)]
			r.State = "lost"
			s.records[ip(2)] = r
		}},
		{"free address with an owner", func(s *Store) {
			r := s.records[ip(2)]
			r.Owner = owner("x")
			s.records[ip(2)] = r
		}},
		{"assigned address without owner", func(s *Store) {
			r := s.records[ip(1)]
			r.Owner = Owner{}
			s.records[ip(1)] = r
		}},
		{"stale index entry", func(s *Store) { s.byAttachment[att("ghost")] = ip(2) }},
		{"index pointing elsewhere", func(s *Store) { s.byAttachment[att("a")] = ip(2) }},
		{"no timestamp", func(s *Store) {
			r := s.records[ip(2)]
			r.Since = time.Time{}
			s.records[ip(2)] = r
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, t.TempDir(), &clock{now: t0})
			must(s.AddFree(nic0, ips(1, 2)...))(t)
			must(s.Assign(owner("a")))(t)
			if err := s.Validate(); err != nil {
				t.Fatalf("Validate before breaking: %v", err)
			}
			s.mu.Lock()
			tc.corrupt(s)
			s.mu.Unlock()
			if err := s.Validate(); err == nil {
				t.Errorf("Validate did not detect: %s", tc.name)
			}
		})
	}
}

// TestConcurrentAssignRelease runs 100 goroutines that assign and release
// concurrently (run it with -race) and checks that no address is ever held by
// two attachments at once.
func TestConcurrentAssignRelease(t *testing.T) {
	const (
		workers = 100
		rounds  = 8
	)
	s := openTest(t, t.TempDir(), &clock{now: t0})
	pool := make([]netip.Addr, 0, 60)
	for i := range 60 { // fewer addresses than workers: contention and ErrNoFree
		pool = append(pool, ip(i+1))
	}
	must(s.AddFree(nic0, pool...))(t)

	var mu sync.Mutex
	holder := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	stop := make(chan struct{})
	promoterDone := make(chan struct{})
	go func() { // recycles cooling addresses
		defer close(promoterDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Promote(t0, 0); err != nil {
				errs <- err
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("w%d", w)
			for done := 0; done < rounds; {
				r, err := s.Assign(owner(id))
				if errors.Is(err, ErrNoFree) {
					time.Sleep(100 * time.Microsecond)
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				// Idempotent while held.
				again, err := s.Assign(owner(id))
				if err != nil {
					errs <- err
					return
				}
				if again.IP != r.IP {
					errs <- fmt.Errorf("%s: repeated Assign gave %s, want %s", id, again.IP, r.IP)
					return
				}
				mu.Lock()
				if other, ok := holder[r.IP]; ok {
					mu.Unlock()
					errs <- fmt.Errorf("%s assigned to %s and %s", r.IP, other, id)
					return
				}
				holder[r.IP] = id
				mu.Unlock()

				mu.Lock()
				delete(holder, r.IP)
				mu.Unlock()
				if _, ok, err := s.Release(att(id)); err != nil || !ok {
					errs <- fmt.Errorf("%s: Release found=%v, error %v", id, ok, err) //nolint:errorlint // err may be nil
					return
				}
				// Let the promoter free it: another attachment may get it.
				done++
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-promoterDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	c := s.Counts()
	if c.Total() != len(pool) || c.Assigned != 0 {
		t.Errorf("Counts = %+v, want %d addresses, none assigned", c, len(pool))
	}
}

// TestOldJournalWithoutInterfaces opens a store written before records named
// their interface, byte for byte as that version wrote it: the records load
// without one, and the first Reconcile gives them the interface the cloud
// reports, keeping their state and owner.
func TestOldJournalWithoutInterfaces(t *testing.T) {
	dir := t.TempDir()
	var journal []byte
	for _, rec := range []string{
		`{"seq":1,"op":"boot","meta":{"bootID":"boot-a"}}`,
		`{"seq":2,"op":"add","put":[{"ip":"10.1.0.1","state":"free","since":"2025-01-01T12:00:00Z"},{"ip":"10.1.0.2","state":"free","since":"2025-01-01T12:00:00Z"}]}`,
		`{"seq":3,"op":"assign","put":[{"ip":"10.1.0.1","state":"assigned","owner":{"containerID":"a","ifName":"eth0","podNamespace":"default","podName":"pod-a","netns":"/var/run/netns/a"},"since":"2025-01-01T12:00:01Z","assignedAt":"2025-01-01T12:00:01Z"}]}`,
	} {
		journal = appendFrame(journal, []byte(rec))
	}
	journal = append(journal, make([]byte, 512)...)
	if err := os.WriteFile(filepath.Join(dir, journalName), journal, fileMode); err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: t0.Add(time.Minute)}
	s := openTest(t, dir, clk)
	at := t0.Add(time.Second)
	old := []Record{on("", assigned(1, "a", at)), on("", free(2, t0))}
	if diff := cmp.Diff(old, s.List(), cmpAddr); diff != "" {
		t.Fatalf("records of the old journal mismatch (-want +got):\n%s", diff)
	}
	res := must(s.Reconcile(onNIC(nic0, ip(1), ip(2))))(t)
	if diff := cmp.Diff(ReconcileResult{Moved: ips(1, 2)}, res, cmpAddr, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("reconcile result mismatch (-want +got):\n%s", diff)
	}
	want := []Record{assigned(1, "a", at), free(2, t0)}
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
		t.Errorf("records after reconcile and reopen mismatch (-want +got):\n%s", diff)
	}
	if r, ok := s.Get(att("a")); !ok || r.Interface != nic0 {
		t.Errorf("Get(a) = %+v, %v; want the assignment on %s", r, ok, nic0)
	}
}

// TestOpenRemovesTemporaryFiles checks that Open clears what a crash in the
// middle of a compaction leaves: the snapshot's temporary file (written by
// internal/atomicfile) and the next journal's.
func TestOpenRemovesTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	must(s.AddFree(nic0, ip(1)))(t)
	mustDo(t, s.Compact())
	mustDo(t, s.Close())
	leftovers := []string{".snapshot.tmp123456", journalName + tmpSuffix}
	for _, name := range leftovers {
		mustDo(t, os.WriteFile(filepath.Join(dir, name), []byte("half"), fileMode))
	}
	s = openTest(t, dir, clk)
	for _, name := range leftovers {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Open: %v", name, err)
		}
	}
	if diff := cmp.Diff([]Record{free(1, t0)}, s.List(), cmpAddr); diff != "" {
		t.Errorf("records mismatch (-want +got):\n%s", diff)
	}
}
