package main

import (
	"encoding/json"
	"net/netip"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// portmapEntry chains the reference portmap plugin for hostPorts.
type portmapEntry struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	SNAT         bool            `json:"snat"`
}

// conflist is the CNI network configuration that makes kubelet report the
// node's network ready: vnet-cni, chained with the reference portmap plugin
// for hostPorts. It carries the VNet's address space, so the plugin can set
// the node's datapath up while it waits for an address.
func conflist(cfg config.Config, vnet []netip.Prefix) []byte {
	cidrs := make([]string, len(vnet))
	for i, p := range vnet {
		cidrs[i] = p.String()
	}
	doc := api.Conflist{
		CNIVersion: cfg.CNIVersion,
		Name:       api.NetworkName,
		Plugins: []any{
			api.PluginEntry{Type: api.PluginType, PluginConf: api.PluginConf{
				Mode:           cfg.Mode,
				Bridge:         kubenetBridge(cfg),
				IPAMDSocket:    cfg.SocketPath,
				ReleaseSpool:   cfg.ReleaseSpool,
				LockDir:        cfg.PluginLockDir,
				VNetCIDRs:      cidrs,
				SNATExclusions: cfg.SNATExclusions,
				// The daemon sets the node up before it writes this file
				// and repairs it (see datapath.go).
				ManagedNode:   cfg.NodeSetup == config.NodeSetupIPAMD,
				AllowMetadata: cfg.AllowPodMetadata,
			}},
			portmapEntry{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}, SNAT: true},
		},
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		// Strings, bools and slices of them: marshalling cannot fail.
		panic(err)
	}
	return append(data, '\n')
}

// kubenetBridge is the conflist's bridge key: kubenet mode's local bridge;
// empty (the plugin's default, azure0) in the other modes.
func kubenetBridge(cfg config.Config) string {
	if cfg.Mode == config.ModeKubenet {
		return cfg.Kubenet.Bridge
	}
	return ""
}
