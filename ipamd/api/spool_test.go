package api

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, dir string, r PendingRelease) {
	t.Helper()
	if err := SpoolRelease(dir, r.ContainerID, r.IfName, r.Stamp()); err != nil {
		t.Fatal(err)
	}
}

func TestDrainSpoolSpool(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	write(t, dir, PendingRelease{ContainerID: "a", IfName: "eth0", At: at})
	write(t, dir, PendingRelease{ContainerID: "b", IfName: "eth0", At: at})
	write(t, dir, PendingRelease{ContainerID: "fail", IfName: "eth0", At: at})
	if err := os.WriteFile(filepath.Join(dir, "bad"+spoolSuffix), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "unrelated.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	n, err := DrainSpool(dir, func(r PendingRelease) error {
		if r.ContainerID == "fail" {
			return errors.New("daemon said no")
		}
		got = append(got, r.ContainerID+"/"+r.IfName)
		return nil
	})
	if err == nil {
		t.Error("Drain hid the failed release and the malformed file")
	}
	sort.Strings(got)
	if n != 2 || !cmp.Equal(got, []string{"a/eth0", "b/eth0"}) {
		t.Errorf("released %d: %v, want a/eth0 and b/eth0", n, got)
	}
	left, _ := os.ReadDir(dir)
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	want := []string{spoolFileName("fail", "eth0"), "unrelated.txt"}
	sort.Strings(want)
	if !cmp.Equal(names, want) {
		t.Errorf("left in spool %v, want %v (the failed one kept for a retry, the malformed one removed)", names, want)
	}
}

func TestDrainSpoolMissingDir(t *testing.T) {
	n, err := DrainSpool(filepath.Join(t.TempDir(), "none"), func(PendingRelease) error { return nil })
	if n != 0 || err != nil {
		t.Errorf("Drain of a missing dir = %d, %v", n, err)
	}
}

func TestSpoolFileNameDistinct(t *testing.T) {
	if spoolFileName("a", "eth0") == spoolFileName("a", "eth1") || spoolFileName("ab", "c") == spoolFileName("a", "bc") {
		t.Error("file names collide")
	}
}

// TestSpoolRoundTrip writes a release the way the plugin does and drains it
// the way the daemon does: the file is private, in a private directory, and
// carries the attachment and the stamp of the DEL.
func TestSpoolRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.FixedZone("x", 3600))
	if err := SpoolRelease(dir, "c1", "eth0", Stamp{Boot: 5, BootID: "b", Wall: at}); err != nil {
		t.Fatal(err)
	}
	if err := SpoolRelease(dir, "c1", "eth0", Stamp{Boot: 6, BootID: "b", Wall: at.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, spoolFileName("c1", "eth0")): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	var got []PendingRelease
	n, err := DrainSpool(dir, func(r PendingRelease) error {
		got = append(got, r)
		return nil
	})
	if err != nil || n != 1 {
		t.Fatalf("DrainSpool = %d, %v; want 1, nil", n, err)
	}
	want := []PendingRelease{{ContainerID: "c1", IfName: "eth0", At: at.Add(time.Second).UTC(), Boot: 6, BootID: "b"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("drained (-want +got):\n%s", d)
	}
}

// TestSpoolOldFile drains a file written before releases carried a boot
// clock stamp: it loads, and its stamp is its wall-clock time.
func TestSpoolOldFile(t *testing.T) {
	dir := t.TempDir()
	old := `{"containerID":"c1","ifName":"eth0","at":"2026-11-30T08:00:00Z"}`
	if err := os.WriteFile(filepath.Join(dir, spoolFileName("c1", "eth0")), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []Stamp
	if n, err := DrainSpool(dir, func(r PendingRelease) error {
		got = append(got, r.Stamp())
		return nil
	}); n != 1 || err != nil {
		t.Fatalf("DrainSpool = %d, %v; want 1, nil", n, err)
	}
	want := []Stamp{{Wall: time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("stamp of an old spool file (-want +got):\n%s", d)
	}
}

// TestNewStampOrders reads the boot clock twice: it moves forward, and both
// stamps name the same boot.
func TestNewStampOrders(t *testing.T) {
	a := NewStamp()
	time.Sleep(time.Millisecond)
	b := NewStamp()
	if a.Boot == 0 || a.BootID == "" {
		t.Skipf("no boot clock or boot id here: %+v", a)
	}
	if b.Boot <= a.Boot || a.BootID != b.BootID || b.Wall.Before(a.Wall) {
		t.Errorf("stamps %+v then %+v, want the second later in the same boot", a, b)
	}
}
