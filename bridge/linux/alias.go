package linux

import (
	"crypto/sha256"
	"encoding/hex"
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

// MaxAlias is the longest alias the kernel keeps: IFALIASZ (256, in
// linux/if.h; golang.org/x/sys does not export it) less its NUL.
const MaxAlias = 255

// containerIDHash marks a container ID recorded as its SHA-256, when the ID
// itself does not fit in the alias. CNI container IDs are letters, digits,
// "_", "." and "-", so the ":" cannot start a real one.
const containerIDHash = "sha256:"

// PodRecord is what a pod's host veth records of its attachment, in its
// alias: the second witness of the assignment beside vnet-ipamd's store,
// which lives exactly as long as the pod's datapath does.
type PodRecord struct {
	// IP is the pod's address and MAC its interface's.
	IP  netip.Addr
	MAC net.HardwareAddr
	// ContainerID and IfName name the attachment (CNI_CONTAINERID,
	// CNI_IFNAME). A container ID too long to fit in the alias beside the
	// other fields is recorded as its SHA-256 only: then ContainerID is
	// empty and ContainerIDHash holds the digest in hex. Aliases of
	// plugins before this record hold neither, only IP and MAC.
	ContainerID     string
	ContainerIDHash string
	IfName          string
	// Interface is InterfaceTag of the cloud's ID of the interface the
	// address is on (an Azure NIC's resource ID is too long to record);
	// empty when not recorded.
	Interface string
	// Mode is the datapath mode that made the veth when it is not bridge
	// mode (ModeRouted, ModeKubenet); empty for bridge mode and for aliases written
	// before modes were recorded, all of bridge mode.
	Mode string
}

// ModeRouted is PodRecord.Mode of a routed-mode pod's veth.
const ModeRouted = "routed"

// ModeKubenet is PodRecord.Mode of a kubenet-mode pod's veth, and the mode
// field of the kubenet bridge's alias.
const ModeKubenet = "kubenet"

// InterfaceTag is how a pod's alias records the cloud's ID of an interface:
// the first 48 bits of its SHA-256 in hex, unambiguous among the few
// interfaces of an instance.
func InterfaceTag(id string) string {
	if id == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:6])
}

// Alias encodes the record: "vnet-cni ip=… mac=… if=… nic=… mode=… c=…", the
// container ID last and replaced by "sha256:<hex>" when the alias would
// otherwise be longer than MaxAlias. Empty fields are left out.
func (r PodRecord) Alias() string {
	kv := []string{"ip", r.IP.String(), "mac", r.MAC.String()}
	for _, f := range [][2]string{{"if", r.IfName}, {"nic", r.Interface}, {"mode", r.Mode}} {
		if f[1] != "" {
			kv = append(kv, f[0], f[1])
		}
	}
	cid := r.ContainerID
	switch {
	case cid != "":
		if a := Alias(append(kv, "c", cid)...); len(a) <= MaxAlias {
			return a
		}
		sum := sha256.Sum256([]byte(cid))
		cid = containerIDHash + hex.EncodeToString(sum[:])
	case r.ContainerIDHash != "":
		cid = containerIDHash + r.ContainerIDHash
	default:
		return Alias(kv...)
	}
	return Alias(append(kv, "c", cid)...)
}

// ParsePodRecord reads a pod's alias, of this version (PodRecord.Alias) or of
// an earlier one (IP and MAC only). It needs a valid IP and MAC.
func ParsePodRecord(alias string) (PodRecord, bool) {
	if !strings.HasPrefix(alias, AliasPrefix) {
		return PodRecord{}, false
	}
	var r PodRecord
	var err error
	if r.IP, err = netip.ParseAddr(AliasField(alias, "ip")); err != nil {
		return PodRecord{}, false
	}
	if r.MAC, err = net.ParseMAC(AliasField(alias, "mac")); err != nil {
		return PodRecord{}, false
	}
	r.IfName = AliasField(alias, "if")
	r.Interface = AliasField(alias, "nic")
	r.Mode = AliasField(alias, "mode")
	cid := AliasField(alias, "c")
	if h, ok := strings.CutPrefix(cid, containerIDHash); ok {
		r.ContainerIDHash = h
	} else {
		r.ContainerID = cid
	}
	return r, true
}

// Names reports whether the record names the attachment (containerID,
// ifName), comparing a hashed container ID the way Alias made it.
func (r PodRecord) Names(containerID, ifName string) bool {
	if r.IfName != ifName || containerID == "" {
		return false
	}
	if r.ContainerID != "" {
		return r.ContainerID == containerID
	}
	sum := sha256.Sum256([]byte(containerID))
	return r.ContainerIDHash != "" && r.ContainerIDHash == hex.EncodeToString(sum[:])
}

// PodAlias is the alias of a pod's host veth with only the pod's address
// and MAC, as plugins before PodRecord wrote it.
func PodAlias(ip netip.Addr, mac net.HardwareAddr) string {
	return PodRecord{IP: ip, MAC: mac}.Alias()
}

// ParsePodAlias reads the address and MAC of a pod's alias, of any version.
func ParsePodAlias(alias string) (netip.Addr, net.HardwareAddr, bool) {
	r, ok := ParsePodRecord(alias)
	return r.IP, r.MAC, ok
}
