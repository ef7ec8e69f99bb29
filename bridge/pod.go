package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrConflict is wrapped by AddPod's error when an interface of the wanted
// name exists and is not this pod's veth.
var ErrConflict = errors.New("conflicting interface")

// ErrNotReady is wrapped when the node has no bridge or no nftables table
// yet: EnsureNode must run first.
var ErrNotReady = errors.New("node datapath not initialised")

// PodConfig describes one pod attachment.
type PodConfig struct {
	ContainerID string
	// IfName is the interface inside the pod, e.g. "eth0".
	IfName string
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// IP is the pod's address; Subnet gives its prefix length.
	IP      netip.Addr
	Subnet  netip.Prefix
	Gateway netip.Addr
	// MTU of both veth ends; 0 means the bridge's.
	MTU int
	// Bridge is the bridge's name; default DefaultBridgeName.
	Bridge string
	// HostVethName overrides HostVethName(ContainerID, IfName); it must
	// start with HostVethPrefix, which the guard table relies on.
	HostVethName string
}

// PodRef names an attachment for DelPod and InspectPod. NetNS and IP are
// optional: without them DelPod relies on what the host veth records.
type PodRef struct {
	ContainerID  string
	IfName       string
	NetNS        string
	IP           netip.Addr
	HostVethName string
}

// Link is one end of a pod's veth.
type Link struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	// NetNS is the namespace path for the pod end, empty for the host end.
	NetNS string
}

// PodResult is what AddPod built.
type PodResult struct {
	HostVeth Link
	PodIf    Link
	// IP is the pod's address with the subnet's prefix length.
	IP      netip.Prefix
	Gateway netip.Addr
}

// HostVethName is the host-side veth name of an attachment: stable, unique
// per (container, interface) and at most 15 characters.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:6])
}

// HostVethPrefix starts the name of every pod veth vnet-cni creates; the
// guard table recognises pod ports by it.
const HostVethPrefix = "vnc"

func (c PodConfig) validate() error {
	var errs []error
	if c.ContainerID == "" {
		errs = append(errs, errors.New("container id is empty"))
	}
	if c.HostVethName != "" && (!strings.HasPrefix(c.HostVethName, HostVethPrefix) || len(c.HostVethName) > unix.IFNAMSIZ-1) {
		errs = append(errs, fmt.Errorf("host veth name %q: want %s followed by up to %d characters", c.HostVethName, HostVethPrefix, unix.IFNAMSIZ-1-len(HostVethPrefix)))
	}
	if c.IfName == "" || len(c.IfName) > unix.IFNAMSIZ-1 {
		errs = append(errs, fmt.Errorf("interface name %q: want 1 to 15 characters", c.IfName))
	}
	if c.NetNS == "" {
		errs = append(errs, errors.New("pod netns is empty"))
	}
	if !c.IP.Is4() {
		errs = append(errs, fmt.Errorf("pod ip %s: want ipv4", c.IP))
	}
	if !c.Subnet.IsValid() || !c.Subnet.Contains(c.IP) {
		errs = append(errs, fmt.Errorf("subnet %s does not contain the pod ip %s", c.Subnet, c.IP))
	}
	if !c.Subnet.Contains(c.Gateway) || c.Gateway == c.IP {
		errs = append(errs, fmt.Errorf("gateway %s: want another address of subnet %s", c.Gateway, c.Subnet))
	}
	if c.HostVethName != "" && len(c.HostVethName) > unix.IFNAMSIZ-1 {
		errs = append(errs, fmt.Errorf("host veth name %q is longer than 15 characters", c.HostVethName))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	return nil
}

// AddPod creates the pod's veth with its pod end directly in the pod
// namespace, the host end a hairpin port of the bridge, configures address,
// link and default route inside the pod, and registers the pod's IP and MAC
// in the nftables tables. Re-adding an identical attachment succeeds; on any
// failure a veth created by this call is removed again.
func (n *Node) AddPod(ctx context.Context, cfg PodConfig) (res PodResult, err error) {
	if err := cfg.validate(); err != nil {
		return res, err
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridgeName
	}
	hostName := cfg.HostVethName
	if hostName == "" {
		hostName = HostVethName(cfg.ContainerID, cfg.IfName)
	}
	br, err := n.nl.LinkByName(cfg.Bridge)
	if err != nil {
		return res, fmt.Errorf("%w: bridge %s: %w", ErrNotReady, cfg.Bridge, err)
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}
	podNS, err := netns.GetFromPath(cfg.NetNS)
	if err != nil {
		return res, fmt.Errorf("open pod netns %s: %w", cfg.NetNS, err)
	}
	defer podNS.Close()
	pnl, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return res, fmt.Errorf("netlink handle in pod netns: %w", err)
	}
	defer pnl.Close()

	host, pod, created, err := n.ensureVeth(cfg, hostName, br.Attrs().Index, mtu, podNS, pnl)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil && created {
			if derr := n.nl.LinkDel(host); derr != nil && !isNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("remove veth %s after failure: %w", hostName, derr))
			}
		}
	}()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := n.nl.LinkSetHairpin(host, true); err != nil {
		return res, fmt.Errorf("hairpin on %s: %w", hostName, err)
	}
	if err := configurePod(pnl, pod, cfg); err != nil {
		return res, err
	}
	podMAC := pod.Attrs().HardwareAddr
	if err := n.addPodEntries(ctx, hostName, cfg.IP, podMAC); err != nil {
		return res, err
	}
	if err := n.refreshNeighbour(br.Attrs().Index, cfg.IP, podMAC); err != nil {
		return res, err
	}
	return PodResult{
		HostVeth: Link{Name: hostName, Index: host.Attrs().Index, MAC: host.Attrs().HardwareAddr},
		PodIf:    Link{Name: cfg.IfName, Index: pod.Attrs().Index, MAC: podMAC, NetNS: cfg.NetNS},
		IP:       netip.PrefixFrom(cfg.IP, cfg.Subnet.Bits()),
		Gateway:  cfg.Gateway,
	}, nil
}

// ensureVeth creates the veth pair or accepts an identical existing one.
func (n *Node) ensureVeth(cfg PodConfig, hostName string, bridgeIndex, mtu int, podNS netns.NsHandle, pnl *netlink.Handle) (host, pod netlink.Link, created bool, err error) {
	addErr := n.nl.LinkAdd(podVeth(hostName, cfg.IfName, bridgeIndex, mtu, podNS, PodMAC(cfg.IP)))
	if addErr != nil && !errors.Is(addErr, unix.EEXIST) {
		// The link may exist half-configured (master not set): remove it.
		var derr error
		if l, lerr := n.nl.LinkByName(hostName); lerr == nil {
			derr = n.nl.LinkDel(l)
		}
		return nil, nil, false, errors.Join(fmt.Errorf("create veth %s/%s: %w", hostName, cfg.IfName, addErr), derr)
	}
	host, herr := n.nl.LinkByName(hostName)
	pod, perr := pnl.LinkByName(cfg.IfName)
	if addErr == nil {
		if herr != nil || perr != nil {
			return host, nil, true, errors.Join(fmt.Errorf("read back veth %s/%s", hostName, cfg.IfName), herr, perr)
		}
		// The kernel ignores IFLA_IFALIAS when creating a link.
		if err := n.nl.LinkSetAlias(host, podAlias(cfg.IP, pod.Attrs().HardwareAddr)); err != nil {
			return host, nil, true, fmt.Errorf("record pod on %s: %w", hostName, err)
		}
		return host, pod, true, nil
	}
	// EEXIST: accept only this attachment's own pair.
	if herr != nil || perr != nil {
		return nil, nil, false, fmt.Errorf("%w: creating veth %s/%s: %w", ErrConflict, hostName, cfg.IfName, addErr)
	}
	if err := samePair(host, pod, cfg.IP); err != nil {
		return nil, nil, false, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	// Correct what an interrupted earlier ADD may have left.
	ha := host.Attrs()
	if ha.MasterIndex != bridgeIndex {
		if err := n.nl.LinkSetMasterByIndex(host, bridgeIndex); err != nil {
			return nil, nil, false, fmt.Errorf("enslave %s: %w", hostName, err)
		}
	}
	if ha.MTU != mtu {
		if err := n.nl.LinkSetMTU(host, mtu); err != nil {
			return nil, nil, false, fmt.Errorf("set mtu of %s: %w", hostName, err)
		}
	}
	if pod.Attrs().MTU != mtu {
		if err := pnl.LinkSetMTU(pod, mtu); err != nil {
			return nil, nil, false, fmt.Errorf("set mtu of pod %s: %w", cfg.IfName, err)
		}
	}
	// A pair made by PrepareVeth has a MAC of the kernel's choosing.
	if mac := PodMAC(cfg.IP); !bytes.Equal(pod.Attrs().HardwareAddr, mac) {
		if err := pnl.LinkSetHardwareAddr(pod, mac); err != nil {
			return nil, nil, false, fmt.Errorf("set mac of pod %s: %w", cfg.IfName, err)
		}
		pod.Attrs().HardwareAddr = mac
	}
	if ha.Flags&net.FlagUp == 0 {
		if err := n.nl.LinkSetUp(host); err != nil {
			return nil, nil, false, fmt.Errorf("set %s up: %w", hostName, err)
		}
	}
	if want := podAlias(cfg.IP, pod.Attrs().HardwareAddr); ha.Alias != want {
		if err := n.nl.LinkSetAlias(host, want); err != nil {
			return nil, nil, false, fmt.Errorf("record pod on %s: %w", hostName, err)
		}
	}
	return host, pod, false, nil
}

// podVeth is a pod's pair as vnet-cni creates it: the host end up and a
// port of the bridge, the pod end (down) directly in the pod namespace, both
// with the MTU. A nil podMAC leaves the pod end's MAC to the kernel.
func podVeth(hostName, ifName string, bridgeIndex, mtu int, podNS netns.NsHandle, podMAC net.HardwareAddr) *netlink.Veth {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	attrs.Flags = net.FlagUp
	attrs.MasterIndex = bridgeIndex
	return &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         ifName,
		PeerHardwareAddr: podMAC,
		PeerNamespace:    netlink.NsFd(int(podNS)),
		PeerMTU:          uint32(mtu),
	}
}

// samePair checks that host and pod are the two ends of one veth made for ip.
func samePair(host, pod netlink.Link, ip netip.Addr) error {
	h, p := host.Attrs(), pod.Attrs()
	if host.Type() != "veth" || pod.Type() != "veth" {
		return fmt.Errorf("%s (%s) and %s (%s) are not a veth pair", h.Name, host.Type(), p.Name, pod.Type())
	}
	if h.ParentIndex != p.Index || p.ParentIndex != h.Index {
		return fmt.Errorf("%s and %s exist but are not peers", h.Name, p.Name)
	}
	// No alias: an earlier ADD stopped right after creating the pair.
	if aip, _, ok := parsePodAlias(h.Alias); h.Alias != "" && (!ok || aip != ip) {
		return fmt.Errorf("%s exists for another attachment (alias %q)", h.Name, h.Alias)
	}
	return nil
}

// configurePod sets address, link state and default route inside the pod.
func configurePod(pnl *netlink.Handle, pod netlink.Link, cfg PodConfig) error {
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(cfg.IP, cfg.Subnet.Bits()))}
	if err := pnl.AddrAdd(pod, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to pod %s: %w", addr.IPNet, cfg.IfName, err)
	}
	if pod.Attrs().Flags&net.FlagUp == 0 {
		if err := pnl.LinkSetUp(pod); err != nil {
			return fmt.Errorf("set pod %s up: %w", cfg.IfName, err)
		}
	}
	def := &netlink.Route{
		LinkIndex: pod.Attrs().Index,
		Dst:       ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		Gw:        cfg.Gateway.AsSlice(),
	}
	if err := pnl.RouteReplace(def); err != nil {
		return fmt.Errorf("default route via %s in pod: %w", cfg.Gateway, err)
	}
	return nil
}

func (n *Node) changePodLocked(ip netip.Addr, mac net.HardwareAddr, add bool) error {
	bt := &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
	it := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	bmap := wantTable{table: bt, isMap: true}.podSet()
	iset := wantTable{table: it}.podSet()
	belems, bok, err := n.readPodSet(bmap)
	if err != nil {
		return err
	}
	ielems, iok, err := n.readPodSet(iset)
	if err != nil {
		return err
	}
	pods := map[netip.Addr]net.HardwareAddr{ip: mac}
	queued := false
	var errs []error
	if add {
		if !bok {
			return fmt.Errorf("%w: no nftables map %s %s", ErrNotReady, TableName, podSet)
		}
		if have, ok := belems[ip]; !ok || have != mac.String() {
			if ok {
				errs = append(errs, n.nft.SetDeleteElements(bmap, elements(bmap, nil, []netip.Addr{ip})))
			}
			errs = append(errs, n.nft.SetAddElements(bmap, elements(bmap, pods, []netip.Addr{ip})))
			queued = true
		}
		if _, ok := ielems[ip]; iok && !ok {
			errs = append(errs, n.nft.SetAddElements(iset, elements(iset, nil, []netip.Addr{ip})))
			queued = true
		}
	} else {
		have, ok := belems[ip]
		owned := ok && (mac == nil || have == mac.String())
		if owned {
			errs = append(errs, n.nft.SetDeleteElements(bmap, elements(bmap, nil, []netip.Addr{ip})))
			queued = true
		}
		// The ip set follows the map: keep the address only while another
		// pod's MAC is registered for it.
		if _, ok := ielems[ip]; ok && (owned || !inMap(belems, ip)) {
			errs = append(errs, n.nft.SetDeleteElements(iset, elements(iset, nil, []netip.Addr{ip})))
			queued = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, n.discardBatch())
	}
	if !queued {
		return nil
	}
	if err := n.nft.Flush(); err != nil {
		return fmt.Errorf("update pod %s in nftables: %w", ip, err)
	}
	return nil
}

func inMap(m map[netip.Addr]string, ip netip.Addr) bool {
	_, ok := m[ip]
	return ok
}

// DelPod removes the attachment's veth (both ends) and its nftables
// entries. Missing netns, link or entries are success, so is a repeated
// DelPod. The IP is taken from ref, from what the veth records or from the
// guard set; an address another pod on the node now holds keeps its entries.
func (n *Node) DelPod(ctx context.Context, ref PodRef) error {
	hostName := ref.HostVethName
	if hostName == "" {
		hostName = HostVethName(ref.ContainerID, ref.IfName)
	}
	ip := ref.IP
	l, err := n.nl.LinkByName(hostName)
	switch {
	case isNotFound(err):
		l = nil
	case err != nil:
		return fmt.Errorf("link %s: %w", hostName, err)
	default:
		if l.Type() != "veth" {
			return fmt.Errorf("%w: %s is a %s, not a veth", ErrConflict, hostName, l.Type())
		}
		if aip, _, ok := parsePodAlias(l.Attrs().Alias); ok && !ip.IsValid() {
			ip = aip
		}
	}
	// The nftables entries go first: removing set elements leaves the
	// kernel an RCU grace period of cleanup, which overlaps with the veth
	// deletion here instead of being waited for when the plugin closes its
	// nftables socket (about 10 ms of every DEL).
	if err := n.delPodEntries(ctx, hostName, ip); err != nil {
		return err
	}
	if l == nil {
		return nil
	}
	if err := n.nl.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete veth %s: %w", hostName, err)
	}
	return nil
}

// PodState is what InspectPod found; nil parts are missing.
type PodState struct {
	HostVeth *HostVethState
	PodIf    *PodIfState
	// RegisteredMAC is the MAC the bridge table maps the IP to (nil: none);
	// SNATRegistered says whether the ip table's pod set holds the IP.
	RegisteredMAC  net.HardwareAddr
	SNATRegistered bool
}

// HostVethState is the host end of a pod's veth.
type HostVethState struct {
	Name    string
	Index   int
	MAC     net.HardwareAddr
	MTU     int
	Up      bool
	Bridge  string // name of the bridge it is a port of, "" if none
	Hairpin bool
	// IP and PodMAC as recorded on the link by AddPod.
	IP     netip.Addr
	PodMAC net.HardwareAddr
}

// PodIfState is the pod end of the veth, inside the pod namespace.
type PodIfState struct {
	Name   string
	Index  int
	MAC    net.HardwareAddr
	MTU    int
	Up     bool
	Addrs  []netip.Prefix
	Routes []Route
}

// Route is an IPv4 route inside the pod; Gw is invalid for direct routes.
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// InspectPod reports what really exists of an attachment, for CHECK. The
// pod side is read only when ref.NetNS is set; the nftables entries only
// when the IP is known (from ref or the host veth).
func (n *Node) InspectPod(_ context.Context, ref PodRef) (PodState, error) {
	var st PodState
	hostName := ref.HostVethName
	if hostName == "" {
		hostName = HostVethName(ref.ContainerID, ref.IfName)
	}
	ip := ref.IP
	l, err := n.nl.LinkByName(hostName)
	switch {
	case isNotFound(err):
	case err != nil:
		return st, fmt.Errorf("link %s: %w", hostName, err)
	default:
		a := l.Attrs()
		hv := &HostVethState{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
		hv.IP, hv.PodMAC, _ = parsePodAlias(a.Alias)
		if a.MasterIndex != 0 {
			if m, err := n.nl.LinkByIndex(a.MasterIndex); err == nil {
				hv.Bridge = m.Attrs().Name
			}
			pi, err := retryDump(func() (netlink.Protinfo, error) { return n.nl.LinkGetProtinfo(l) })
			if err != nil {
				return st, fmt.Errorf("bridge port info of %s: %w", hostName, err)
			}
			hv.Hairpin = pi.Hairpin
		}
		if !ip.IsValid() {
			ip = hv.IP
		}
		st.HostVeth = hv
	}
	if ref.NetNS != "" {
		pst, err := inspectPodSide(ref.NetNS, ref.IfName)
		if err != nil {
			return st, err
		}
		st.PodIf = pst
	}
	if ip.IsValid() {
		bmap := wantTable{table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}, isMap: true}.podSet()
		elems, _, err := n.readPodSet(bmap)
		if err != nil {
			return st, err
		}
		if mac, ok := elems[ip]; ok {
			st.RegisteredMAC, _ = net.ParseMAC(mac)
		}
		iset := wantTable{table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}}.podSet()
		ielems, _, err := n.readPodSet(iset)
		if err != nil {
			return st, err
		}
		_, st.SNATRegistered = ielems[ip]
	}
	return st, nil
}

func inspectPodSide(nsPath, ifName string) (*PodIfState, error) {
	h, err := netns.GetFromPath(nsPath)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pod netns %s: %w", nsPath, err)
	}
	defer h.Close()
	pnl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in pod netns: %w", err)
	}
	defer pnl.Close()
	l, err := pnl.LinkByName(ifName)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pod link %s: %w", ifName, err)
	}
	a := l.Attrs()
	st := &PodIfState{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return pnl.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("pod addresses: %w", err)
	}
	for _, ad := range addrs {
		if p, ok := prefixOf(ad.IPNet); ok {
			st.Addrs = append(st.Addrs, p)
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return pnl.RouteList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("pod routes: %w", err)
	}
	for _, r := range routes {
		var rt Route
		if r.Dst == nil {
			rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		} else if p, ok := prefixOf(r.Dst); ok {
			rt.Dst = p
		}
		if r.Gw != nil {
			rt.Gw, _ = netip.AddrFromSlice(r.Gw.To4())
		}
		st.Routes = append(st.Routes, rt)
	}
	return st, nil
}

func podAlias(ip netip.Addr, mac net.HardwareAddr) string {
	return aliasPrefix + "ip=" + ip.String() + " mac=" + mac.String()
}

func parsePodAlias(alias string) (netip.Addr, net.HardwareAddr, bool) {
	if !strings.HasPrefix(alias, aliasPrefix) {
		return netip.Addr{}, nil, false
	}
	ip, err := netip.ParseAddr(aliasField(alias, "ip"))
	if err != nil {
		return netip.Addr{}, nil, false
	}
	mac, err := net.ParseMAC(aliasField(alias, "mac"))
	if err != nil {
		return netip.Addr{}, nil, false
	}
	return ip, mac, true
}
