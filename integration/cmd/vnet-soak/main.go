// Command vnet-soak runs vnet-cni's churn soak (package soak) on a simulated
// cluster and ends with two lines, the faults of the store and of the
// cloud's state, then the summary that tools parse:
//
//	soak faults: D stores damaged (T truncated, Z zeroed, X deleted), C ipConfigurations deleted out of band (L of live pods, K of them taken by another NIC)
//	soak: N operations, F faults, R restarts, V violations
//
// It exits with status 1 when V > 0 or the soak could not run. It needs
// root (network namespaces) and the binaries in bin/ (make build).
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

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/soak"
)

func main() {
	os.Exit(run())
}

func run() int {
	prof := soak.Full()
	short := flag.Bool("short", false, "run the short profile of make test")
	bin := flag.String("bin", "bin", "directory of vnet-ipamd and vnet-cni")
	duration := flag.Duration("duration", 0, "churn duration (default: the profile's)")
	ops := flag.Int("ops", 0, "bound on the CNI operations (default: the profile's)")
	seed := flag.Uint64("seed", 0, "random seed (0: random)")
	verbose := flag.Bool("v", false, "log progress and failed calls")
	noDamage := flag.Bool("no-damage", false, "never damage a store (to tell its faults from the others')")
	noDrift := flag.Bool("no-drift", false, "never delete ipConfigurations out of band")
	keep := flag.Bool("keep", false, "keep the nodes' files (daemon logs, stores) and print where")
	cloud := flag.String("cloud", string(sim.CloudAzure), "the simulated cloud: azure, or aws (m5.4xlarge instances in routed mode, EC2's faults, no drift)")
	flag.Parse()
	if *short {
		prof = soak.Short()
	}
	if *noDamage {
		prof.DamageRate = 0
	}
	if *noDrift {
		prof.DriftMax = 0
	}
	if *duration > 0 {
		prof.Duration = min(*duration, 4*time.Minute)
	}
	if *ops > 0 {
		prof.MaxOps = *ops
	}
	prof.Seed = *seed
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vnet-soak: needs root (network namespaces)")
		return 1
	}
	lvl := slog.LevelInfo
	if *verbose {
		lvl = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	dir, err := os.MkdirTemp("", "vnet-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "vnet-soak:", err)
		return 1
	}
	if *keep {
		defer fmt.Fprintln(os.Stderr, "vnet-soak: the nodes' files are kept in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	// SIGINT/SIGTERM end the churn early; the checks and the clean-up run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c := sim.Cloud(*cloud); c != sim.CloudAzure && c != sim.CloudAWS {
		fmt.Fprintf(os.Stderr, "vnet-soak: -cloud %q: want azure or aws\n", *cloud)
		return 1
	}
	res, err := soak.Run(ctx, prof, soak.Options{Dir: dir, BinDir: *bin, Logger: log, Cloud: sim.Cloud(*cloud)})
	for _, v := range res.Violations {
		fmt.Fprintln(os.Stderr, "violation:", v)
	}
	fmt.Fprintf(os.Stderr, "soak details: %d adds, %d dels, %d failed calls (expected under faults), %d live pods at the end, %s, seed %d\n",
		res.Adds, res.Dels, res.Failed, res.LivePods, res.Elapsed.Round(time.Second), res.Seed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vnet-soak:", err)
	}
	fmt.Println(res.FaultLine())
	fmt.Println(res.Line())
	if err != nil || len(res.Violations) > 0 {
		return 1
	}
	return 0
}
