package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// smallTmpfs mounts a tmpfs of size bytes on a fresh directory, unmounted
// when the test ends; it skips without root.
func smallTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, fmt.Sprintf("mode=0700,size=%d", size)); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a ballast file into dir until its filesystem is full, then
// gives spare bytes back (less than a journal chunk: an extension of the
// journal then fails halfway).
func fill(t *testing.T, dir string, spare int64) string {
	t.Helper()
	path := filepath.Join(dir, "ballast")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, 64<<10)
	for n := len(buf); n > 0; {
		if _, err := f.Write(buf[:n]); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("ballast: %v", err)
			}
			n /= 2
		}
	}
	if spare > 0 {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(fi.Size() - spare); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// storeFiles returns the content of every file of the store directory but
// the ballast and the lock, by name.
func storeFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if e.Name() == "ballast" || e.Name() == lockName {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

// changedFiles names the files that differ between two storeFiles.
func changedFiles(a, b map[string][]byte) []string {
	var out []string
	for name, data := range a {
		if other, ok := b[name]; !ok || !bytes.Equal(data, other) {
			out = append(out, name)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			out = append(out, name)
		}
	}
	return out
}

// reserve is the zero-filled journal space left ahead of the next record.
func (s *Store) reserve() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.journalSize - s.journalBytes
}

// TestDiskFull runs the store on a small tmpfs that a ballast file fills
// (all but 64 KiB, so that extending the journal fails halfway):
// changes go on into the journal's reserve, Probe reports the full disk
// first, and the change that finds no space left fails with ErrUnwritable,
// is not applied, and leaves every file byte for byte as before. Once the
// ballast is gone the same store takes changes again, and a reopen finds
// every acknowledged change and no torn record.
func TestDiskFull(t *testing.T) {
	dir := smallTmpfs(t, 2<<20)
	clk := &clock{now: t0}
	s := openTest(t, dir, clk)
	must(s.AddFree(nic0, ips(1, 2, 3, 4)...))(t)
	mustDo(t, s.Probe())
	ballast := fill(t, dir, 64<<10)

	// One attachment takes and releases its address, one record each,
	// until the journal's reserve is used up.
	a := att("a")
	held := false // the last acknowledged state of a
	probeFailed := -1
	var failed, err error
	var before map[string][]byte // the files before the change
	i := 0
	for ; i < 10000; i++ {
		// Copies of the files only where a change may find no space.
		near := s.reserve() < 8<<10
		if near {
			before = storeFiles(t, dir)
		}
		if held {
			_, _, failed = s.Release(a)
		} else {
			_, failed = s.Assign(owner("a"))
		}
		if failed != nil {
			break
		}
		held = !held
		var files map[string][]byte
		if near || probeFailed < 0 {
			files = storeFiles(t, dir)
		}
		err = s.Probe()
		switch {
		case err == nil:
			if probeFailed >= 0 {
				t.Fatalf("Probe after change %d succeeded on a full disk", i)
			}
		case !errors.Is(err, ErrUnwritable) || !errors.Is(err, unix.ENOSPC):
			t.Fatalf("Probe after change %d: %v, want ErrUnwritable with ENOSPC", i, err)
		case probeFailed < 0:
			probeFailed = i
			t.Logf("Probe failed after change %d: %v", i, err)
			fallthrough
		default:
			if files == nil {
				break
			}
			if d := changedFiles(files, storeFiles(t, dir)); len(d) > 0 {
				t.Fatalf("the failed Probe after change %d changed %v", i, d)
			}
		}
	}
	if failed == nil {
		t.Fatal("no change failed on a full disk")
	}
	t.Logf("change %d failed: %v", i, failed)
	if !errors.Is(failed, ErrUnwritable) || !errors.Is(failed, unix.ENOSPC) {
		t.Fatalf("change %d on a full disk: %v, want ErrUnwritable with ENOSPC", i, failed)
	}
	if probeFailed < 0 || i-probeFailed < 100 {
		t.Errorf("Probe first failed after change %d, the changes after change %d: want Probe to notice first, with room to spare", probeFailed, i)
	}
	if before == nil {
		t.Fatal("no copy of the files before the failed change")
	}
	if d := changedFiles(before, storeFiles(t, dir)); len(d) > 0 {
		t.Errorf("the failed change changed %v", d)
	}
	if r, ok := s.Get(a); (ok && r.State == StateAssigned) != held {
		t.Errorf("after the failed change a is %q, its last acknowledged change left it assigned=%v", r.State, held)
	}
	// Still full: the same change fails again the same way.
	before = storeFiles(t, dir)
	if held {
		_, _, err = s.Release(a)
	} else {
		_, err = s.Assign(owner("a"))
	}
	if !errors.Is(err, ErrUnwritable) {
		t.Errorf("the change again on a full disk: %v, want ErrUnwritable", err)
	}
	if d := changedFiles(before, storeFiles(t, dir)); len(d) > 0 {
		t.Errorf("the failed change changed %v", d)
	}

	mustDo(t, os.Remove(ballast))
	mustDo(t, s.Probe())
	must(s.AddFree(nic0, ip(9)))(t)
	if held {
		must3(s.Release(a))(t)
	} else {
		must(s.Assign(owner("a")))(t)
	}
	want := s.List()
	mustDo(t, s.Close())

	s = openTest(t, dir, clk)
	if d := cmp.Diff(want, s.List(), cmpAddr); d != "" {
		t.Errorf("after reopen (-acknowledged +on disk):\n%s", d)
	}
	if n := s.Stats().Recovery.TruncatedBytes; n != 0 {
		t.Errorf("reopen cleared %d bytes of a half-written record", n)
	}
}

// TestDiskFullCompaction: a compaction that finds the disk full (the
// snapshot, then the new journal) loses nothing, leaves no temporary file
// and is retried; the changes that triggered it are durable and the store
// goes on from its journal's reserve. With space back the next change
// compacts.
func TestDiskFullCompaction(t *testing.T) {
	dir := smallTmpfs(t, 2<<20)
	clk := &clock{now: t0}
	s, err := Open(dir, Options{Now: clk.Now, CompactBytes: 2 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var addrs []int
	for i := 1; i <= 40; i++ {
		addrs = append(addrs, i)
	}
	must(s.AddFree(nic0, ips(addrs...)...))(t)
	ballast := fill(t, dir, 0)
	compactions := s.Stats().Compactions
	for i := range 20 {
		if _, err := s.Assign(owner(fmt.Sprint("c", i))); err != nil {
			t.Fatalf("Assign %d with the journal's reserve: %v", i, err)
		}
	}
	st := s.Stats()
	if st.Compactions != compactions || !errors.Is(st.LastCompactionError, unix.ENOSPC) {
		t.Fatalf("compactions %d (before %d), last error %v: want none done and ENOSPC", st.Compactions, compactions, st.LastCompactionError)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), tmpSuffix) {
			t.Errorf("temporary file %s left by a failed compaction", e.Name())
		}
	}

	mustDo(t, os.Remove(ballast))
	must(s.Assign(owner("after")))(t)
	if st := s.Stats(); st.Compactions == compactions || st.LastCompactionError != nil {
		t.Errorf("with space back: compactions %d (before %d), last error %v", st.Compactions, compactions, st.LastCompactionError)
	}
	want := s.List()
	mustDo(t, s.Close())
	s = openTest(t, dir, clk)
	if d := cmp.Diff(want, s.List(), cmpAddr); d != "" {
		t.Errorf("after reopen (-acknowledged +on disk):\n%s", d)
	}
}

func must3[A, B any](a A, b B, err error) func(*testing.T) {
	return func(t *testing.T) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}
