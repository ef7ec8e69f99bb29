// Package podcidr is kubenet mode's source of addresses: the node's pod
// CIDR, handed to vnet-ipamd's pool as if it were a network interface.
//
// Cloud wraps the cloud provider, which still describes the node (its NIC's
// primary address and MAC, the VNet's address space), and replaces its
// interfaces with one: the pod CIDR, whose "secondary addresses" are those
// the pool has taken from it. Taking and returning addresses is local: a
// small allocation file in its own directory, written atomically, plays the
// part the NIC plays in the other modes, a witness of what the pool holds
// beside the address store. No cloud call is made for an address.
//
// When the allocation file is missing (on a node where something may hold
// a pod address) or damaged, every usable address of the pod CIDR is
// reported as taken: the store then keeps what it knows and
// takes the rest as free, or, when the store was lost too, quarantines them
// for its recovery grace (a pod whose ADD was in flight may hold any of
// them). The pool then gives back what it does not need.
package podcidr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
)

// InterfacePrefix starts the interface ID of a pod CIDR ("podcidr/" and the
// CIDR), which assignments and the pods' veths record.
const InterfacePrefix = "podcidr/"

// fileName is the allocation file in the state directory.
const fileName = "allocation.json"

// Instancer describes the node: the cloud provider.
type Instancer interface {
	Instance(ctx context.Context) (cloud.Instance, error)
}

// Config configures a Cloud.
type Config struct {
	// Inner is the cloud provider that describes the node.
	Inner Instancer
	// PodCIDR is the node's pod CIDR (IPv4, /8../29); ClusterCIDR holds it
	// and every other node's.
	PodCIDR     netip.Prefix
	ClusterCIDR netip.Prefix
	// StateDir holds the allocation file; created (0700) when missing.
	StateDir string
	// Fresh says that nothing on the node can hold a pod address (the
	// store is empty and no pod veth or bridge of vnet-cni exists): a
	// missing allocation file is then a new node's, and nothing is taken.
	// A damaged file takes everything whatever Fresh says.
	Fresh  bool
	Logger *slog.Logger
}

// Cloud is a daemon.Cloud over the pod CIDR. It is safe for concurrent use.
type Cloud struct {
	cfg   Config
	path  string
	iface string
	log   *slog.Logger

	mu    sync.Mutex
	taken map[netip.Addr]bool
}

// allocation is the allocation file's content.
type allocation struct {
	PodCIDR   netip.Prefix `json:"podCIDR"`
	Addresses []netip.Addr `json:"addresses"`
}

// New checks cfg, reads the allocation file and returns the Cloud.
func New(cfg Config) (*Cloud, error) {
	p, c := cfg.PodCIDR, cfg.ClusterCIDR
	switch {
	case cfg.Inner == nil:
		return nil, errors.New("podcidr: no cloud provider")
	case !p.IsValid() || !p.Addr().Is4() || p.Masked() != p || p.Bits() < 8 || p.Bits() > 29:
		return nil, fmt.Errorf("podcidr: pod CIDR %s: want an IPv4 network of /8 to /29", p)
	case !c.IsValid() || !c.Addr().Is4() || p.Bits() < c.Bits() || !c.Masked().Contains(p.Addr()):
		return nil, fmt.Errorf("podcidr: pod CIDR %s is not inside the cluster CIDR %s", p, c)
	case !filepath.IsAbs(cfg.StateDir):
		return nil, fmt.Errorf("podcidr: state directory %q is not absolute", cfg.StateDir)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("podcidr: %w", err)
	}
	pc := &Cloud{cfg: cfg, path: filepath.Join(cfg.StateDir, fileName), iface: InterfaceID(p), log: cfg.Logger, taken: map[netip.Addr]bool{}}
	if err := pc.load(); err != nil {
		return nil, err
	}
	return pc, nil
}

// InterfaceID is the interface ID of the pod CIDR p.
func InterfaceID(p netip.Prefix) string { return InterfacePrefix + p.String() }

// Gateway is the pod CIDR's gateway, the local bridge's address: its first
// address.
func Gateway(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// Usable is the number of addresses pods can take from p: all but the
// network's, the gateway's and the broadcast address.
func Usable(p netip.Prefix) int { return 1<<(32-p.Bits()) - 3 }

// usable reports whether pods may hold ip.
func (pc *Cloud) usable(ip netip.Addr) bool {
	p := pc.cfg.PodCIDR
	return p.Contains(ip) && ip != p.Addr() && ip != Gateway(p) && ip != broadcast(p)
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// load reads the allocation file; a missing or damaged one, or one of
// another pod CIDR, takes every usable address (see the package comment).
func (pc *Cloud) load() error {
	data, err := os.ReadFile(pc.path)
	var a allocation
	why := ""
	switch {
	case errors.Is(err, os.ErrNotExist) && pc.cfg.Fresh:
		return pc.saveLocked()
	case errors.Is(err, os.ErrNotExist):
		why = "missing"
	case err != nil:
		return fmt.Errorf("podcidr: read %s: %w", pc.path, err)
	default:
		if jerr := json.Unmarshal(data, &a); jerr != nil {
			why = "damaged: " + jerr.Error()
			aside := pc.path + ".damaged"
			if rerr := os.Rename(pc.path, aside); rerr != nil {
				return fmt.Errorf("podcidr: move the damaged %s aside: %w", pc.path, rerr)
			}
		} else if a.PodCIDR != pc.cfg.PodCIDR {
			why = fmt.Sprintf("of another pod CIDR (%s)", a.PodCIDR)
		}
	}
	if why == "" {
		for _, ip := range a.Addresses {
			if pc.usable(ip) {
				pc.taken[ip] = true
			}
		}
		return nil
	}
	for ip := pc.cfg.PodCIDR.Addr(); pc.cfg.PodCIDR.Contains(ip); ip = ip.Next() {
		if pc.usable(ip) {
			pc.taken[ip] = true
		}
	}
	pc.log.Warn("the pod CIDR's allocation file is "+why+": every address of the pod CIDR counts as taken until the store and the pool sort them out",
		"file", pc.path, "podCIDR", pc.cfg.PodCIDR.String(), "addresses", len(pc.taken))
	return pc.saveLocked()
}

// saveLocked writes the allocation file.
func (pc *Cloud) saveLocked() error {
	a := allocation{PodCIDR: pc.cfg.PodCIDR, Addresses: pc.sortedLocked()}
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(pc.path, append(data, '\n'), 0o600); err != nil {
		return &cloud.Error{Kind: cloud.Transient, Op: "podcidr_Write", Err: err}
	}
	return nil
}

func (pc *Cloud) sortedLocked() []netip.Addr {
	out := make([]netip.Addr, 0, len(pc.taken))
	for ip := range pc.taken {
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Instance is the provider's instance with the pod CIDR as its one
// interface: the NIC's primary address and MAC, the pod CIDR as subnet
// with its gateway, the taken addresses as secondaries; the cluster CIDR
// joins the network's address space (pods reach it without SNAT). A
// cluster CIDR that overlaps the VNet is a Fatal error: the route table
// could not tell pods from VMs.
func (pc *Cloud) Instance(ctx context.Context) (cloud.Instance, error) {
	inst, err := pc.cfg.Inner.Instance(ctx)
	if err != nil {
		return inst, err
	}
	nic, ok := inst.Primary()
	if !ok {
		return inst, &cloud.Error{Kind: cloud.Fatal, Op: "read instance", Err: errors.New("the instance has no primary interface")}
	}
	cluster := pc.cfg.ClusterCIDR.Masked()
	for _, p := range inst.NetworkPrefixes {
		if p.Overlaps(cluster) {
			return inst, &cloud.Error{Kind: cloud.Fatal, Op: "read instance", Code: "ClusterCIDROverlapsVNet",
				Err: fmt.Errorf("the cluster CIDR %s overlaps the VNet's address space %s: kubenet needs pod CIDRs outside the VNet", cluster, p)}
		}
	}
	pc.mu.Lock()
	secondary := pc.sortedLocked()
	pc.mu.Unlock()
	inst.NetworkPrefixes = append(slices.Clone(inst.NetworkPrefixes), cluster)
	inst.Interfaces = []cloud.Interface{{
		ID:           pc.iface,
		MAC:          nic.MAC,
		Primary:      true,
		PrimaryIP:    nic.PrimaryIP,
		Subnet:       pc.cfg.PodCIDR,
		SubnetID:     pc.iface,
		Gateway:      Gateway(pc.cfg.PodCIDR),
		Secondary:    secondary,
		IPForwarding: nic.IPForwarding,
	}}
	inst.Limits = cloud.Limits{Interfaces: 1, AddressesPerInterface: Usable(pc.cfg.PodCIDR) + 1}
	return inst, nil
}

func (pc *Cloud) checkInterface(op, iface string) error {
	if iface != pc.iface {
		return &cloud.Error{Kind: cloud.Fatal, Op: op, Err: fmt.Errorf("interface %q is not the pod CIDR %s", iface, pc.iface)}
	}
	return nil
}

// AddAddresses takes the n lowest addresses of the pod CIDR that are not
// taken; fewer when fewer are left, and a SubnetFull error when none is.
func (pc *Cloud) AddAddresses(_ context.Context, iface string, n int) ([]netip.Addr, error) {
	const op = "podcidr_AddAddresses"
	if err := pc.checkInterface(op, iface); err != nil {
		return nil, err
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var out []netip.Addr
	for ip := pc.cfg.PodCIDR.Addr(); len(out) < n && pc.cfg.PodCIDR.Contains(ip); ip = ip.Next() {
		if pc.usable(ip) && !pc.taken[ip] {
			out = append(out, ip)
		}
	}
	if len(out) == 0 && n > 0 {
		return nil, &cloud.Error{Kind: cloud.SubnetFull, Op: op, Code: "PodCIDRFull",
			Message: fmt.Sprintf("every one of the %d addresses of the pod CIDR %s is taken", Usable(pc.cfg.PodCIDR), pc.cfg.PodCIDR)}
	}
	for _, ip := range out {
		pc.taken[ip] = true
	}
	if err := pc.saveLocked(); err != nil {
		for _, ip := range out {
			delete(pc.taken, ip)
		}
		return nil, err
	}
	return out, nil
}

// RemoveAddresses gives ips back to the pod CIDR; ones not taken are
// ignored.
func (pc *Cloud) RemoveAddresses(_ context.Context, iface string, ips []netip.Addr) error {
	if err := pc.checkInterface("podcidr_RemoveAddresses", iface); err != nil {
		return err
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var removed []netip.Addr
	for _, ip := range ips {
		if pc.taken[ip] {
			delete(pc.taken, ip)
			removed = append(removed, ip)
		}
	}
	if len(removed) == 0 {
		return nil
	}
	if err := pc.saveLocked(); err != nil {
		for _, ip := range removed {
			pc.taken[ip] = true
		}
		return err
	}
	return nil
}

// RestoreAddresses takes ips again (an operator edited the allocation
// file). All or nothing: an address outside the pod CIDR (pods of an
// earlier pod CIDR still hold it) is Fatal.
func (pc *Cloud) RestoreAddresses(_ context.Context, iface string, ips []netip.Addr) error {
	const op = "podcidr_RestoreAddresses"
	if err := pc.checkInterface(op, iface); err != nil {
		return err
	}
	for _, ip := range ips {
		if !pc.usable(ip) {
			return &cloud.Error{Kind: cloud.Fatal, Op: op, Code: "NotInPodCIDR",
				Message: fmt.Sprintf("%s is not a pod address of the pod CIDR %s: its pod belongs to an earlier pod CIDR of this node; drain the node", ip, pc.cfg.PodCIDR)}
		}
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	var added []netip.Addr
	for _, ip := range ips {
		if !pc.taken[ip] {
			pc.taken[ip] = true
			added = append(added, ip)
		}
	}
	if len(added) == 0 {
		return nil
	}
	if err := pc.saveLocked(); err != nil {
		for _, ip := range added {
			delete(pc.taken, ip)
		}
		return err
	}
	return nil
}

// Taken returns the number of addresses taken from the pod CIDR.
func (pc *Cloud) Taken() int {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return len(pc.taken)
}
