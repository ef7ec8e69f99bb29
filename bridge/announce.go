package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// announce makes the node and the pods on the bridge forget any earlier
// owner of the pod's address. Pod MACs are random and addresses are reused,
// so they may still map the address to an earlier pod's MAC, and a stale
// entry keeps them from reaching the new pod for seconds (a delay, then
// unicast probes to the old MAC that nobody answers).
//
// The node's own entry is corrected through netlink. The pods get a
// gratuitous ARP (an ARP request for the address, from the pod's MAC)
// transmitted by the bridge device, which floods it to the ports that
// forward already; the new pod's port may not forward yet (the kernel enables
// a port on its carrier event, up to a second later), so the pod itself
// could not be relied on to send it. The fabric never sees it: ARP for a
// pod's address is dropped on the way out of the master.
func (n *Node) announce(bridgeIndex int, ip netip.Addr, mac net.HardwareAddr) error {
	neigh := &netlink.Neigh{LinkIndex: bridgeIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_STALE,
		IP: ip.AsSlice(), HardwareAddr: mac}
	if err := n.nl.NeighSet(neigh); err != nil {
		return fmt.Errorf("node neighbour entry for %s: %w", ip, err)
	}
	var fd int
	err := n.doInNS(func() error {
		var err error
		// Protocol 0: the socket only sends.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("packet socket in node netns: %w", err)
	}
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	addr := ip.AsSlice()
	frame := make([]byte, 0, 42)
	frame = append(frame, bcast...)
	frame = append(frame, mac...)
	frame = append(frame, etherTypeARP>>8, etherTypeARP&0xff)
	frame = append(frame, arpEthIPv4...)
	frame = append(frame, 0, arpRequest)
	frame = append(frame, mac...)
	frame = append(frame, addr...)
	frame = append(frame, 0, 0, 0, 0, 0, 0) // target MAC unknown, as in RFC 5227 announcements
	frame = append(frame, addr...)
	sa := &unix.SockaddrLinklayer{Ifindex: bridgeIndex, Halen: 6, Protocol: htons(etherTypeARP)}
	copy(sa.Addr[:], bcast)
	err = unix.Sendto(fd, frame, 0, sa)
	if err != nil {
		err = fmt.Errorf("send gratuitous arp for %s: %w", ip, err)
	}
	return errors.Join(err, unix.Close(fd))
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
