// Command vnet-k8s-bins builds the Kubernetes binaries the integration
// harness runs (see package integration/k8s/binaries) unless they are
// already in the cache directory, and prints that directory.
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
	return nil
}
