package integration

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// execCopyForOtherUID returns a copy of the executable at path in a fresh
// directory that any uid can traverse, removed when the test ends. A test
// that runs a binary as another uid (65534) must not exec it from the
// checkout: the checkout may sit under a directory only its owner can
// enter (mktemp -d makes it 0700), and the exec would fail with EACCES
// before the binary ran.
func execCopyForOtherUID(t *testing.T, path string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vnet-otheruid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Every directory above the copy must be searchable by others too.
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("%s (mode %v) is not searchable by other uids: set TMPDIR to a directory they can reach", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	src, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, filepath.Base(path))
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, src); err != nil {
		_ = out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}
