package linux

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrConflict is wrapped when an interface of a pod veth's name exists and
// is not that pod's veth.
var ErrConflict = errors.New("conflicting interface")

// VethSpec is a pod's veth pair: the host end's name, the pod's interface
// name, the host end's master (0: none), the MTU of both ends, the pod's
// address (which gives the pod end its MAC), and what the host end's alias
// records besides (see PodRecord): the container ID and the cloud's ID of
// the interface the address is on, and the mode when not bridge mode.
type VethSpec struct {
	HostName    string
	IfName      string
	MasterIndex int
	MTU         int
	IP          netip.Addr
	ContainerID string
	Interface   string
	Mode        string
}

// record is what the host end's alias records for a pod end with mac.
func (v VethSpec) record(mac net.HardwareAddr) PodRecord {
	return PodRecord{IP: v.IP, MAC: mac, ContainerID: v.ContainerID, IfName: v.IfName, Interface: InterfaceTag(v.Interface), Mode: v.Mode}
}

// HostVethPrefix starts the name of every pod veth vnet-cni creates; a
// mode's tables may recognise pod ports by it.
const HostVethPrefix = "vnc"

// HostVethName is the host-side veth name of an attachment: stable, unique
// per (container, interface) and at most 15 characters.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:6])
}

// PodMAC is the MAC of a pod's interface: 0a:58 followed by its IPv4
// address (the convention of kubenet's bridge). Addresses are reused, and
// the node and the pods on the bridge may still remember a pod address's
// earlier owner; with the MAC derived from the address, what they remember
// stays right, so a new pod on a reused address is reachable at once without
// announcing it. Addresses are unique in the VNet, so the MACs are too.
func PodMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x0a, 0x58, a[0], a[1], a[2], a[3]}
}

// Veth is a pod's pair as vnet-cni creates it: the host end up (and a port
// of masterIndex unless 0), the pod end (down) directly in the pod
// namespace, both with the MTU. A nil podMAC leaves the pod end's MAC to the
// kernel.
func Veth(hostName, ifName string, masterIndex, mtu int, podNS netns.NsHandle, podMAC net.HardwareAddr) *netlink.Veth {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	attrs.Flags = net.FlagUp
	attrs.MasterIndex = masterIndex
	return &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         ifName,
		PeerHardwareAddr: podMAC,
		PeerNamespace:    netlink.NsFd(int(podNS)),
		PeerMTU:          uint32(mtu),
	}
}

// SamePair checks that host and pod are the two ends of one veth made for
// ip (or not yet recorded for any pod).
func SamePair(host, pod netlink.Link, ip netip.Addr) error {
	h, p := host.Attrs(), pod.Attrs()
	if host.Type() != "veth" || pod.Type() != "veth" {
		return fmt.Errorf("%s (%s) and %s (%s) are not a veth pair", h.Name, host.Type(), p.Name, pod.Type())
	}
	if h.ParentIndex != p.Index || p.ParentIndex != h.Index {
		return fmt.Errorf("%s and %s exist but are not peers", h.Name, p.Name)
	}
	// No alias: an earlier ADD stopped right after creating the pair.
	if aip, _, ok := ParsePodAlias(h.Alias); h.Alias != "" && (!ok || aip != ip) {
		return fmt.Errorf("%s exists for another attachment (alias %q)", h.Name, h.Alias)
	}
	return nil
}

// StrayVeths lists vnet-cni's pod veths (named HostVethPrefix…) in the
// namespace whose names keep does not claim: what a failed or interrupted
// ADD left without an address assignment.
func (n *NS) StrayVeths(keep func(hostName string) bool) ([]string, error) {
	links, err := RetryDump(n.Netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() == "veth" && strings.HasPrefix(name, HostVethPrefix) && !keep(name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// PodsOfMaster reads the pods (address and MAC) that the aliases of the
// master's ports record, by port name.
func (n *NS) PodsOfMaster(masterIndex int) (map[string]Pod, error) {
	veths, err := n.PodVeths()
	if err != nil {
		return nil, err
	}
	out := make(map[string]Pod)
	for _, v := range veths {
		if v.MasterIndex == masterIndex {
			out[v.Name] = Pod{IP: v.Record.IP, MAC: v.Record.MAC}
		}
	}
	return out, nil
}

// PodVeth is a pod's host veth as found in the node, with its record.
type PodVeth struct {
	Name        string
	Index       int
	MasterIndex int
	Record      PodRecord
}

// PodVeths lists the node's pod veths (named HostVethPrefix…) whose alias
// is a PodRecord, in one link dump.
func (n *NS) PodVeths() ([]PodVeth, error) {
	links, err := RetryDump(n.Netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []PodVeth
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || !strings.HasPrefix(a.Name, HostVethPrefix) {
			continue
		}
		if r, ok := ParsePodRecord(a.Alias); ok {
			out = append(out, PodVeth{Name: a.Name, Index: a.Index, MasterIndex: a.MasterIndex, Record: r})
		}
	}
	return out, nil
}

// ErrModeConflict is wrapped when a node's datapath was set up by another
// mode than the one asked for: a node changes its mode only drained (no
// pods) and, from bridge mode, only after a reboot that undoes the NIC's
// takeover.
var ErrModeConflict = errors.New("the node runs another datapath mode")

// Pod is a pod's address and the MAC of its interface.
type Pod struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// EnsureVeth creates the pod's veth pair (Veth with the pod's derived MAC)
// and records the pod on the host end (its alias, a PodRecord), or accepts
// this attachment's own existing pair and corrects what an interrupted ADD
// or PrepareVeth left (master, MTU, MAC, state, alias; an alias of an
// earlier version becomes a complete record). created says whether this call made
// the pair. An interface of the name that is not this pair is ErrConflict.
func (n *NS) EnsureVeth(v VethSpec, podNS netns.NsHandle, pnl *netlink.Handle) (host, pod netlink.Link, created bool, err error) {
	hostName, bridgeIndex, mtu := v.HostName, v.MasterIndex, v.MTU
	addErr := n.Netlink.LinkAdd(Veth(hostName, v.IfName, bridgeIndex, mtu, podNS, PodMAC(v.IP)))
	if addErr != nil && !errors.Is(addErr, unix.EEXIST) {
		// The link may exist half-configured (master not set): remove it.
		var derr error
		if l, lerr := n.Netlink.LinkByName(hostName); lerr == nil {
			derr = n.Netlink.LinkDel(l)
		}
		return nil, nil, false, errors.Join(fmt.Errorf("create veth %s/%s: %w", hostName, v.IfName, addErr), derr)
	}
	host, herr := n.Netlink.LinkByName(hostName)
	pod, perr := pnl.LinkByName(v.IfName)
	if addErr == nil {
		if herr != nil || perr != nil {
			return host, nil, true, errors.Join(fmt.Errorf("read back veth %s/%s", hostName, v.IfName), herr, perr)
		}
		// The kernel ignores IFLA_IFALIAS when creating a link.
		if err := n.Netlink.LinkSetAlias(host, v.record(pod.Attrs().HardwareAddr).Alias()); err != nil {
			return host, nil, true, fmt.Errorf("record pod on %s: %w", hostName, err)
		}
		return host, pod, true, nil
	}
	// EEXIST: accept only this attachment's own pair.
	if herr != nil || perr != nil {
		return nil, nil, false, fmt.Errorf("%w: creating veth %s/%s: %w", ErrConflict, hostName, v.IfName, addErr)
	}
	if err := SamePair(host, pod, v.IP); err != nil {
		return nil, nil, false, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	// Correct what an interrupted earlier ADD may have left.
	ha := host.Attrs()
	if ha.MasterIndex != bridgeIndex {
		if err := n.Netlink.LinkSetMasterByIndex(host, bridgeIndex); err != nil {
			return nil, nil, false, fmt.Errorf("enslave %s: %w", hostName, err)
		}
	}
	if ha.MTU != mtu {
		if err := n.Netlink.LinkSetMTU(host, mtu); err != nil {
			return nil, nil, false, fmt.Errorf("set mtu of %s: %w", hostName, err)
		}
	}
	if pod.Attrs().MTU != mtu {
		if err := pnl.LinkSetMTU(pod, mtu); err != nil {
			return nil, nil, false, fmt.Errorf("set mtu of pod %s: %w", v.IfName, err)
		}
	}
	// A pair made by PrepareVeth has a MAC of the kernel's choosing.
	if mac := PodMAC(v.IP); !bytes.Equal(pod.Attrs().HardwareAddr, mac) {
		if err := pnl.LinkSetHardwareAddr(pod, mac); err != nil {
			return nil, nil, false, fmt.Errorf("set mac of pod %s: %w", v.IfName, err)
		}
		pod.Attrs().HardwareAddr = mac
	}
	if ha.Flags&net.FlagUp == 0 {
		if err := n.Netlink.LinkSetUp(host); err != nil {
			return nil, nil, false, fmt.Errorf("set %s up: %w", hostName, err)
		}
	}
	if want := v.record(pod.Attrs().HardwareAddr).Alias(); ha.Alias != want {
		if err := n.Netlink.LinkSetAlias(host, want); err != nil {
			return nil, nil, false, fmt.Errorf("record pod on %s: %w", hostName, err)
		}
	}
	return host, pod, false, nil
}

// HostVethState is the host end of a pod's veth.
type HostVethState struct {
	Name    string
	Index   int
	MAC     net.HardwareAddr
	MTU     int
	Up      bool
	Bridge  string // name of the master it is a port of, "" if none
	Hairpin bool
	// IP and PodMAC as recorded on the link (PodAlias).
	IP     netip.Addr
	PodMAC net.HardwareAddr
}

// InspectHostVeth reads the host end of a pod's veth; nil when it does not
// exist.
func (n *NS) InspectHostVeth(name string) (*HostVethState, error) {
	l, err := n.Netlink.LinkByName(name)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	a := l.Attrs()
	hv := &HostVethState{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
	hv.IP, hv.PodMAC, _ = ParsePodAlias(a.Alias)
	if a.MasterIndex != 0 {
		if m, err := n.Netlink.LinkByIndex(a.MasterIndex); err == nil {
			hv.Bridge = m.Attrs().Name
		}
		pi, err := RetryDump(func() (netlink.Protinfo, error) { return n.Netlink.LinkGetProtinfo(l) })
		if err != nil {
			return nil, fmt.Errorf("bridge port info of %s: %w", name, err)
		}
		hv.Hairpin = pi.Hairpin
	}
	return hv, nil
}

// VethRequest names a pod's veth before its address is known.
type VethRequest struct {
	ContainerID string
	IfName      string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// MTU of both ends; 0 means the master's.
	MTU int
	// Master is the link the host end becomes a port of (a bridge); empty
	// for none.
	Master string
}

// PrepareVeth creates a pod's veth pair ahead of its address, so that the
// kernel's work of creating it (mostly waiting in the kernel) overlaps the
// allocation: the host end up and a port of the master, the pod end down in the pod namespace (no carrier, so no frame
// passes), without address, alias or final MAC. AddPod then finds the
// pair, gives the pod end its MAC and completes it (EnsureVeth) like the
// pair an interrupted ADD left behind. nodeNS is the node's namespace path ("" is
// the caller's).
//
// It creates nothing and returns false when the master does not exist yet
// (the node's first pod) or when the name is taken (a repeated ADD, a
// conflicting interface): AddPod then does all the work and reports any
// conflict. A prepared pair that is not completed is a stray veth for GC.
func PrepareVeth(nodeNS string, req VethRequest) (bool, error) {
	h, err := OpenNS(nodeNS)
	if err != nil {
		return false, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("netlink handle in node netns: %w", err)
	}
	defer nl.Close()
	mtu, masterIndex := req.MTU, 0
	if req.Master != "" {
		m, err := nl.LinkByName(req.Master)
		if IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("master %s: %w", req.Master, err)
		}
		if m.Type() != "bridge" {
			// Not a port's master (a node whose set-up is broken): the
			// completion reports it, with nothing to clean up.
			return false, nil
		}
		masterIndex = m.Attrs().Index
		if mtu == 0 {
			mtu = m.Attrs().MTU
		}
	}
	podNS, err := netns.GetFromPath(req.NetNS)
	if err != nil {
		return false, fmt.Errorf("open pod netns %s: %w", req.NetNS, err)
	}
	defer podNS.Close()
	name := HostVethName(req.ContainerID, req.IfName)
	if err := nl.LinkAdd(Veth(name, req.IfName, masterIndex, mtu, podNS, nil)); err != nil {
		// Whatever the reason, the completion will meet it again and say
		// what it is. The pair may exist without its master (netlink sets
		// the master in a second request): a pair this call created must
		// not outlive the failure. A name that was taken (EEXIST) is not
		// this call's to remove.
		if !errors.Is(err, unix.EEXIST) {
			if l, lerr := nl.LinkByName(name); lerr == nil {
				if derr := nl.LinkDel(l); derr != nil && !IsNotFound(derr) {
					return false, fmt.Errorf("remove the half-made veth %s: %w", name, derr)
				}
			}
		}
		return false, nil
	}
	return true, nil
}

// FindPodVeth looks an attachment's host veth up for DEL: its name
// (ref.HostVethName, else HostVethName of the attachment), the link (nil
// when it does not exist) and the pod's address (ref.IP, else what the
// veth's alias records, else invalid). A link of the name that is not a
// veth is ErrConflict.
func (n *NS) FindPodVeth(ref PodRef) (string, netlink.Link, netip.Addr, error) {
	name := ref.HostVethName
	if name == "" {
		name = HostVethName(ref.ContainerID, ref.IfName)
	}
	ip := ref.IP
	l, err := n.Netlink.LinkByName(name)
	switch {
	case IsNotFound(err):
		return name, nil, ip, nil
	case err != nil:
		return name, nil, ip, fmt.Errorf("link %s: %w", name, err)
	case l.Type() != "veth":
		return name, nil, ip, fmt.Errorf("%w: %s is a %s, not a veth", ErrConflict, name, l.Type())
	}
	if aip, _, ok := ParsePodAlias(l.Attrs().Alias); ok && !ip.IsValid() {
		ip = aip
	}
	return name, l, ip, nil
}

// DelPodVeth is DEL's common line: it finds the attachment's host veth
// (see FindPodVeth), removes the mode's entries for it with delEntries
// (given the veth's name and the pod's address, invalid when unknown) and
// then deletes the veth (both ends; the pod's side goes with it). The veth
// goes even when the entries fail (a lock wait cut by ctx): the error makes
// the runtime retry. A missing link is success.
func (n *NS) DelPodVeth(ref PodRef, delEntries func(hostName string, ip netip.Addr) error) error {
	hostName, l, ip, err := n.FindPodVeth(ref)
	if err != nil {
		return err
	}
	entriesErr := delEntries(hostName, ip)
	if l != nil {
		if err := n.Netlink.LinkDel(l); err != nil && !IsNotFound(err) {
			return errors.Join(entriesErr, fmt.Errorf("delete veth %s: %w", hostName, err))
		}
	}
	return entriesErr
}

// InspectPodVeth is CHECK's common start: the attachment's host veth
// (ref.HostVethName, else HostVethName of the attachment; nil when it does
// not exist) and the pod's address (ref.IP, else what the veth records).
func (n *NS) InspectPodVeth(ref PodRef) (*HostVethState, netip.Addr, error) {
	hostName := ref.HostVethName
	if hostName == "" {
		hostName = HostVethName(ref.ContainerID, ref.IfName)
	}
	hv, err := n.InspectHostVeth(hostName)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	ip := ref.IP
	if hv != nil && !ip.IsValid() {
		ip = hv.IP
	}
	return hv, ip, nil
}
