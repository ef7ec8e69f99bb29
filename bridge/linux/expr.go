package linux

import (
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Expressions and addresses the modes' nftables rules share.

// MetadataAddr is the instance metadata service's address on Azure and AWS
// alike: every mode keeps pods away from it unless the node allows them.
var MetadataAddr = netip.AddrFrom4([4]byte{169, 254, 169, 254})

// Offsets in an IPv4 header.
const (
	IPSrc = 12
	IPDst = 16
)

// LoadNet loads n bytes at off of the network header into register 1.
func LoadNet(off, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

// IfnameIs compares the input or output interface name.
func IfnameIs(key expr.MetaKey, name string, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// FromPod matches packets that came in through a pod's host veth (named
// HostVethPrefix…): the comparison covers the prefix's bytes only.
func FromPod() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(HostVethPrefix)},
	}
}

// NotInPrefixes matches an IPv4 destination outside every prefix: the
// address is loaded once into register 1, each prefix is checked through a
// masked copy in register 2.
func NotInPrefixes(ps []netip.Prefix) []expr.Any {
	if len(ps) == 0 {
		return nil
	}
	e := []expr.Any{LoadNet(IPDst, 4)}
	for _, p := range ps {
		mask := net.CIDRMask(p.Bits(), 32)
		e = append(e,
			&expr.Bitwise{SourceRegister: 1, DestRegister: 2, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 2, Data: p.Masked().Addr().AsSlice()})
	}
	return e
}

// NormalPrefixes masks, sorts and de-duplicates IPv4 prefixes.
func NormalPrefixes(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if p.IsValid() && p.Addr().Unmap().Is4() {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// Tables every mode owns, by mode. Each mode reconciles the names of all of
// them, so that the tables another mode left on a drained node are deleted.
var modeTables = [][]string{
	{"vnet-cni", "vnet-cni-guard"}, // bridge mode (package azure0)
	{"vnet-cni-routed"},            // routed mode (package routed)
	{"vnet-cni-kubenet"},           // kubenet mode (package kubenet)
}

// OwnedTables are the names of every mode's nftables tables.
func OwnedTables() []string {
	var out []string
	for _, t := range modeTables {
		out = append(out, t...)
	}
	return out
}
