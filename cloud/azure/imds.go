package azure

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// instanceDoc is the part of Azure IMDS's instance document that vnet-cni reads.
type instanceDoc struct {
	Compute struct {
		Location          string `json:"location"`
		Name              string `json:"name"`
		ResourceGroupName string `json:"resourceGroupName"`
		SubscriptionID    string `json:"subscriptionId"`
		VMID              string `json:"vmId"`
	} `json:"compute"`
	Network struct {
		Interface []struct {
			MACAddress string `json:"macAddress"`
			IPv4       struct {
				IPAddress []struct {
					PrivateIPAddress string `json:"privateIpAddress"`
				} `json:"ipAddress"`
				Subnet []struct {
					Address string `json:"address"`
					Prefix  string `json:"prefix"`
				} `json:"subnet"`
			} `json:"ipv4"`
		} `json:"interface"`
	} `json:"network"`
}

// instance is the validated node identity read from IMDS.
type instance struct {
	SubscriptionID string
	ResourceGroup  string
	Location       string
	VMName         string
	VMID           string
	// MAC is normalised to lower-case hex without separators.
	MAC       string
	PrimaryIP netip.Addr
	Subnet    netip.Prefix
}

const imdsAPIVersion = "2021-02-01"

// maxIMDSBody bounds what is read from IMDS.
const maxIMDSBody = 1 << 20

// readInstance fetches and validates the instance document.
func readInstance(ctx context.Context, client *http.Client, endpoint string) (instance, error) {
	url := strings.TrimSuffix(endpoint, "/") + "/metadata/instance?api-version=" + imdsAPIVersion
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return instance{}, fmt.Errorf("imds request: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := client.Do(req)
	if err != nil {
		return instance{}, fmt.Errorf("imds: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSBody))
	if err != nil {
		return instance{}, fmt.Errorf("imds: read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return instance{}, fmt.Errorf("imds answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return parseInstance(body)
}

// parseInstance decodes and validates an IMDS instance document.
func parseInstance(body []byte) (instance, error) {
	var doc instanceDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return instance{}, fmt.Errorf("imds: decode instance document: %w", err)
	}
	c := doc.Compute
	for field, v := range map[string]string{
		"compute.subscriptionId":    c.SubscriptionID,
		"compute.resourceGroupName": c.ResourceGroupName,
		"compute.name":              c.Name,
	} {
		if v == "" {
			return instance{}, fmt.Errorf("imds: instance document lacks %s", field)
		}
	}
	if len(doc.Network.Interface) == 0 {
		return instance{}, fmt.Errorf("imds: instance document lists no network interface")
	}
	nic := doc.Network.Interface[0]
	mac := normalizeMAC(nic.MACAddress)
	if len(mac) != 12 {
		return instance{}, fmt.Errorf("imds: bad macAddress %q", nic.MACAddress)
	}
	if len(nic.IPv4.IPAddress) == 0 {
		return instance{}, fmt.Errorf("imds: primary interface has no IPv4 address")
	}
	primary, err := netip.ParseAddr(nic.IPv4.IPAddress[0].PrivateIPAddress)
	if err != nil || !primary.Is4() {
		return instance{}, fmt.Errorf("imds: bad privateIpAddress %q", nic.IPv4.IPAddress[0].PrivateIPAddress)
	}
	if len(nic.IPv4.Subnet) == 0 {
		return instance{}, fmt.Errorf("imds: primary interface has no IPv4 subnet")
	}
	sn := nic.IPv4.Subnet[0]
	base, err := netip.ParseAddr(sn.Address)
	if err != nil || !base.Is4() {
		return instance{}, fmt.Errorf("imds: bad subnet address %q", sn.Address)
	}
	bits, err := strconv.Atoi(sn.Prefix)
	if err != nil || bits < 0 || bits > 30 {
		return instance{}, fmt.Errorf("imds: bad subnet prefix %q", sn.Prefix)
	}
	subnet := netip.PrefixFrom(base, bits).Masked()
	if !subnet.Contains(primary) {
		return instance{}, fmt.Errorf("imds: primary address %s is outside subnet %s", primary, subnet)
	}
	return instance{
		SubscriptionID: c.SubscriptionID,
		ResourceGroup:  c.ResourceGroupName,
		Location:       c.Location,
		VMName:         c.Name,
		VMID:           c.VMID,
		MAC:            mac,
		PrimaryIP:      primary,
		Subnet:         subnet,
	}, nil
}

// normalizeMAC turns "00-0D-3A-11-22-33", "00:0d:3a:11:22:33" and
// "000D3A112233" into "000d3a112233".
func normalizeMAC(s string) string {
	r := strings.NewReplacer("-", "", ":", "")
	return strings.ToLower(r.Replace(s))
}
