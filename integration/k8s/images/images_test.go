package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// untar returns the regular files of a tarball by name.
func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
		if h.Name == "pause" && h.Mode != 0o755 {
			t.Errorf("program mode %o, want 755", h.Mode)
		}
	}
}

func blob(t *testing.T, files map[string][]byte, d Descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Digest[len("sha256:"):]]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: digest %s size %d, descriptor says %d", d.Digest, got, len(b), d.Size)
	}
	return b
}

// TestTarballLayout follows index.json to the manifest, the config and the
// layer, checking every digest and size, the reference containerd's
// importer reads and the program inside the layer.
func TestTarballLayout(t *testing.T) {
	prog := []byte("\x7fELF not really")
	img := Image{Ref: Pause, Path: "/pause", Args: []string{"-v"}}
	b, err := Tarball(img, prog)
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, b)
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", got)
	}
	var idx index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(idx.Manifests))
	}
	md := idx.Manifests[0]
	if md.Annotations["io.containerd.image.name"] != Pause || md.Annotations["org.opencontainers.image.ref.name"] != "1" {
		t.Errorf("manifest annotations %v", md.Annotations)
	}
	var man manifest
	if err := json.Unmarshal(blob(t, files, md), &man); err != nil {
		t.Fatal(err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(blob(t, files, man.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/pause", "-v"}, cfg.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	if len(man.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != man.Layers[0].Digest {
		t.Fatalf("layers %v, diff ids %v", man.Layers, cfg.RootFS.DiffIDs)
	}
	layer := untar(t, blob(t, files, man.Layers[0]))
	if !bytes.Equal(layer["pause"], prog) {
		t.Errorf("layer's /pause differs from the program")
	}
	// The same program gives the same image.
	again, err := Tarball(img, prog)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again) {
		t.Error("two tarballs of one program differ")
	}
}

func TestTarballRefusesNestedPath(t *testing.T) {
	for _, p := range []string{"pause", "/bin/pause", ""} {
		if _, err := Tarball(Image{Ref: Pause, Path: p}, []byte("x")); err == nil {
			t.Errorf("path %q accepted", p)
		}
	}
}

func TestName(t *testing.T) {
	for ref, want := range map[string]string{Pause: "pause", TestServer: "testserver", "x/y/z:2": "z", "plain": "plain"} {
		if got := name(ref); got != want {
			t.Errorf("name(%q) = %q, want %q", ref, got, want)
		}
	}
}
