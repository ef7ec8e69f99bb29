package main

import (
	"encoding/json"

	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// conflist is the CNI network configuration that makes kubelet report the
// node's network ready: vnet-cni, chained with the reference portmap plugin
// for hostPorts.
func conflist(cfg config.Config) []byte {
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
