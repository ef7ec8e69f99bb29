// Package images builds the container images of the Kubernetes harness
// offline: a static Go program in a one-layer OCI image, written as an OCI
// image layout tarball (oci-layout, index.json, blobs/sha256/...) that
// `ctr images import` loads. No registry is involved; pods name the images
// with imagePullPolicy Never and containerd's sandbox image is Pause.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// The images' references. The registry name is reserved (.invalid), so
// nothing ever tries to pull them.
const (
	Pause      = "vnet-cni.invalid/pause:1"
	TestServer = "vnet-cni.invalid/testserver:1"
)

// Image is one image to build: a Go main package, the path the binary gets
// inside the image, and the command it runs.
type Image struct {
	Ref string
	// Package is the Go package of the program, built with CGO_ENABLED=0.
	Package string
	// Path is where the binary lives in the image, e.g. "/pause".
	Path string
	// Args follow Path in the image's entrypoint.
	Args []string
}

// Harness is the harness's two images, their programs in this module.
var Harness = []Image{
	{Ref: Pause, Package: "github.com/vnet-cni/vnet-cni/integration/cmd/vnet-k8s-pause", Path: "/pause"},
	{Ref: TestServer, Package: "github.com/vnet-cni/vnet-cni/integration/cmd/vnet-k8s-testserver", Path: "/testserver"},
}

// Build compiles each image's program with the go command and writes its
// OCI tarball into dir as <name>.tar (name: the reference's repository's
// last element). It returns the tarballs' paths by reference.
func Build(ctx context.Context, dir string, imgs []Image) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	out := map[string]string{}
	for _, img := range imgs {
		bin := filepath.Join(dir, filepath.Base(img.Path)+".bin")
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, img.Package)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %w: %s", img.Package, err, strings.TrimSpace(string(b)))
		}
		prog, err := os.ReadFile(bin)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", bin, err)
		}
		if err := os.Remove(bin); err != nil {
			return nil, fmt.Errorf("remove %s: %w", bin, err)
		}
		tarball, err := Tarball(img, prog)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, name(img.Ref)+".tar")
		if err := os.WriteFile(path, tarball, 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		out[img.Ref] = path
	}
	return out, nil
}

// name is the last element of a reference's repository: "pause" for
// "vnet-cni.invalid/pause:1".
func name(ref string) string {
	repo, _, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], ":")
	return repo
}

// The OCI media types the tarball uses.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Platform is an OCI platform.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

type imageConfig struct {
	Created      string    `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       runConfig `json:"config"`
	RootFS       rootFS    `json:"rootfs"`
}

type runConfig struct {
	Entrypoint []string `json:"Entrypoint"`
	Env        []string `json:"Env,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// epoch is every file's and the image's time, so that one program always
// gives the same digests.
var epoch = time.Unix(0, 0).UTC()

// Tarball returns the OCI image layout tarball of img with prog as its one
// file: one uncompressed layer (the binary, /tmp and /etc/hostname's
// directory), the config with the entrypoint, a manifest, and index.json
// naming the image by its reference (the annotations containerd's importer
// reads).
func Tarball(img Image, prog []byte) ([]byte, error) {
	if !strings.HasPrefix(img.Path, "/") || strings.Count(img.Path, "/") != 1 {
		return nil, fmt.Errorf("image %s: path %q is not a file in /", img.Ref, img.Path)
	}
	layer, err := layerTar(strings.TrimPrefix(img.Path, "/"), prog)
	if err != nil {
		return nil, err
	}
	layerDesc := describe(mediaLayer, layer)
	cfg, err := json.Marshal(imageConfig{
		Created: epoch.Format(time.RFC3339), Architecture: runtime.GOARCH, OS: "linux",
		Config: runConfig{Entrypoint: append([]string{img.Path}, img.Args...), WorkingDir: "/",
			Env: []string{"PATH=/"}},
		RootFS: rootFS{Type: "layers", DiffIDs: []string{layerDesc.Digest}},
	})
	if err != nil {
		return nil, err
	}
	cfgDesc := describe(mediaConfig, cfg)
	man, err := json.Marshal(manifest{SchemaVersion: 2, MediaType: mediaManifest, Config: cfgDesc, Layers: []Descriptor{layerDesc}})
	if err != nil {
		return nil, err
	}
	manDesc := describe(mediaManifest, man)
	manDesc.Platform = &Platform{Architecture: runtime.GOARCH, OS: "linux"}
	_, tag, _ := strings.Cut(img.Ref[strings.LastIndex(img.Ref, "/")+1:], ":")
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name":          img.Ref,
		"org.opencontainers.image.ref.name": tag,
	}
	idx, err := json.Marshal(index{SchemaVersion: 2, MediaType: mediaIndex, Manifests: []Descriptor{manDesc}})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"blobs/sha256/" + hexDigest(layer), layer},
		{"blobs/sha256/" + hexDigest(cfg), cfg},
		{"blobs/sha256/" + hexDigest(man), man},
		{"index.json", idx},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, 0o644, f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layerTar is a layer holding the program at /<file> (mode 0755) and the
// directories a container's runtime expects to mount on.
func layerTar(file string, prog []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"dev/", "etc/", "proc/", "sys/", "tmp/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	if err := writeFile(tw, file, 0o755, prog); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}

func hexDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func describe(mediaType string, b []byte) Descriptor {
	return Descriptor{MediaType: mediaType, Digest: "sha256:" + hexDigest(b), Size: int64(len(b))}
}
