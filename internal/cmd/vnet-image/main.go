// Command vnet-image writes vnet-cni's node image (package nodeimage) as an
// OCI image layout tarball, offline and reproducibly, for `ctr images
// import` or any tool that reads an OCI archive:
//
//	vnet-image [-bin bin] [-ref vnet-cni.invalid/vnet-cni:dev] [-ca-bundle FILE] [-o bin/vnet-cni-image.tar]
//
// It prints the reference, the manifest digest and the sizes.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
	"github.com/vnet-cni/vnet-cni/internal/nodeimage"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding vnet-ipamd and vnet-cni")
	ref := flag.String("ref", nodeimage.DefaultRef, "the image's reference")
	ca := flag.String("ca-bundle", nodeimage.DefaultCABundle, "PEM CA bundle put into the image (empty: none)")
	out := flag.String("o", filepath.Join("bin", "vnet-cni-image.tar"), "output tarball")
	flag.Parse()
	if err := run(*bin, *ref, *ca, *out); err != nil {
		fmt.Fprintln(os.Stderr, "vnet-image:", err)
		os.Exit(1)
	}
}

func run(bin, ref, ca, out string) error {
	res, err := nodeimage.Build(nodeimage.Options{
		Ref: ref, IPAMD: filepath.Join(bin, "vnet-ipamd"), Plugin: filepath.Join(bin, "vnet-cni"), CABundle: ca,
	})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(out, res.Tarball, 0o644); err != nil {
		return err
	}
	fmt.Printf("%s %s: %s (%d bytes; layer %d bytes uncompressed)\n", ref, res.ManifestDigest, out, len(res.Tarball), res.LayerSize)
	return nil
}
