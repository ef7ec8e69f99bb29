package ec2

import "net/netip"

// EC2 reserves five addresses of every subnet: the network address, the VPC
// router (+1), the DNS server (+2), one for future use (+3) and the last.

func firstUsable(p netip.Prefix) netip.Addr {
	return p.Addr().Next().Next().Next().Next()
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// usable reports whether a may be assigned to an ENI in subnet p.
func usable(p netip.Prefix, a netip.Addr) bool {
	return p.Contains(a) && a.Compare(firstUsable(p)) >= 0 && a.Compare(lastAddr(p)) < 0
}

// usableCount is the number of assignable addresses of p.
func usableCount(p netip.Prefix) int { return 1<<(32-p.Bits()) - 5 }

// lowestFree returns up to n of the lowest usable addresses of p for which
// taken is false, in ascending order.
func lowestFree(p netip.Prefix, n int, taken func(netip.Addr) bool) []netip.Addr {
	var out []netip.Addr
	last := lastAddr(p)
	for a := firstUsable(p); len(out) < n && a.Compare(last) < 0; a = a.Next() {
		if !taken(a) {
			out = append(out, a)
		}
	}
	return out
}
