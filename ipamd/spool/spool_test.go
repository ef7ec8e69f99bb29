package spool

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func write(t *testing.T, dir string, r Release) {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileName(r.ContainerID, r.IfName)), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDrain(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	write(t, dir, Release{ContainerID: "a", IfName: "eth0", At: at})
	write(t, dir, Release{ContainerID: "b", IfName: "eth0", At: at})
	write(t, dir, Release{ContainerID: "fail", IfName: "eth0", At: at})
	if err := os.WriteFile(filepath.Join(dir, "bad"+suffix), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "unrelated.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	n, err := Drain(dir, func(r Release) error {
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
	want := []string{FileName("fail", "eth0"), "unrelated.txt"}
	sort.Strings(want)
	if !cmp.Equal(names, want) {
		t.Errorf("left in spool %v, want %v (the failed one kept for a retry, the malformed one removed)", names, want)
	}
}

func TestDrainMissingDir(t *testing.T) {
	n, err := Drain(filepath.Join(t.TempDir(), "none"), func(Release) error { return nil })
	if n != 0 || err != nil {
		t.Errorf("Drain of a missing dir = %d, %v", n, err)
	}
}

func TestFileNameDistinct(t *testing.T) {
	if FileName("a", "eth0") == FileName("a", "eth1") || FileName("ab", "c") == FileName("a", "bc") {
		t.Error("file names collide")
	}
}
