// Command vnet-k8s-bins builds the Kubernetes binaries, containerd and the
// CNI plugins chained with vnet-cni that the integration harness runs, and
// helm for the chart's tests (see package integration/k8s/binaries) unless
// they are already in their cache directories, and prints those
// directories.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
)

func main() {
	version := flag.String("version", binaries.Version, "k8s.io/kubernetes release to build")
	dir := flag.String("dir", "", "cache directory (default $"+binaries.EnvDir+", else $XDG_CACHE_HOME/vnet-cni-k8s/<version>)")
	verbose := flag.Bool("v", false, "show the go command's output")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts := binaries.Options{Version: *version, Dir: *dir, Log: log}
	if *verbose {
		opts.Output = os.Stderr
	}
	if err := run(opts); err != nil {
		log.Error("kubernetes binaries", "err", err)
		os.Exit(1)
	}
}

func run(opts binaries.Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	set, err := binaries.Ensure(ctx, opts)
	if err != nil {
		return err
	}
	opts.Log.Info("kubernetes binaries ready", "version", set.Version, "dir", set.Dir, "took", time.Since(start).Round(time.Second))
	fmt.Println(set.Dir)
	// containerd, the CNI plugins chained with vnet-cni and helm (for the
	// chart's tests), each in its default directory next to kubernetes'.
	for _, m := range []binaries.Module{binaries.Containerd(binaries.ContainerdVersion), binaries.CNIPlugins(binaries.CNIPluginsVersion), binaries.Helm(binaries.HelmVersion)} {
		start = time.Now()
		mset, err := binaries.EnsureModule(ctx, binaries.Options{Log: opts.Log, Output: opts.Output}, m)
		if err != nil {
			return err
		}
		opts.Log.Info("binaries ready", "module", m.Path, "version", mset.Version, "dir", mset.Dir, "took", time.Since(start).Round(time.Second))
		fmt.Println(mset.Dir)
	}
	return nil
}
