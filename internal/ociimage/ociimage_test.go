package ociimage

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

type entry struct {
	name string
	mode int64
	data []byte
}

// untar returns a tarball's entries in order, checking the fixed times
// and owners.
func untar(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(Epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: time %v owner %d:%d, want the epoch and root", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{h.Name, h.Mode, data})
	}
}

func files(es []entry) map[string][]byte {
	m := map[string][]byte{}
	for _, e := range es {
		m[e.name] = e.data
	}
	return m
}

func blob(t *testing.T, fs map[string][]byte, d Descriptor) []byte {
	t.Helper()
	b, ok := fs["blobs/sha256/"+d.Digest[len("sha256:"):]]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: digest %s size %d, descriptor says %d", d.Digest, got, len(b), d.Size)
	}
	return b
}

var testImage = Image{
	Ref:        "vnet-cni.invalid/vnet-cni:dev",
	Entrypoint: []string{"/vnet-ipamd", "-v"},
	Env:        []string{"PATH=/"},
	Files: []File{
		{Path: "/vnet-ipamd", Mode: 0o755, Data: []byte("\x7fELF ipamd")},
		{Path: "/vnet-cni", Mode: 0o755, Data: []byte("\x7fELF cni")},
		{Path: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: []byte("-----BEGIN CERTIFICATE-----")},
	},
}

// TestTarballLayout follows index.json to the manifest, the config and the
// layer, checking every digest and size, the reference containerd's
// importer reads, and the layer's entries: directories before their
// contents, in path order, with their modes.
func TestTarballLayout(t *testing.T) {
	res, err := Tarball(testImage)
	if err != nil {
		t.Fatal(err)
	}
	fs := files(untar(t, res.Tarball))
	if got := string(fs["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", got)
	}
	var idx Index
	if err := json.Unmarshal(fs["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(idx.Manifests))
	}
	md := idx.Manifests[0]
	if md.Digest != res.ManifestDigest {
		t.Errorf("index names manifest %s, Tarball returned %s", md.Digest, res.ManifestDigest)
	}
	if md.Annotations["io.containerd.image.name"] != testImage.Ref || md.Annotations["org.opencontainers.image.ref.name"] != "dev" {
		t.Errorf("manifest annotations %v", md.Annotations)
	}
	var man Manifest
	if err := json.Unmarshal(blob(t, fs, md), &man); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	if err := json.Unmarshal(blob(t, fs, man.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(testImage.Entrypoint, cfg.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	if len(man.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != man.Layers[0].Digest {
		t.Fatalf("layers %v, diff ids %v", man.Layers, cfg.RootFS.DiffIDs)
	}
	layer := untar(t, blob(t, fs, man.Layers[0]))
	if int64(len(blob(t, fs, man.Layers[0]))) != res.LayerSize {
		t.Errorf("LayerSize %d", res.LayerSize)
	}
	var got []string
	for _, e := range layer {
		got = append(got, e.name+" "+modeString(e.mode))
	}
	want := []string{
		"dev/ 755", "etc/ 755", "etc/ssl/ 755", "etc/ssl/certs/ 755", "etc/ssl/certs/ca-certificates.crt 644",
		"proc/ 755", "sys/ 755", "tmp/ 1777", "vnet-cni 755", "vnet-ipamd 755",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
	lf := files(layer)
	for _, f := range testImage.Files {
		if !bytes.Equal(lf[f.Path[1:]], f.Data) {
			t.Errorf("layer's %s differs", f.Path)
		}
	}
}

func modeString(m int64) string {
	const digits = "01234567"
	var b []byte
	for ; m > 0; m /= 8 {
		b = append([]byte{digits[m%8]}, b...)
	}
	return string(b)
}

// TestTarballReproducible: the same files in any order give the same
// bytes; a changed byte gives another digest.
func TestTarballReproducible(t *testing.T) {
	a, err := Tarball(testImage)
	if err != nil {
		t.Fatal(err)
	}
	shuffled := testImage
	shuffled.Files = []File{testImage.Files[2], testImage.Files[0], testImage.Files[1]}
	b, err := Tarball(shuffled)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Tarball, b.Tarball) || a.ManifestDigest != b.ManifestDigest {
		t.Errorf("same files, different tarballs: %s vs %s", a.ManifestDigest, b.ManifestDigest)
	}
	changed := testImage
	changed.Files = append([]File{{Path: "/vnet-ipamd", Mode: 0o755, Data: []byte("\x7fELF ipamd2")}}, testImage.Files[1:]...)
	c, err := Tarball(changed)
	if err != nil {
		t.Fatal(err)
	}
	if c.ManifestDigest == a.ManifestDigest {
		t.Error("a changed file kept the digest")
	}
}

func TestTarballRefusesBadFiles(t *testing.T) {
	for name, fs := range map[string][]File{
		"relative":       {{Path: "vnet-ipamd"}},
		"unclean":        {{Path: "/a/../b"}},
		"root":           {{Path: "/"}},
		"twice":          {{Path: "/a"}, {Path: "/a"}},
		"file and dir":   {{Path: "/a"}, {Path: "/a/b"}},
		"file over base": {{Path: "/tmp"}},
	} {
		img := testImage
		img.Files = fs
		if _, err := Tarball(img); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Tarball(Image{Ref: "x"}); err == nil {
		t.Error("no entrypoint accepted")
	}
}
