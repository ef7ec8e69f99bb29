package arm

import "net/netip"

// Azure reserves five addresses of every subnet: the network address, the
// default gateway (first + 1), two addresses for Azure DNS (first + 2 and
// first + 3) and the broadcast address.

// firstUsable is the lowest address Azure hands out in subnet p.
func firstUsable(p netip.Prefix) netip.Addr {
	return p.Addr().Next().Next().Next().Next()
}

// broadcast is the last address of the IPv4 prefix p.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// usable reports whether a may be assigned to an ipConfiguration in subnet p.
func usable(p netip.Prefix, a netip.Addr) bool {
	return p.Contains(a) && a.Compare(firstUsable(p)) >= 0 && a.Compare(broadcast(p)) < 0
}

// reserved reports whether a is in p but one of the addresses Azure keeps.
func reserved(p netip.Prefix, a netip.Addr) bool {
	return p.Contains(a) && !usable(p, a)
}

// lowestFree returns up to n of the lowest usable addresses of p for which
// taken is false, in ascending order.
func lowestFree(p netip.Prefix, n int, taken func(netip.Addr) bool) []netip.Addr {
	var out []netip.Addr
	last := broadcast(p)
	for a := firstUsable(p); len(out) < n && a.Compare(last) < 0; a = a.Next() {
		if !taken(a) {
			out = append(out, a)
		}
	}
	return out
}
