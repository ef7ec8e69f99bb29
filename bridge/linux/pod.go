package linux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ConfigurePod sets the address (with its prefix length), link state and
// default route via gw of the pod's interface, through a netlink handle in
// the pod namespace; with onlink the gateway need not be in the address's
// prefix (routed mode's link-local gateway). A pod with several attachments
// has a default route on each, told apart by their metric (see
// defaultMetric), so that removing one attachment leaves the others' routes.
func ConfigurePod(pnl *netlink.Handle, pod netlink.Link, ip netip.Prefix, gw netip.Addr, onlink bool) error {
	name := pod.Attrs().Name
	addr := &netlink.Addr{IPNet: IPNet(ip)}
	if err := pnl.AddrAdd(pod, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to pod %s: %w", addr.IPNet, name, err)
	}
	if pod.Attrs().Flags&net.FlagUp == 0 {
		if err := pnl.LinkSetUp(pod); err != nil {
			return fmt.Errorf("set pod %s up: %w", name, err)
		}
	}
	metric, err := defaultMetric(pnl, pod.Attrs().Index)
	if err != nil {
		return err
	}
	def := &netlink.Route{
		LinkIndex: pod.Attrs().Index,
		Dst:       IPNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		Gw:        gw.AsSlice(),
		Priority:  metric,
	}
	if onlink {
		def.Flags = int(netlink.FLAG_ONLINK)
	}
	if err := pnl.RouteReplace(def); err != nil {
		return fmt.Errorf("default route via %s in pod: %w", gw, err)
	}
	return nil
}

// defaultMetric is the metric of the default route of the pod interface
// linkIndex: the one it has already (a repeated ADD), else the lowest that
// no other interface's default route of the main table uses. A kernel route
// is keyed by table, destination and metric, not by interface: with one
// metric for every attachment, the second attachment's default route would
// replace the first's, and deleting the second (its veth) would leave the
// pod without any. The first attachment keeps metric 0 and stays the pod's
// way out.
func defaultMetric(pnl *netlink.Handle, linkIndex int) (int, error) {
	routes, err := RetryDump(func() ([]netlink.Route, error) {
		return pnl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, fmt.Errorf("pod routes: %w", err)
	}
	used := map[int]bool{}
	for _, r := range routes {
		if r.Dst != nil && (!r.Dst.IP.IsUnspecified() || prefixLen(r.Dst) != 0) {
			continue
		}
		if r.LinkIndex == linkIndex {
			return r.Priority, nil
		}
		used[r.Priority] = true
	}
	m := 0
	for used[m] {
		m++
	}
	return m, nil
}

func prefixLen(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
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
	// Neighbours are the interface's permanent IPv4 neighbour entries.
	Neighbours []Neighbour
}

// Neighbour is a permanent neighbour entry.
type Neighbour struct {
	IP  netip.Addr
	MAC net.HardwareAddr
}

// Route is an IPv4 route inside the pod; Gw is invalid for direct routes.
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// InspectPodSide reads the pod's interface ifName in the namespace at
// nsPath; a missing namespace or interface is nil without error.
func InspectPodSide(nsPath, ifName string) (*PodIfState, error) {
	h, err := netns.GetFromPath(nsPath)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pod netns %s: %w", nsPath, err)
	}
	defer h.Close()
	pnl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in pod netns: %w", err)
	}
	defer pnl.Close()
	l, err := pnl.LinkByName(ifName)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pod link %s: %w", ifName, err)
	}
	a := l.Attrs()
	st := &PodIfState{Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0}
	addrs, err := RetryDump(func() ([]netlink.Addr, error) { return pnl.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("pod addresses: %w", err)
	}
	for _, ad := range addrs {
		if p, ok := PrefixOf(ad.IPNet); ok {
			st.Addrs = append(st.Addrs, p)
		}
	}
	routes, err := RetryDump(func() ([]netlink.Route, error) { return pnl.RouteList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("pod routes: %w", err)
	}
	for _, r := range routes {
		var rt Route
		if r.Dst == nil {
			rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		} else if p, ok := PrefixOf(r.Dst); ok {
			rt.Dst = p
		}
		if r.Gw != nil {
			rt.Gw, _ = netip.AddrFromSlice(r.Gw.To4())
		}
		st.Routes = append(st.Routes, rt)
	}
	neighs, err := RetryDump(func() ([]netlink.Neigh, error) { return pnl.NeighList(a.Index, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("pod neighbours: %w", err)
	}
	for _, nb := range neighs {
		if ip, ok := netip.AddrFromSlice(nb.IP.To4()); ok && nb.State&netlink.NUD_PERMANENT != 0 {
			st.Neighbours = append(st.Neighbours, Neighbour{IP: ip, MAC: nb.HardwareAddr})
		}
	}
	return st, nil
}

// PrefixOf converts a netlink address to a prefix.
func PrefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// IPNet converts a prefix for netlink.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
