// Package ociimage writes a one-layer container image as an OCI image
// layout tarball (oci-layout, index.json, blobs/sha256/...), the format
// `ctr images import` loads, without a daemon or a registry. The output is
// a pure function of the input: every entry has the Unix epoch as its
// time, owner root, and entries are sorted, so one set of files always
// gives the same bytes and the same digests.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"
)

// The OCI media types the tarball uses.
const (
	MediaIndex    = "application/vnd.oci.image.index.v1+json"
	MediaManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaConfig   = "application/vnd.oci.image.config.v1+json"
	MediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// File is one regular file of the image's layer.
type File struct {
	// Path is the file's path in the image, absolute and clean
	// ("/vnet-ipamd", "/etc/ssl/certs/ca-certificates.crt"); its parent
	// directories are added to the layer (mode 0755).
	Path string
	// Mode is the permission bits (0o755 for a program).
	Mode int64
	Data []byte
}

// Image is what to write: a reference, the files, and how to run it.
type Image struct {
	// Ref names the image when it is imported ("vnet-cni.invalid/pause:1").
	Ref   string
	Files []File
	// Entrypoint and Env go into the image's config.
	Entrypoint []string
	Env        []string
}

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

// Index is an OCI image index (index.json).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Config is the part of an OCI image configuration written here.
type Config struct {
	Created      string    `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       RunConfig `json:"config"`
	RootFS       RootFS    `json:"rootfs"`
}

// RunConfig is the execution part of an image configuration.
type RunConfig struct {
	Entrypoint []string `json:"Entrypoint"`
	Env        []string `json:"Env,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

// RootFS lists the layers' uncompressed digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// Epoch is every entry's and the image's time.
var Epoch = time.Unix(0, 0).UTC()

// Result is a written image: the tarball and the manifest's digest, the
// image's identity in containerd ("sha256:...").
type Result struct {
	Tarball        []byte
	ManifestDigest string
	// LayerSize is the uncompressed layer's size in bytes.
	LayerSize int64
}

// Tarball returns the OCI image layout tarball of img: one uncompressed
// layer (img's files, their directories and the mount points a runtime
// expects: /dev, /etc, /proc, /sys, /tmp), the config, a manifest, and
// index.json naming the image by its reference with the annotations
// containerd's importer reads.
func Tarball(img Image) (Result, error) {
	if img.Ref == "" || len(img.Entrypoint) == 0 {
		return Result{}, fmt.Errorf("image %q: a reference and an entrypoint are required", img.Ref)
	}
	layer, err := layerTar(img.Files)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	layerDesc := describe(MediaLayer, layer)
	cfg, err := json.Marshal(Config{
		Created: Epoch.Format(time.RFC3339), Architecture: runtime.GOARCH, OS: "linux",
		Config: RunConfig{Entrypoint: img.Entrypoint, WorkingDir: "/", Env: img.Env},
		RootFS: RootFS{Type: "layers", DiffIDs: []string{layerDesc.Digest}},
	})
	if err != nil {
		return Result{}, err
	}
	cfgDesc := describe(MediaConfig, cfg)
	man, err := json.Marshal(Manifest{SchemaVersion: 2, MediaType: MediaManifest, Config: cfgDesc, Layers: []Descriptor{layerDesc}})
	if err != nil {
		return Result{}, err
	}
	manDesc := describe(MediaManifest, man)
	manDesc.Platform = &Platform{Architecture: runtime.GOARCH, OS: "linux"}
	_, tag, _ := strings.Cut(img.Ref[strings.LastIndex(img.Ref, "/")+1:], ":")
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name":          img.Ref,
		"org.opencontainers.image.ref.name": tag,
	}
	idx, err := json.Marshal(Index{SchemaVersion: 2, MediaType: MediaIndex, Manifests: []Descriptor{manDesc}})
	if err != nil {
		return Result{}, err
	}
	// Blobs sorted by name: the tarball's order does not depend on the
	// digests' values.
	blobs := [][]byte{layer, cfg, man}
	slices.SortFunc(blobs, func(a, b []byte) int { return strings.Compare(hexDigest(a), hexDigest(b)) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := writeDir(tw, d, 0o755); err != nil {
			return Result{}, err
		}
	}
	for _, b := range blobs {
		if err := writeFile(tw, "blobs/sha256/"+hexDigest(b), 0o644, b); err != nil {
			return Result{}, err
		}
	}
	if err := writeFile(tw, "index.json", 0o644, idx); err != nil {
		return Result{}, err
	}
	if err := writeFile(tw, "oci-layout", 0o644, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return Result{}, err
	}
	if err := tw.Close(); err != nil {
		return Result{}, err
	}
	return Result{Tarball: buf.Bytes(), ManifestDigest: manDesc.Digest, LayerSize: int64(len(layer))}, nil
}

// baseDirs are the directories every layer has: a runtime mounts on them.
var baseDirs = []string{"dev", "etc", "proc", "sys", "tmp"}

// layerTar is the layer: every directory (sorted, each once, before what
// it holds), then every file, in path order.
func layerTar(files []File) ([]byte, error) {
	dirs := map[string]bool{}
	for _, d := range baseDirs {
		dirs[d] = true
	}
	byPath := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file path %q is not a clean absolute path", f.Path)
		}
		name := strings.TrimPrefix(f.Path, "/")
		if _, dup := byPath[name]; dup {
			return nil, fmt.Errorf("file %s given twice", f.Path)
		}
		byPath[name] = f
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for name := range byPath {
		if dirs[name] {
			return nil, fmt.Errorf("file %s is also a directory", "/"+name)
		}
	}
	var entries []string
	for d := range dirs {
		entries = append(entries, d+"/")
	}
	for name := range byPath {
		entries = append(entries, name)
	}
	// "a/" sorts before "a/b" and after "a" (no file is also a directory),
	// so every directory comes before its contents.
	slices.Sort(entries)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		if strings.HasSuffix(e, "/") {
			mode := int64(0o755)
			if e == "tmp/" {
				mode = 0o1777
			}
			if err := writeDir(tw, e, mode); err != nil {
				return nil, err
			}
			continue
		}
		f := byPath[e]
		if err := writeFile(tw, e, f.Mode, f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeDir(tw *tar.Writer, name string, mode int64) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: Epoch}); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: Epoch}); err != nil {
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
