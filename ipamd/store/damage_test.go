package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// frameAt is one journal record as it lies in the file.
type frameAt struct{ off, size int }

// framesOf lists the intact records of a journal.
func framesOf(data []byte) []frameAt {
	var out []frameAt
	for off := 0; off < len(data); {
		_, n, err := readFrame(data[off:])
		if err != nil {
			break
		}
		out = append(out, frameAt{off, n})
		off += n
	}
	return out
}

// damagedStore is a store with four records (add, then three assignments)
// and, with snapshot, a compaction after the first assignment; states[i]
// is the state after the i-th record of the journal (states[0] before it).
type damagedStore struct {
	dir    string
	clk    *clock
	states [][]Record
}

func newDamagedStore(t *testing.T, snapshot bool) *damagedStore {
	t.Helper()
	ds := &damagedStore{dir: t.TempDir(), clk: &clock{now: t0}}
	s := openTest(t, ds.dir, ds.clk)
	ds.states = append(ds.states, s.List())
	must(s.AddFree(nic0, ips(1, 2, 3, 4, 5, 6)...))(t)
	ds.states = append(ds.states, s.List())
	for i, id := range []string{"a", "b", "c"} {
		ds.clk.advance(time.Second)
		must(s.Assign(owner(id)))(t)
		if i == 0 && snapshot {
			mustDo(t, s.Compact())
			ds.states = [][]Record{s.List()}
			continue
		}
		ds.states = append(ds.states, s.List())
	}
	mustDo(t, s.Close())
	return ds
}

func (ds *damagedStore) journal(t *testing.T) ([]byte, []frameAt) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(ds.dir, journalName))
	mustDo(t, err)
	return data, framesOf(data)
}

func (ds *damagedStore) writeJournal(t *testing.T, data []byte) {
	t.Helper()
	mustDo(t, os.WriteFile(filepath.Join(ds.dir, journalName), data, fileMode))
}

// TestJournalDamage damages a store's files in every way the issue lists
// (and a few more) and checks what Open makes of it: a damaged store is
// refused without Options.Salvage; with it, the damaged files are moved
// aside unchanged, the intact records before the damage are kept, and the
// store is marked as recovering until EndRecovery. Damage the files cannot
// show (an emptied or zeroed journal without a snapshot, a deleted
// directory) opens as an empty store, Recovery.Empty, for the daemon to
// judge with the datapath.
func TestJournalDamage(t *testing.T) {
	tests := []struct {
		name     string
		snapshot bool
		damage   func(t *testing.T, ds *damagedStore)
		// damaged: Open finds damage; want is the index in states of what
		// is kept (or -1: nothing), else of what Open reads.
		damaged bool
		want    int
		empty   bool
	}{
		{name: "flipped byte in the last record", damaged: true, want: 3, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			last := fr[len(fr)-1]
			data[last.off+last.size/2] ^= 0x01
			ds.writeJournal(t, data)
		}},
		{name: "flipped byte in the last record's length", damaged: true, want: 3, damage: func(t *testing.T, ds *damagedStore) {
			// A longer length looks like a record cut by a crash, but its
			// payload is complete.
			data, fr := ds.journal(t)
			data[fr[len(fr)-1].off+5] ^= 0x01
			ds.writeJournal(t, data)
		}},
		{name: "flipped byte in the last record's checksum", damaged: true, want: 3, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			data[fr[len(fr)-1].off+8] ^= 0x01
			ds.writeJournal(t, data)
		}},
		{name: "flipped byte in a record in the middle", damaged: true, want: 1, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			data[fr[1].off+fr[1].size/2] ^= 0x01
			ds.writeJournal(t, data)
		}},
		{name: "truncated inside the last record", damaged: true, want: 3, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			last := fr[len(fr)-1]
			ds.writeJournal(t, data[:last.off+last.size/2])
		}},
		{name: "truncated inside the last record's header", damaged: true, want: 3, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			ds.writeJournal(t, data[:fr[len(fr)-1].off+6])
		}},
		{name: "truncated at a record boundary", damaged: true, want: 2, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			ds.writeJournal(t, data[:fr[2].off])
		}},
		{name: "a file of zeros", empty: true, want: 0, damage: func(t *testing.T, ds *damagedStore) {
			data, _ := ds.journal(t)
			ds.writeJournal(t, make([]byte, len(data)))
		}},
		{name: "a file of zeros longer than a journal without records", damaged: true, want: -1, damage: func(t *testing.T, ds *damagedStore) {
			ds.writeJournal(t, make([]byte, 2*journalChunk))
		}},
		{name: "an empty file", empty: true, want: 0, damage: func(t *testing.T, ds *damagedStore) {
			ds.writeJournal(t, nil)
		}},
		{name: "random garbage", damaged: true, want: -1, damage: func(t *testing.T, ds *damagedStore) {
			data, _ := ds.journal(t)
			_, _ = rand.Read(data)
			data[0] = 'x' // not even by chance a frame's magic
			ds.writeJournal(t, data)
		}},
		{name: "garbage after the last record", damaged: true, want: 4, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			last := fr[len(fr)-1]
			copy(data[last.off+last.size:], "this is not a record\n")
			ds.writeJournal(t, data)
		}},
		{name: "a complete record with a bad checksum after the last", damaged: true, want: 4, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			last := fr[len(fr)-1]
			bad := appendFrame(nil, []byte(`{"seq":5,"op":"add","put":[{"ip":"10.1.0.50","state":"free","since":"2025-01-01T12:00:00Z"}]}`))
			bad[len(bad)-3] ^= 0x01
			copy(data[last.off+last.size:], bad)
			ds.writeJournal(t, data)
		}},
		{name: "a record with an impossible length after the last", damaged: true, want: 4, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			last := fr[len(fr)-1]
			hdr := binary.LittleEndian.AppendUint32(frameMagic[:4:4], 0x7fffffff)
			copy(data[last.off+last.size:], append(hdr, 1, 2, 3, 4))
			ds.writeJournal(t, data)
		}},
		{name: "deleted store directory", empty: true, want: 0, damage: func(t *testing.T, ds *damagedStore) {
			mustDo(t, os.RemoveAll(ds.dir))
		}},
		{name: "an empty journal beside the snapshot", snapshot: true, damaged: true, want: 0, damage: func(t *testing.T, ds *damagedStore) {
			ds.writeJournal(t, nil)
		}},
		{name: "journal deleted beside the snapshot", snapshot: true, damaged: true, want: 0, damage: func(t *testing.T, ds *damagedStore) {
			mustDo(t, os.Remove(filepath.Join(ds.dir, journalName)))
		}},
		{name: "flipped byte in the snapshot", snapshot: true, damaged: true, want: -2, damage: func(t *testing.T, ds *damagedStore) {
			flipByte(t, filepath.Join(ds.dir, snapshotName), headerSize+20)
		}},
		{name: "truncated at a record boundary after the snapshot", snapshot: true, damaged: true, want: 1, damage: func(t *testing.T, ds *damagedStore) {
			data, fr := ds.journal(t)
			ds.writeJournal(t, data[:fr[1].off])
		}},
		// What the files cannot show: a compacted journal replaced by
		// zeros is a journal without records. The daemon's witness still
		// protects every live pod.
		{name: "zeros beside the snapshot", snapshot: true, want: 0, damage: func(t *testing.T, ds *damagedStore) {
			ds.writeJournal(t, make([]byte, journalChunk))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ds := newDamagedStore(t, tc.snapshot)
			tc.damage(t, ds)
			before := map[string][]byte{}
			for _, name := range []string{journalName, snapshotName} {
				if b, err := os.ReadFile(filepath.Join(ds.dir, name)); err == nil {
					before[name] = b
				}
			}

			// Without Salvage: refused, or opened as it is.
			s, err := Open(ds.dir, Options{Now: ds.clk.Now})
			switch {
			case tc.damaged && err == nil:
				_ = s.Close()
				t.Fatal("Open without Salvage accepted the damaged store")
			case tc.damaged && !errors.Is(err, ErrCorrupt):
				t.Fatalf("Open error = %v, want ErrCorrupt", err)
			case tc.damaged:
				t.Logf("refused: %v", err)
				l, err := lockDir(ds.dir)
				if err != nil {
					t.Fatalf("lock after refused Open: %v", err)
				}
				mustDo(t, l.Close())
			case err != nil:
				t.Fatalf("Open: %v", err)
			default:
				rec := s.Stats().Recovery
				if rec.Empty != tc.empty || rec.Damage != "" {
					t.Errorf("recovery %+v, want empty %v and no damage", rec, tc.empty)
				}
				if diff := cmp.Diff(ds.states[tc.want], s.List(), cmpAddr); diff != "" {
					t.Errorf("records (-want +got):\n%s", diff)
				}
				mustDo(t, s.Close())
				return
			}

			// With Salvage: the intact part, the damaged files kept.
			s, err = Open(ds.dir, Options{Now: ds.clk.Now, Salvage: true})
			mustDo(t, err)
			rec := s.Stats().Recovery
			t.Logf("salvaged: %+v", rec)
			if rec.Damage == "" || rec.Empty {
				t.Errorf("recovery %+v, want the damage described", rec)
			}
			want := []Record{}
			switch tc.want {
			case -1:
			case -2:
				// The snapshot's base is lost: the journal's later records.
				want = []Record{assigned(2, "b", t0.Add(2*time.Second)), assigned(3, "c", t0.Add(3*time.Second))}
			default:
				want = ds.states[tc.want]
			}
			if diff := cmp.Diff(want, s.List(), cmpAddr, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
				t.Errorf("salvaged records (-want +got):\n%s", diff)
			}
			if rec.Salvaged != len(want) {
				t.Errorf("Salvaged = %d, want %d", rec.Salvaged, len(want))
			}
			if len(rec.MovedAside) != len(before) {
				t.Errorf("moved aside %v, want the %d damaged files", rec.MovedAside, len(before))
			}
			for _, p := range rec.MovedAside {
				name, _, _ := strings.Cut(filepath.Base(p), damagedSuffix)
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, before[name]) {
					t.Errorf("%s: not the damaged %s unchanged (%v)", p, name, err)
				}
			}
			if m, ok := s.Recovering(); !ok || m.Kind != RecoveryDamaged || m.Reason != rec.Damage {
				t.Errorf("Recovering() = %+v, %v; want kind damaged with the damage as reason", m, ok)
			}
			// The salvaged store works and reopens as it is, still recovering.
			must(s.AddFree(nic0, ip(9)))(t)
			r := must(s.Assign(owner("d")))(t)
			want = s.List()
			mustDo(t, s.Close())
			s = openTest(t, ds.dir, ds.clk)
			if diff := cmp.Diff(want, s.List(), cmpAddr); diff != "" {
				t.Errorf("records after reopening the salvaged store (-want +got):\n%s", diff)
			}
			if got, ok := s.Get(att("d")); !ok || got.IP != r.IP {
				t.Errorf("Get(d) = %v, %v; want %s", got, ok, r.IP)
			}
			if rec := s.Stats().Recovery; rec.Damage != "" || rec.Empty {
				t.Errorf("recovery of the reopened salvaged store: %+v", rec)
			}
			if _, ok := s.Recovering(); !ok {
				t.Error("the recovery mark did not survive a reopen")
			}
			mustDo(t, s.EndRecovery())
			mustDo(t, s.Close())
			s = openTest(t, ds.dir, ds.clk)
			if m, ok := s.Recovering(); ok {
				t.Errorf("recovery mark %+v after EndRecovery", m)
			}
		})
	}
}

// TestFreshStoreIsEmpty: a new store is Recovery.Empty, and one that ever
// held a record is not, even with nothing left in it.
func TestFreshStoreIsEmpty(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	if !s.Stats().Recovery.Empty {
		t.Error("a new store is not Empty")
	}
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if !s.Stats().Recovery.Empty {
		t.Error("a reopened store that never held a record is not Empty")
	}
	_, err := s.SetBootID("boot-1")
	mustDo(t, err)
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if s.Stats().Recovery.Empty {
		t.Error("a store with a record is Empty")
	}
	mustDo(t, s.Compact())
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if s.Stats().Recovery.Empty {
		t.Error("a compacted store is Empty")
	}
}

// TestDamagedFilesKept: each salvage keeps its damaged files, up to the
// three newest sets.
func TestDamagedFilesKept(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	for i := range 5 {
		s, err := Open(dir, Options{Now: clk.Now, Salvage: true})
		mustDo(t, err)
		must(s.AddFree(nic0, ip(i+1)))(t)
		mustDo(t, s.Close())
		writeAtEnd(t, filepath.Join(dir, journalName), []byte("garbage"))
		clk.advance(time.Second)
	}
	s, err := Open(dir, Options{Now: clk.Now, Salvage: true})
	mustDo(t, err)
	defer s.Close()
	kept, err := filepath.Glob(filepath.Join(dir, "*"+damagedSuffix+"*"))
	mustDo(t, err)
	// Each set is the snapshot of the previous salvage and its journal.
	if len(kept) != 2*keepDamaged {
		t.Errorf("kept %d damaged files, want %d: %v", len(kept), 2*keepDamaged, kept)
	}
	for _, p := range kept {
		if strings.HasSuffix(p, t0.Add(time.Second).Format("20060102T150405.000000000Z")) {
			t.Errorf("an old damaged file was kept: %s", p)
		}
	}
	// Every salvage kept what was intact: one address per round.
	if got := s.Counts().Free; got != 5 {
		t.Errorf("%d free addresses after five salvages, want 5", got)
	}
}

// TestBeginRecovery: the mark is durable, kept by a second Begin, and
// survives other metadata changes.
func TestBeginRecovery(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	if _, ok := s.Recovering(); ok {
		t.Fatal("a new store is recovering")
	}
	mustDo(t, s.BeginRecovery(RecoveryLost, "the store was empty"))
	clk.advance(time.Minute)
	mustDo(t, s.BeginRecovery(RecoveryDamaged, "second"))
	_, err := s.SetBootID("boot-1")
	mustDo(t, err)
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	m, ok := s.Recovering()
	if want := (RecoveryMark{Kind: RecoveryLost, Reason: "the store was empty", Since: t0}); !ok || m != want {
		t.Errorf("Recovering() = %+v, %v; want %+v", m, ok, want)
	}
	mustDo(t, s.EndRecovery())
	mustDo(t, s.Compact())
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if _, ok := s.Recovering(); ok {
		t.Error("still recovering after EndRecovery")
	}
}
