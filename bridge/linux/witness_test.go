package linux

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// nicID is an Azure NIC's resource ID of the usual length.
const nicID = "/subscriptions/5e1f0000-5e1f-4000-8000-00000000c0de/resourceGroups/my-cluster-nodes-westeurope/providers/Microsoft.Network/networkInterfaces/aks-nodepool1-12345678-vmss000000-nic"

var cmpRecord = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestPodRecordAlias(t *testing.T) {
	mac := PodMAC(netip.MustParseAddr("10.240.0.7"))
	id64 := strings.Repeat("ab", 32) // containerd's, CRI-O's
	tests := []struct {
		name  string
		rec   PodRecord
		alias string
		// parsed is what ParsePodRecord reads back; zero means rec.
		parsed PodRecord
	}{
		{
			name:  "complete",
			rec:   PodRecord{IP: netip.MustParseAddr("10.240.0.7"), MAC: mac, ContainerID: id64, IfName: "eth0", Interface: InterfaceTag(nicID)},
			alias: "vnet-cni ip=10.240.0.7 mac=0a:58:0a:f0:00:07 if=eth0 nic=" + InterfaceTag(nicID) + " c=" + id64,
		},
		{
			name:  "as plugins before the record wrote it",
			rec:   PodRecord{IP: netip.MustParseAddr("10.240.0.7"), MAC: mac},
			alias: "vnet-cni ip=10.240.0.7 mac=0a:58:0a:f0:00:07",
		},
		{
			name:  "without interface",
			rec:   PodRecord{IP: netip.MustParseAddr("10.240.0.7"), MAC: mac, ContainerID: "c1", IfName: "net1"},
			alias: "vnet-cni ip=10.240.0.7 mac=0a:58:0a:f0:00:07 if=net1 c=c1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.rec.Alias()
			if got != tc.alias {
				t.Errorf("Alias() = %q, want %q", got, tc.alias)
			}
			back, ok := ParsePodRecord(got)
			if !ok {
				t.Fatalf("ParsePodRecord(%q) failed", got)
			}
			if diff := cmp.Diff(tc.rec, back, cmpRecord); diff != "" {
				t.Errorf("parsed back (-want +got):\n%s", diff)
			}
			ip, pmac, ok := ParsePodAlias(got)
			if !ok || ip != tc.rec.IP || pmac.String() != mac.String() {
				t.Errorf("ParsePodAlias = %s %s %v", ip, pmac, ok)
			}
			if tc.rec.ContainerID != "" && !back.Names(tc.rec.ContainerID, tc.rec.IfName) {
				t.Error("the record does not name its own attachment")
			}
		})
	}
	for _, bad := range []string{"", "vnet-cni master=eth0", "vnet-cni ip=10.0.0.1", "vnet-cni mac=0a:58:0a:00:00:01", "other ip=10.0.0.1 mac=0a:58:0a:00:00:01", "vnet-cni ip=x mac=0a:58:0a:00:00:01"} {
		if r, ok := ParsePodRecord(bad); ok {
			t.Errorf("ParsePodRecord(%q) = %+v, want failure", bad, r)
		}
	}
}

// TestPodRecordLimits fills every field to its longest (an IPv4 address of
// 15 characters, an interface name of 15) and finds the longest container
// ID that the alias records verbatim: one more character and it records the
// ID's SHA-256, which Names compares the same way. Every alias fits in
// MaxAlias.
func TestPodRecordLimits(t *testing.T) {
	rec := PodRecord{
		IP: netip.MustParseAddr("255.255.255.255"), MAC: PodMAC(netip.MustParseAddr("255.255.255.255")),
		IfName: strings.Repeat("i", unix.IFNAMSIZ-1), Interface: InterfaceTag(nicID),
	}
	longest := 0
	for n := 1; n <= 1000; n++ {
		rec.ContainerID = strings.Repeat("c", n)
		a := rec.Alias()
		if len(a) > MaxAlias {
			t.Fatalf("a container id of %d bytes gives an alias of %d bytes, more than %d", n, len(a), MaxAlias)
		}
		back, _ := ParsePodRecord(a)
		if !back.Names(rec.ContainerID, rec.IfName) {
			t.Fatalf("the alias of a container id of %d bytes does not name it: %q", n, a)
		}
		if back.Names(rec.ContainerID+"x", rec.IfName) || back.Names(rec.ContainerID, "eth0") {
			t.Fatalf("the alias of a container id of %d bytes names another attachment", n)
		}
		if back.ContainerID == rec.ContainerID {
			longest = n
		} else if sum := sha256.Sum256([]byte(rec.ContainerID)); back.ContainerIDHash != hex.EncodeToString(sum[:]) {
			t.Fatalf("container id of %d bytes recorded as %+v", n, back)
		}
	}
	if want := MaxAlias - len("vnet-cni ip=255.255.255.255 mac=0a:58:ff:ff:ff:ff if=iiiiiiiiiiiiiii nic=0123456789ab c="); longest != want {
		t.Errorf("longest container id recorded verbatim: %d bytes, want %d", longest, want)
	}
	t.Logf("container ids up to %d bytes are recorded verbatim, longer ones as their SHA-256", longest)
	// 64 characters (containerd, CRI-O) always fit with room to spare.
	rec.ContainerID = strings.Repeat("f", 64)
	if back, _ := ParsePodRecord(rec.Alias()); back.ContainerID != rec.ContainerID {
		t.Errorf("a 64-character container id is not recorded verbatim")
	}
}

// TestReadWitness builds pod veths in a fresh namespace as the plugin does
// (the longest alias of all, an alias of an earlier plugin, a veth an ADD
// has not finished) and reads them back through the kernel.
func TestReadWitness(t *testing.T) {
	nstest.RequireRoot(t)
	nsPath := nstest.NewNS(t, "witness")
	nl := nstest.Netlink(t, nsPath)
	w, err := ReadWitness(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	if w.Owned || len(w.Pods) != 0 {
		t.Errorf("witness of an empty namespace: %+v", w)
	}

	peers := 0
	veth := func(name string) netlink.Link {
		t.Helper()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		peers++
		if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: fmt.Sprintf("peer%d", peers)}); err != nil {
			t.Fatal(err)
		}
		l, err := nl.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	long := PodRecord{
		IP: netip.MustParseAddr("255.255.255.254"), MAC: PodMAC(netip.MustParseAddr("255.255.255.254")),
		IfName: strings.Repeat("i", unix.IFNAMSIZ-1), Interface: InterfaceTag(nicID),
		ContainerID: strings.Repeat("c", 167),
	}
	longName := HostVethName(long.ContainerID, long.IfName)
	if err := nl.LinkSetAlias(veth(longName), long.Alias()); err != nil {
		t.Fatalf("the kernel refuses an alias of %d bytes: %v", len(long.Alias()), err)
	}
	if n := len(long.Alias()); n != MaxAlias {
		t.Errorf("the longest alias is %d bytes, want %d", n, MaxAlias)
	}
	// The kernel's limit is real: one byte more is refused.
	scratch := veth("vncscratch")
	if err := nl.LinkSetAlias(scratch, long.Alias()+"x"); !errors.Is(err, unix.ERANGE) && !errors.Is(err, unix.EINVAL) {
		t.Errorf("an alias of %d bytes: %v, want the kernel to refuse it", MaxAlias+1, err)
	}
	old := PodRecord{IP: netip.MustParseAddr("10.240.0.9"), MAC: PodMAC(netip.MustParseAddr("10.240.0.9"))}
	oldName := HostVethName("old", "eth0")
	if err := nl.LinkSetAlias(veth(oldName), "vnet-cni ip=10.240.0.9 mac=0a:58:0a:f0:00:09"); err != nil {
		t.Fatal(err)
	}
	veth(HostVethName("unfinished", "eth0")) // no alias yet
	// A bridge vnet-cni took over: owned, but no pod.
	br := &netlink.Bridge{LinkAttrs: netlink.NewLinkAttrs()}
	br.Name = "azure0"
	if err := nl.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetAlias(br, Alias("master", "eth0")); err != nil {
		t.Fatal(err)
	}
	// A veth of someone else with a vnet-cni-looking alias is no pod.
	other := veth("other0")
	if err := nl.LinkSetAlias(other, "vnet-cni ip=10.240.0.10 mac=0a:58:0a:f0:00:0a"); err != nil {
		t.Fatal(err)
	}

	w, err = ReadWitness(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(w.Pods, func(a, b WitnessPod) int { return strings.Compare(a.HostVeth, b.HostVeth) })
	want := []WitnessPod{{HostVeth: longName, Record: long}, {HostVeth: oldName, Record: old}}
	slices.SortFunc(want, func(a, b WitnessPod) int { return strings.Compare(a.HostVeth, b.HostVeth) })
	if diff := cmp.Diff(want, w.Pods, cmpRecord); diff != "" {
		t.Errorf("pods (-want +got):\n%s", diff)
	}
	if !w.Owned {
		t.Error("Owned is false with vnet-cni's bridge and pod veths in the namespace")
	}
	sc, err := nl.LinkByName("vncscratch")
	if err != nil {
		t.Fatal(err)
	}
	if mac := hex.EncodeToString(sc.Attrs().HardwareAddr); !slices.Contains(w.MACs, mac) {
		t.Errorf("MACs %v lack vncscratch's %s", w.MACs, mac)
	}
}
