package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

// notifyHangup starts catching SIGHUP (whose default ends the process);
// stop undoes it.
func notifyHangup() (hup <-chan os.Signal, stop func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return c, func() { signal.Stop(c) }
}

// targetSetter hands the configuration's pool targets to the daemon (or to
// the Kubernetes agent, which composes them with the node's and the
// VNetNode's).
type targetSetter func(pool.Targets) error

// reloadOnHangup re-reads the configuration file at every SIGHUP until ctx
// is done, and hands its pool targets to the daemon. Other fields take
// effect only at the next start; a change to them is logged as such. A file
// that does not load or validate changes nothing.
func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, path string, running config.Config, d targetSetter, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			running = reload(path, running, d, log)
		}
	}
}

// reload applies path's pool targets and returns the configuration now in
// effect.
func reload(path string, running config.Config, d targetSetter, log *slog.Logger) config.Config {
	next, err := config.Load(path)
	if err != nil {
		log.Error("reload on SIGHUP: keeping the running configuration", "err", err)
		return running
	}
	if err := d(next.PoolTargets()); err != nil {
		log.Error("reload on SIGHUP: keeping the running pool targets", "err", err)
		return running
	}
	applied := running.WithTargetsOf(next)
	if fields := config.Changed(applied, next); len(fields) > 0 {
		log.Warn("reload on SIGHUP: these fields changed and need a restart of vnet-ipamd to take effect", "fields", fields)
	}
	log.Info("reloaded the pool targets on SIGHUP", "path", path)
	return applied
}
