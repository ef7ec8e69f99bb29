package azure0

import (
	"context"
	"net/netip"
	"testing"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// TestSNATExclusionsLimitFits: as many SNAT exclusions as the plugin's and
// the daemon's configuration allow (api.MaxSNATExclusions) fit in the
// tables: each exclusion is two expressions of one rule, and the kernel
// refuses a rule of more than 128. A change of the rules that no longer
// holds the limit fails here, not on a node.
func TestSNATExclusionsLimitFits(t *testing.T) {
	f := newFabric(t, nil)
	n0 := openNode(t, f.NodeNSPath("node0"), t.TempDir())
	exclusions := func(k int) []netip.Prefix {
		out := make([]netip.Prefix, k)
		for i := range out {
			out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)
		}
		return out
	}
	ctx := context.Background()
	if _, err := n0.EnsureNode(ctx, NodeConfig{VNetPrefixes: []netip.Prefix{vnetPrefix}, SNATExclusions: exclusions(api.MaxSNATExclusions)}); err != nil {
		t.Fatalf("EnsureNode with %d exclusions (the limit): %v", api.MaxSNATExclusions, err)
	}
}
