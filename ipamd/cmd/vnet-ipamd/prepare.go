package main

import (
	"flag"
	"fmt"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/kubenet"
	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// prepare is the DaemonSet's init step, run with the node's network and
// the privileges the daemon does without: it installs the plugin into the
// host's CNI bin directory (atomic copy) and sets the kernel settings the
// configured mode needs (ip_forward, bridge-nf-call-iptables), which the
// daemon itself can only read in a container whose /proc/sys is read-only.
//
//	vnet-ipamd prepare [--config FILE] [--cni-bin-dir DIR]
func prepare(args []string) error {
	fs := flag.NewFlagSet("vnet-ipamd prepare", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	binDir := fs.String("cni-bin-dir", "/opt/cni/bin", "the host's CNI bin directory (empty: do not install the plugin)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if *binDir != "" {
		wrote, err := installPlugin(*binDir)
		if err != nil {
			return err
		}
		fmt.Printf("vnet-ipamd prepare: %s in %s (changed: %v)\n", pluginName, *binDir, wrote)
	}
	want := prepareSysctls(cfg)
	if err := linux.EnsureSysctls(want...); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	fmt.Printf("vnet-ipamd prepare: %d kernel settings for mode %s in place\n", len(want), cfg.Mode)
	return nil
}

// prepareSysctls are the settings the daemon's datapath needs, none when
// it does not keep the datapath (nodeSetup "plugin").
func prepareSysctls(cfg config.Config) []linux.Sysctl {
	switch {
	case cfg.NodeSetup != config.NodeSetupIPAMD:
		return nil
	case cfg.Mode == config.ModeRouted:
		return routed.NodeSysctls()
	case cfg.Mode == config.ModeKubenet:
		return kubenet.NodeSysctls()
	default:
		return azure0.NodeSysctls(azure0.NodeConfig{})
	}
}
