package main

import (
	"context"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
)

// nodeWitness reads the pods' veths in the daemon's own network namespace,
// the node's: vnet-ipamd runs with the node's network, as the plugin does.
type nodeWitness struct{}

var _ daemon.Witness = nodeWitness{}

func (nodeWitness) Read(ctx context.Context, interfaces []string) (daemon.WitnessState, error) {
	if err := ctx.Err(); err != nil {
		return daemon.WitnessState{}, err
	}
	w, err := linux.ReadWitness("")
	if err != nil {
		return daemon.WitnessState{}, err
	}
	byTag := make(map[string]string, len(interfaces))
	for _, id := range interfaces {
		byTag[linux.InterfaceTag(id)] = id
	}
	dp := daemon.WitnessState{Present: w.Owned, MACs: w.MACs}
	for _, p := range w.Pods {
		a := daemon.Witnessed{Key: p.HostVeth, IP: p.Record.IP, Interface: byTag[p.Record.Interface]}
		// A record that names its attachment only by a hash, or names
		// another one than its veth's, is an address held by someone.
		if p.Record.ContainerID != "" && linux.HostVethName(p.Record.ContainerID, p.Record.IfName) == p.HostVeth {
			a.ContainerID, a.IfName = p.Record.ContainerID, p.Record.IfName
		}
		dp.Attachments = append(dp.Attachments, a)
	}
	return dp, nil
}

func (nodeWitness) Key(containerID, ifName string) string {
	return linux.HostVethName(containerID, ifName)
}
