package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestTarballHoldsTheProgram: the program at its path, the entrypoint with
// its arguments (the layout itself is package ociimage's test).
func TestTarballHoldsTheProgram(t *testing.T) {
	prog := []byte("\x7fELF not really")
	b, err := Tarball(Image{Ref: Pause, Path: "/pause", Args: []string{"-v"}}, prog)
	if err != nil {
		t.Fatal(err)
	}
	var blobs [][]byte
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, data)
	}
	var sawProg, sawEntrypoint bool
	for _, blob := range blobs {
		if bytes.Contains(blob, []byte(`"Entrypoint":["/pause","-v"]`)) {
			sawEntrypoint = true
		}
		lr := tar.NewReader(bytes.NewReader(blob))
		for {
			h, err := lr.Next()
			if err != nil {
				break
			}
			if h.Name == "pause" {
				data, _ := io.ReadAll(lr)
				sawProg = bytes.Equal(data, prog) && h.Mode == 0o755
			}
		}
	}
	if !sawProg || !sawEntrypoint {
		t.Errorf("program in a layer %v, entrypoint in the config %v", sawProg, sawEntrypoint)
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
