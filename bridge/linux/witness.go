package linux

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// WitnessPod is one pod veth and what its alias records.
type WitnessPod struct {
	// HostVeth is the host end's name: HostVethName of the attachment.
	HostVeth string
	Record   PodRecord
}

// Witness is what a node's namespace records of vnet-cni's live pods, read
// from the kernel in one link dump: the datapath's witness of every
// assignment, beside vnet-ipamd's store. A pod's veth lives exactly as long
// as the pod's datapath, and dies with the node's boot.
type Witness struct {
	// Pods are the veths named HostVethPrefix… whose alias is a PodRecord.
	// A veth without one (created by an ADD that has not finished, see
	// PrepareVeth) records no address and is not listed.
	Pods []WitnessPod
	// Owned reports that a link with a vnet-cni alias exists (the bridge
	// it took the NIC over with, or a pod veth): vnet-cni's datapath was
	// set up in this boot.
	Owned bool
	// MACs are the hardware addresses of the namespace's links, lower-case
	// hex without separators (as cloud.Interface.MAC), for the reader to
	// check that this is the namespace of the node's NIC.
	MACs []string
}

// ReadWitness reads the witness of the namespace at nsPath ("" is the
// caller's).
func ReadWitness(nsPath string) (Witness, error) {
	h, err := OpenNS(nsPath)
	if err != nil {
		return Witness{}, err
	}
	defer h.Close()
	nl, err := netlinkHandle(nsPath, h)
	if err != nil {
		return Witness{}, fmt.Errorf("netlink handle in node netns: %w", err)
	}
	defer nl.Close()
	links, err := RetryDump(nl.LinkList)
	if err != nil {
		return Witness{}, fmt.Errorf("list links: %w", err)
	}
	var w Witness
	for _, l := range links {
		a := l.Attrs()
		if len(a.HardwareAddr) > 0 {
			w.MACs = append(w.MACs, hex.EncodeToString(a.HardwareAddr))
		}
		if !strings.HasPrefix(a.Alias, AliasPrefix) {
			continue
		}
		w.Owned = true
		if l.Type() != "veth" || !strings.HasPrefix(a.Name, HostVethPrefix) {
			continue
		}
		if r, ok := ParsePodRecord(a.Alias); ok {
			w.Pods = append(w.Pods, WitnessPod{HostVeth: a.Name, Record: r})
		}
	}
	return w, nil
}
