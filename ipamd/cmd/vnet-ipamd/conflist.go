package main

import (
	"encoding/json"
	"net/netip"

	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// conflist is the CNI network configuration that makes kubelet report the
// node's network ready: vnet-cni, chained with the reference portmap plugin
// for hostPorts. It carries the VNet's address space, so the plugin can set
// the node's datapath up while it waits for an address.
func conflist(cfg config.Config, vnet []netip.Prefix) []byte {
	cidrs := make([]string, len(vnet))
	for i, p := range vnet {
		cidrs[i] = p.String()
	}
	doc := map[string]any{
		"cniVersion": cfg.CNIVersion,
		"name":       "vnet-cni",
		"plugins": []map[string]any{
			{
				"type":         "vnet-cni",
				"mode":         cfg.Mode,
				"ipamdSocket":  cfg.SocketPath,
				"releaseSpool": cfg.ReleaseSpool,
				"lockDir":      cfg.PluginLockDir,
				"vnetCIDRs":    cidrs,
			},
			{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				"snat":         true,
			},
		},
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		// Only maps of strings, bools and slices: marshalling cannot fail.
		panic(err)
	}
	return append(data, '\n')
}
