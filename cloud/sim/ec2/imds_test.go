package ec2

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func (e *env) metadata(t *testing.T, path string) string {
	t.Helper()
	out, err := e.imds.GetMetadata(ctxT(t), &imds.GetMetadataInput{Path: path})
	if err != nil {
		t.Fatalf("GetMetadata %s: %v", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	noErr(t, err)
	return string(b)
}

// TestIMDS reads node0's metadata with the SDK's IMDSv2 client, sees an
// attached ENI appear with its addresses, and checks that IMDSv1 is refused.
func TestIMDS(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MetadataDelay = 300 * time.Millisecond })
	ctx := ctxT(t)
	for path, want := range map[string]string{
		"instance-id": node0, "instance-type": "m5.large", "mac": "0e:00:00:00:00:0a",
		"local-ipv4": "10.0.0.10", "placement/region": "us-east-1",
		"network/interfaces/macs/0e:00:00:00:00:0a/device-number":          "0",
		"network/interfaces/macs/0e:00:00:00:00:0a/subnet-id":              mainSubnet,
		"network/interfaces/macs/0e:00:00:00:00:0a/subnet-ipv4-cidr-block": "10.0.0.0/24",
		"network/interfaces/macs/0e:00:00:00:00:0a/vpc-ipv4-cidr-blocks":   "10.0.0.0/16",
		"network/interfaces/macs/0e:00:00:00:00:0a/local-ipv4s":            "10.0.0.10",
		"iam/security-credentials/":                                        DefaultRole,
	} {
		if got := e.metadata(t, path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	region, err := e.imds.GetRegion(ctx, &imds.GetRegionInput{})
	noErr(t, err)
	doc, err := e.imds.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	noErr(t, err)
	if region.Region != "us-east-1" || doc.InstanceID != node0 || doc.InstanceType != "m5.large" {
		t.Fatalf("region %q, identity %+v", region.Region, doc)
	}

	// An attached ENI appears under its MAC only once attached.
	out, err := e.ec2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)})
	noErr(t, err)
	id, mac := aws.ToString(out.NetworkInterface.NetworkInterfaceId), aws.ToString(out.NetworkInterface.MacAddress)
	attach(t, e, id, node0, 1)
	if macs := e.metadata(t, "network/interfaces/macs/"); strings.Contains(macs, mac) {
		t.Fatalf("attaching ENI already listed: %q", macs)
	}
	waitFor(t, "ENI in IMDS", func() bool { return strings.Contains(e.metadata(t, "network/interfaces/macs/"), mac) })
	base := "network/interfaces/macs/" + mac + "/"
	if got := e.metadata(t, base+"interface-id"); got != id {
		t.Fatalf("interface-id %q, want %s", got, id)
	}
	if got := e.metadata(t, base+"device-number"); got != "1" {
		t.Fatalf("device-number %q", got)
	}
	// A new address shows in local-ipv4s after the metadata delay.
	_, err = e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"10.0.0.50"}})
	noErr(t, err)
	if got := e.metadata(t, base+"local-ipv4s"); got != "10.0.0.4" {
		t.Fatalf("local-ipv4s right after assign = %q, want only the primary", got)
	}
	waitFor(t, "address in local-ipv4s", func() bool {
		return slices.Equal(strings.Split(e.metadata(t, base+"local-ipv4s"), "\n"), []string{"10.0.0.4", "10.0.0.50"})
	})

	// IMDSv1: a GET without a token is refused.
	resp, err := http.Get(e.imdsURL + "/latest/meta-data/instance-id")
	noErr(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("IMDSv1 GET: %d, want 401", resp.StatusCode)
	}
	req, err := http.NewRequest(http.MethodGet, e.imdsURL+"/latest/meta-data/instance-id", nil)
	noErr(t, err)
	req.Header.Set("X-aws-ec2-metadata-token", "forged")
	resp, err = http.DefaultClient.Do(req)
	noErr(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged token: %d, want 401", resp.StatusCode)
	}
}
