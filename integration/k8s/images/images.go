// Package images builds the container images of the Kubernetes harness
// offline: a static Go program in a one-layer OCI image, written as an OCI
// image layout tarball (oci-layout, index.json, blobs/sha256/...) that
// `ctr images import` loads. No registry is involved; pods name the images
// with imagePullPolicy Never and containerd's sandbox image is Pause.
package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vnet-cni/vnet-cni/internal/ociimage"
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

// Tarball returns the OCI image layout tarball of img with prog as its one
// file (package ociimage: the same program always gives the same digests).
func Tarball(img Image, prog []byte) ([]byte, error) {
	if !strings.HasPrefix(img.Path, "/") || strings.Count(img.Path, "/") != 1 {
		return nil, fmt.Errorf("image %s: path %q is not a file in /", img.Ref, img.Path)
	}
	res, err := ociimage.Tarball(ociimage.Image{
		Ref:        img.Ref,
		Files:      []ociimage.File{{Path: img.Path, Mode: 0o755, Data: prog}},
		Entrypoint: append([]string{img.Path}, img.Args...),
		Env:        []string{"PATH=/"},
	})
	if err != nil {
		return nil, err
	}
	return res.Tarball, nil
}
