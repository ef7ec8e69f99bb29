// Package nodeimage builds vnet-cni's node image, the one its DaemonSet
// runs: vnet-ipamd and the vnet-cni plugin, both static binaries, and a CA
// bundle for the cloud's HTTPS endpoints, in one OCI layer (package
// ociimage: the same binaries give the same bytes). vnet-ipamd is the
// entrypoint; it installs the plugin next to it into the host's CNI bin
// directory (its cniBinDir) with an atomic copy.
package nodeimage

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vnet-cni/vnet-cni/internal/ociimage"
)

// The image's defaults and the binaries' paths inside it.
const (
	// DefaultRef is the reference `make image` gives the image; the
	// registry name is reserved (.invalid), so a node that lacks the
	// image fails to pull it instead of fetching something else.
	DefaultRef = "vnet-cni.invalid/vnet-cni:dev"
	// DefaultCABundle is the build host's CA bundle (Debian's
	// ca-certificates), copied to the same path in the image, where Go's
	// crypto/x509 looks for the system roots.
	DefaultCABundle = "/etc/ssl/certs/ca-certificates.crt"
	IPAMDPath       = "/vnet-ipamd"
	PluginPath      = "/vnet-cni"
)

// Options say where the parts come from.
type Options struct {
	// Ref is the image's reference (DefaultRef if empty).
	Ref string
	// IPAMD and Plugin are the paths of the built vnet-ipamd and vnet-cni
	// (make build); both must be static.
	IPAMD, Plugin string
	// CABundle is a PEM file put at DefaultCABundle in the image; empty
	// leaves it out (an image that only talks to endpoints whose CA it
	// is given in its configuration).
	CABundle string
}

// Build reads the binaries and writes the image's OCI tarball in memory.
func Build(opts Options) (ociimage.Result, error) {
	if opts.Ref == "" {
		opts.Ref = DefaultRef
	}
	var files []ociimage.File
	for _, b := range []struct{ src, dst string }{{opts.IPAMD, IPAMDPath}, {opts.Plugin, PluginPath}} {
		data, err := os.ReadFile(b.src)
		if err != nil {
			return ociimage.Result{}, fmt.Errorf("node image: %w", err)
		}
		if err := checkStatic(b.src); err != nil {
			return ociimage.Result{}, fmt.Errorf("node image: %w", err)
		}
		files = append(files, ociimage.File{Path: b.dst, Mode: 0o755, Data: data})
	}
	if opts.CABundle != "" {
		data, err := os.ReadFile(opts.CABundle)
		if err != nil {
			return ociimage.Result{}, fmt.Errorf("node image: ca bundle: %w", err)
		}
		files = append(files, ociimage.File{Path: DefaultCABundle, Mode: 0o644, Data: data})
	}
	return ociimage.Tarball(ociimage.Image{
		Ref:        opts.Ref,
		Files:      files,
		Entrypoint: []string{IPAMDPath},
		Env:        []string{"PATH=/"},
	})
}

// checkStatic refuses a dynamically linked ELF: the image has no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New(filepath.Base(path) + " is dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}
