package main

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// podVeths lists the veths in a node's namespace other than eth0 (the
// VM's NIC): every pod's host end.
func podVeths(nsPath string) ([]string, error) {
	h, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", nsPath, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if l.Type() == "veth" && l.Attrs().Name != "eth0" {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}
