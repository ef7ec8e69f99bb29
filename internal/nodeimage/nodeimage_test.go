package nodeimage

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildBinaries builds vnet-ipamd and vnet-cni as make build does into dir.
func buildBinaries(t *testing.T, dir string) {
	t.Helper()
	for _, pkg := range []string{"ipamd/cmd/vnet-ipamd", "cni/cmd/vnet-cni"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, filepath.Base(pkg)),
			"github.com/vnet-cni/vnet-cni/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v: %s", pkg, err, out)
		}
	}
}

// TestBuildReproducible builds the binaries twice, into two directories,
// and the image from each: the same bytes, the same digest.
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds vnet-ipamd and vnet-cni twice")
	}
	var results [2][]byte
	var digests [2]string
	ca := ""
	if _, err := os.Stat(DefaultCABundle); err == nil {
		ca = DefaultCABundle
	}
	for i := range results {
		dir := t.TempDir()
		buildBinaries(t, dir)
		res, err := Build(Options{IPAMD: filepath.Join(dir, "vnet-ipamd"), Plugin: filepath.Join(dir, "vnet-cni"), CABundle: ca})
		if err != nil {
			t.Fatal(err)
		}
		results[i], digests[i] = res.Tarball, res.ManifestDigest
		t.Logf("build %d: %s, %d bytes (layer %d)", i+1, res.ManifestDigest, len(res.Tarball), res.LayerSize)
	}
	if digests[0] != digests[1] || !bytes.Equal(results[0], results[1]) {
		t.Errorf("two builds differ: %s vs %s", digests[0], digests[1])
	}
}

func TestBuildRefusesDynamicBinary(t *testing.T) {
	dynamic := "/bin/true"
	if _, err := os.Stat(dynamic); err != nil {
		t.Skip("no /bin/true")
	}
	_, err := Build(Options{IPAMD: dynamic, Plugin: dynamic})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("err = %v, want dynamically linked", err)
	}
	if _, err := Build(Options{IPAMD: "/nonexistent", Plugin: dynamic}); err == nil {
		t.Error("a missing binary accepted")
	}
}
