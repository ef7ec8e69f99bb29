// Command vnet-cni is the CNI plugin that the container runtime executes for
// every pod: it takes a VNet address from vnet-ipamd and bridges the pod
// onto azure0.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vnet-cni/vnet-cni/cni/plugin"
)

func main() {
	p := &plugin.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"vnet-cni: pods with private IPs of the cloud virtual network")
}
