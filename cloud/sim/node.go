package sim

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/vnet-cni/vnet-cni/cloud/sim/imds"
	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
)

// imdsHandler serves node n's metadata; the addresses follow the control plane.
func (s *Sim) imdsHandler(n nodeInfo) *imds.Handler {
	resourceID := fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s",
		SubscriptionID, ResourceGroup, n.name)
	ones := s.opts.Subnet.Bits()
	subnet := imds.Subnet{Address: s.opts.Subnet.Masked().Addr().String(), Prefix: strconv.Itoa(ones)}
	mac := strings.ToUpper(strings.ReplaceAll(n.mac.String(), ":", ""))
	instance := func() imds.Instance {
		addrs := []imds.IPAddress{{PrivateIPAddress: n.primary.String()}}
		for _, nic := range s.arm.Snapshot().NICs {
			if nic.Name != n.nic {
				continue
			}
			for _, ip := range nic.Secondary {
				addrs = append(addrs, imds.IPAddress{PrivateIPAddress: ip.String()})
			}
		}
		return imds.Instance{
			Compute: imds.Compute{
				AzEnvironment:     "AzurePublicCloud",
				Location:          s.opts.Location,
				Name:              n.name,
				OSType:            "Linux",
				ResourceGroupName: ResourceGroup,
				ResourceID:        resourceID,
				SubscriptionID:    SubscriptionID,
				VMID:              n.vmID,
				VMSize:            "Standard_D2s_v5",
			},
			Network: imds.Network{Interface: []imds.Interface{{
				MACAddress: mac,
				IPv4:       imds.IPFamily{IPAddress: addrs, Subnet: []imds.Subnet{subnet}},
				IPv6:       imds.IPFamily{IPAddress: []imds.IPAddress{}},
			}}},
		}
	}
	issue := s.arm.IssueToken
	if s.opts.ReadOnlyIdentity {
		issue = s.arm.IssueReadOnlyToken
	}
	return imds.NewHandler(instance, issue, "")
}

// listenIn opens a TCP listener inside the network namespace at nsPath. A
// socket stays in the namespace it was created in, so the listener can be
// served from any goroutine.
func listenIn(nsPath, addr string) (net.Listener, error) {
	netns, err := ns.GetNS(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer netns.Close()
	var ln net.Listener
	// Do runs the function on an OS thread locked into the namespace.
	err = netns.Do(func(ns.NetNS) error {
		var lerr error
		ln, lerr = net.Listen("tcp", addr)
		return lerr
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, nsPath, err)
	}
	return ln, nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}
