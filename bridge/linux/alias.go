package linux

import (
	"net"
	"net/netip"
	"strings"
)

// AliasPrefix marks links owned by vnet-cni; the rest of the alias records
// what is needed to rebuild state (a bridge's master, a pod's IP and MAC) as
// key=value fields.
const AliasPrefix = "vnet-cni "

// Alias is a vnet-cni alias with the fields key=value, in order.
func Alias(kv ...string) string {
	var b strings.Builder
	b.WriteString(AliasPrefix)
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[i] + "=" + kv[i+1])
	}
	return b.String()
}

// AliasField returns the value of key=value in a vnet-cni alias.
func AliasField(alias, key string) string {
	rest, ok := strings.CutPrefix(alias, AliasPrefix)
	if !ok {
		return ""
	}
	for f := range strings.FieldsSeq(rest) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// PodAlias is the alias of a pod's host veth: the pod's address and MAC.
func PodAlias(ip netip.Addr, mac net.HardwareAddr) string {
	return Alias("ip", ip.String(), "mac", mac.String())
}

// ParsePodAlias reads a PodAlias.
func ParsePodAlias(alias string) (netip.Addr, net.HardwareAddr, bool) {
	if !strings.HasPrefix(alias, AliasPrefix) {
		return netip.Addr{}, nil, false
	}
	ip, err := netip.ParseAddr(AliasField(alias, "ip"))
	if err != nil {
		return netip.Addr{}, nil, false
	}
	mac, err := net.ParseMAC(AliasField(alias, "mac"))
	if err != nil {
		return netip.Addr{}, nil, false
	}
	return ip, mac, true
}
