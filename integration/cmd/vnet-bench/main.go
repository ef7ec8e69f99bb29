// Command vnet-bench measures vnet-cni against Debian's bridge and
// host-local plugins on the simulated cloud (make bench): it prints a table
// and writes the numbers as JSON.
//
//	vnet-bench [-out bench-results.json] [-bin bin] [-sizes 1,50,250] [-parallel 8]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vnet-cni/vnet-cni/integration/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vnet-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("out", "bench-results.json", "where to write the results as JSON")
	bin := flag.String("bin", "bin", "directory holding vnet-ipamd and vnet-cni")
	sizes := flag.String("sizes", "1,50,250", "pod counts to measure, comma-separated")
	parallel := flag.Int("parallel", 8, "concurrency of the parallel runs")
	rounds := flag.Int("rounds", 20, "repetitions of the one-pod case")
	mib := flag.Int64("throughput-mib", 256, "MiB moved per throughput run")
	refMasq := flag.Bool("ref-ipmasq", false, "run the reference bridge with ipMasq (SNAT like vnet-cni, iptables calls per pod); default: the plain bridge + host-local")
	pluginLog := flag.String("plugin-log", "", "keep a copy of vnet-cni's log lines (one per call) in this file")
	modes := flag.String("modes", "bridge,routed,kubenet", "datapath modes to measure, comma-separated: bridge (against bridge + host-local), routed (against ptp + host-local), kubenet (against bridge cbr0 + host-local on the node's pod CIDR); the results of every mode after the first go to -out with the mode before the extension")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces")
	}
	var ns []int
	for f := range strings.SplitSeq(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-sizes: %q is not a pod count", f)
		}
		ns = append(ns, n)
	}
	// The first Ctrl-C cancels the run, which then removes what it made;
	// further ones are ignored until that is done.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "vnet-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	for i, mode := range strings.Split(*modes, ",") {
		mode = strings.TrimSpace(mode)
		path, log := *out, *pluginLog
		if i > 0 {
			path = withMode(path, mode)
			if log != "" {
				log = withMode(log, mode)
			}
		}
		fmt.Fprintf(os.Stderr, "vnet-bench: %s mode, sizes %v, %d-way parallel, work dir %s\n", mode, ns, *parallel, dir)
		start := time.Now()
		mdir := filepath.Join(dir, mode)
		if err := os.MkdirAll(mdir, 0o700); err != nil {
			return err
		}
		res, err := bench.Run(ctx, bench.Options{
			Dir: mdir, BinDir: *bin, Sizes: ns, Parallel: *parallel, SingleRounds: *rounds, Mode: mode,
			ThroughputBytes: *mib << 20, Progress: os.Stderr, PluginLog: log, RefIPMasq: *refMasq,
		})
		if err != nil {
			return fmt.Errorf("%s mode, after %s: %w", mode, time.Since(start).Round(time.Second), err)
		}
		res.Print(os.Stdout)
		if err := res.WriteJSON(path); err != nil {
			return err
		}
		fmt.Printf("\nwrote %s\n", path)
	}
	return nil
}

// withMode puts the mode before the file's extension: bench-results.json
// becomes bench-results-routed.json.
func withMode(path, mode string) string {
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + "-" + mode + ext
}
