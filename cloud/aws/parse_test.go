package aws

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/cloud"
)

func goodMetadata() metadata {
	return metadata{
		"instance-id": "i-0123456789abcdef0", "instance-type": "m5.large",
		"placement/region": "eu-west-1", "placement/availability-zone": "eu-west-1b",
		"mac": "0E:12:34:56:78:9A", "local-ipv4": "10.0.3.7",
		"eni/device-number": "0", "eni/interface-id": "eni-0abc", "eni/subnet-id": "subnet-0def",
		"eni/subnet-ipv4-cidr-block": "10.0.3.0/24", "eni/vpc-id": "vpc-01",
		"eni/vpc-ipv4-cidr-blocks": "10.0.0.0/16\n100.64.0.0/16",
	}
}

func TestParseIdentity(t *testing.T) {
	got, err := parseIdentity(goodMetadata())
	if err != nil {
		t.Fatal(err)
	}
	want := identity{
		InstanceID: "i-0123456789abcdef0", InstanceType: "m5.large", Region: "eu-west-1", AvailabilityZone: "eu-west-1b",
		ENIID: "eni-0abc", SubnetID: "subnet-0def", VPCID: "vpc-01", MAC: "0e123456789a",
		PrimaryIP: netip.MustParseAddr("10.0.3.7"), Subnet: netip.MustParsePrefix("10.0.3.0/24"),
		VPCCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("100.64.0.0/16")},
	}
	if d := cmp.Diff(want, got, addrCmp, prefixCmp); d != "" {
		t.Errorf("identity (-want +got):\n%s", d)
	}
}

func TestParseIdentityRejects(t *testing.T) {
	for _, tc := range []struct {
		key, value, wantErr string
	}{
		{"instance-id", "", "instance-id"},
		{"instance-id", "vm-1", "instance-id"},
		{"instance-id", "i-0/../x", "instance-id"},
		{"instance-type", "", "instance-type"},
		{"placement/region", "EU", "region"},
		{"placement/availability-zone", "us-east-1a", "not in region"},
		{"placement/availability-zone", "eu-west-1", "not in region"},
		{"mac", "0e:12", "mac"},
		{"local-ipv4", "fd00::1", "local-ipv4"},
		{"local-ipv4", "10.0.4.1", "outside subnet"},
		{"eni/device-number", "1", "device-number"},
		{"eni/interface-id", "nic-1", "interface-id"},
		{"eni/subnet-id", "", "subnet-id"},
		{"eni/vpc-id", "vpc_1", "vpc-id"},
		{"eni/subnet-ipv4-cidr-block", "10.0.3.1/24", "subnet-ipv4-cidr-block"},
		{"eni/subnet-ipv4-cidr-block", "10.0.3.0/30", "subnet-ipv4-cidr-block"},
		{"eni/vpc-ipv4-cidr-blocks", "", "vpc-ipv4-cidr-blocks"},
		{"eni/vpc-ipv4-cidr-blocks", "10.0.0.0/16\nbogus", "vpc-ipv4-cidr-blocks"},
		{"eni/vpc-ipv4-cidr-blocks", "172.16.0.0/16", "outside the vpc"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			md := goodMetadata()
			md[tc.key] = tc.value
			_, err := parseIdentity(md)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "imds: ") {
				t.Errorf("error %v, want an imds error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzParseIdentity: no panic; an accepted identity is complete and
// consistent.
func FuzzParseIdentity(f *testing.F) {
	g := goodMetadata()
	f.Add(g["instance-id"], g["placement/region"], g["placement/availability-zone"], g["mac"], g["local-ipv4"], g["eni/device-number"], g["eni/interface-id"], g["eni/subnet-ipv4-cidr-block"], g["eni/vpc-ipv4-cidr-blocks"])
	f.Add("i-1", "us-east-1", "us-east-1a", "0e-00-00-00-00-0a", "10.0.0.10", "0", "eni-1", "10.0.0.0/24", "10.0.0.0/24")
	f.Add("i-", "us-east-1", "us-east-1", "", "", "00", "eni-", "0.0.0.0/0", "\n")
	f.Add("i-1", "a-b-1", "a-b-1z", "01:02:03:04:05:06:07:08", "1.2.3.4", "-0", "eni-x", "1.2.3.0/28", "1.0.0.0/8\n\n")
	f.Fuzz(func(t *testing.T, instanceID, region, zone, mac, ip, device, eniID, subnet, vpc string) {
		md := goodMetadata()
		for k, v := range map[string]string{
			"instance-id": instanceID, "placement/region": region, "placement/availability-zone": zone, "mac": mac,
			"local-ipv4": ip, "eni/device-number": device, "eni/interface-id": eniID,
			"eni/subnet-ipv4-cidr-block": subnet, "eni/vpc-ipv4-cidr-blocks": vpc,
		} {
			md[k] = v
		}
		id, err := parseIdentity(md)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "imds: ") {
				t.Fatalf("error does not say where it comes from: %v", err)
			}
			return
		}
		switch {
		case !validID("i", id.InstanceID) || !validID("eni", id.ENIID) || strings.ContainsAny(id.InstanceID+id.ENIID, "/. \n"):
			t.Fatalf("accepted ids %q %q", id.InstanceID, id.ENIID)
		case len(id.MAC) != 12 || strings.ToLower(id.MAC) != id.MAC:
			t.Fatalf("accepted mac %q", id.MAC)
		case !id.PrimaryIP.Is4() || !id.Subnet.Contains(id.PrimaryIP) || id.Subnet != id.Subnet.Masked() || id.Subnet.Bits() > 28:
			t.Fatalf("accepted %s in subnet %s", id.PrimaryIP, id.Subnet)
		case len(id.VPCCIDRs) == 0 || !strings.HasPrefix(id.AvailabilityZone, id.Region):
			t.Fatalf("accepted vpc %v zone %q region %q", id.VPCCIDRs, id.AvailabilityZone, id.Region)
		}
	})
}

func TestToInterface(t *testing.T) {
	sn := netip.MustParsePrefix("10.0.3.0/24")
	eni := func(mut func(*types.NetworkInterface)) types.NetworkInterface {
		e := types.NetworkInterface{
			NetworkInterfaceId: awssdk.String("eni-1"), MacAddress: awssdk.String("0e:00:00:00:00:01"),
			SubnetId: awssdk.String("subnet-1"), SourceDestCheck: awssdk.Bool(true), PrivateIpAddress: awssdk.String("10.0.3.4"),
			Attachment: &types.NetworkInterfaceAttachment{DeviceIndex: awssdk.Int32(2), InstanceId: awssdk.String("i-1")},
			PrivateIpAddresses: []types.NetworkInterfacePrivateIpAddress{
				{PrivateIpAddress: awssdk.String("10.0.3.9")},
				{PrivateIpAddress: awssdk.String("10.0.3.4"), Primary: awssdk.Bool(true)},
				{PrivateIpAddress: awssdk.String("10.0.3.5")},
			},
		}
		if mut != nil {
			mut(&e)
		}
		return e
	}
	base := cloud.Interface{
		ID: "eni-1", MAC: "0e0000000001", DeviceIndex: 2, PrimaryIP: netip.MustParseAddr("10.0.3.4"),
		Subnet: sn, SubnetID: "subnet-1", Gateway: netip.MustParseAddr("10.0.3.1"),
		Secondary: []netip.Addr{netip.MustParseAddr("10.0.3.5"), netip.MustParseAddr("10.0.3.9")},
	}
	for _, tc := range []struct {
		name    string
		mut     func(*types.NetworkInterface)
		want    func(*cloud.Interface)
		wantErr string
	}{
		{name: "secondary ENI, sorted"},
		{name: "primary", mut: func(e *types.NetworkInterface) { e.Attachment.DeviceIndex = awssdk.Int32(0) },
			want: func(i *cloud.Interface) { i.DeviceIndex, i.Primary = 0, true }},
		{name: "check off is forwarding", mut: func(e *types.NetworkInterface) { e.SourceDestCheck = awssdk.Bool(false) },
			want: func(i *cloud.Interface) { i.IPForwarding = true }},
		{name: "no check reported is no forwarding", mut: func(e *types.NetworkInterface) { e.SourceDestCheck = nil }},
		{name: "primary flag missing", mut: func(e *types.NetworkInterface) { e.PrivateIpAddresses[1].Primary = nil }},
		{name: "bad mac", mut: func(e *types.NetworkInterface) { e.MacAddress = awssdk.String("zz") }, wantErr: "bad mac"},
		{name: "not attached", mut: func(e *types.NetworkInterface) { e.Attachment = nil }, wantErr: "not attached"},
		{name: "bad address", mut: func(e *types.NetworkInterface) { e.PrivateIpAddresses[0].PrivateIpAddress = awssdk.String("x") }, wantErr: "bad address"},
		{name: "no primary", mut: func(e *types.NetworkInterface) {
			e.PrivateIpAddresses[1].Primary = nil
			e.PrivateIpAddress = nil
		}, wantErr: "no primary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := toInterface(eni(tc.mut), sn)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := base
			want.Secondary = append([]netip.Addr(nil), base.Secondary...)
			if tc.want != nil {
				tc.want(&want)
			}
			if d := cmp.Diff(want, got, addrCmp, prefixCmp); d != "" {
				t.Errorf("interface (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseLimits(t *testing.T) {
	info := func(name string, enis, ips int32) types.InstanceTypeInfo {
		return types.InstanceTypeInfo{InstanceType: types.InstanceType(name), NetworkInfo: &types.NetworkInfo{
			MaximumNetworkInterfaces: awssdk.Int32(enis), Ipv4AddressesPerInterface: awssdk.Int32(ips)}}
	}
	got, err := parseLimits("m5.large", []types.InstanceTypeInfo{info("t3.small", 3, 4), info("m5.large", 3, 10)})
	if err != nil || got != (cloud.Limits{Interfaces: 3, AddressesPerInterface: 10}) {
		t.Errorf("limits %+v, %v", got, err)
	}
	for _, infos := range [][]types.InstanceTypeInfo{nil, {info("m5.large", 0, 10)}, {{InstanceType: "m5.large"}}} {
		if _, err := parseLimits("m5.large", infos); err == nil {
			t.Errorf("parseLimits(%v) succeeded", infos)
		}
	}
}

// apiError builds an error as the SDK returns an EC2 error answer, after
// its retries.
func apiError(status int, code, msg string) error {
	return &smithy.OperationError{ServiceID: "EC2", OperationName: "X", Err: fmt.Errorf("exceeded maximum number of attempts, 3, %w",
		&awshttp.ResponseError{RequestID: "r", ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      &smithy.GenericAPIError{Code: code, Message: msg},
		}})}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   cloud.Kind
	}{
		{503, "RequestLimitExceeded", cloud.Throttled},
		{400, "PrivateIpAddressLimitExceeded", cloud.NICLimit},
		{400, "InsufficientFreeAddressesInSubnet", cloud.SubnetFull},
		{400, "InvalidIPAddress.InUse", cloud.AddressInUse},
		{400, "AttachmentLimitExceeded", cloud.InterfaceLimit},
		{401, "AuthFailure", cloud.Fatal},
		{403, "UnauthorizedOperation", cloud.Denied},
		{400, "InvalidParameterValue", cloud.Fatal},
		{400, "InvalidParameterCombination", cloud.Fatal},
		{400, "MissingParameter", cloud.Fatal},
		{400, "RequestExpired", cloud.Fatal},
		{400, "InvalidNetworkInterfaceID.NotFound", cloud.Conflict},
		{400, "InvalidNetworkInterface.InUse", cloud.Conflict},
		{400, "SomethingNew", cloud.Fatal},
		{500, "InternalError", cloud.Transient},
		{503, "Unavailable", cloud.Transient},
	} {
		t.Run(tc.code, func(t *testing.T) {
			ce := classify("AssignPrivateIpAddresses", apiError(tc.status, tc.code, "multi\nline  message"))
			if ce.Kind != tc.want || ce.Code != tc.code || ce.Op != "AssignPrivateIpAddresses" || ce.Message != "multi line message" {
				t.Errorf("classified as %+v, want kind %s with code and one-line message", ce, tc.want)
			}
			if !strings.Contains(ce.Error(), tc.code) {
				t.Errorf("error %q does not name the code", ce.Error())
			}
		})
	}
	for _, err := range []error{errors.New("dial tcp: connection refused"), fmt.Errorf("x: %w", errors.New("tls: bad certificate"))} {
		if ce := classify("DescribeInstances", err); ce.Kind != cloud.Transient || ce.Code != "" {
			t.Errorf("network error classified as %+v, want transient", ce)
		}
	}
	inner := &cloud.Error{Kind: cloud.Conflict, Op: "DescribeNetworkInterfaces"}
	if ce := classify("Y", fmt.Errorf("w: %w", inner)); ce != inner {
		t.Errorf("a classified error was classified again: %+v", ce)
	}
}

// FuzzClassify: whatever EC2 answers, a known kind and a bounded one-line
// message of valid UTF-8.
func FuzzClassify(f *testing.F) {
	f.Add(503, "RequestLimitExceeded", "Request limit exceeded.")
	f.Add(400, "InvalidParameterValue", "bad\r\nvalue")
	f.Add(400, "", "")
	f.Add(0, "InternalError", strings.Repeat("é", 700))
	f.Add(999, "\xff", "\xfe\xff")
	f.Fuzz(func(t *testing.T, status int, code, msg string) {
		ce := classify("Op", apiError(status, code, msg))
		if ce.Kind < cloud.Fatal || ce.Kind > cloud.InterfaceLimit {
			t.Fatalf("unknown kind %d", ce.Kind)
		}
		if len(ce.Message) > cloud.MaxMessage || strings.ContainsAny(ce.Message, "\n\r") || !utf8.ValidString(ce.Message) {
			t.Fatalf("message %q", ce.Message)
		}
		if code == codeRequestLimitExceeded && ce.Kind != cloud.Throttled {
			t.Fatalf("RequestLimitExceeded classified %s", ce.Kind)
		}
	})
}

func TestThrottleHint(t *testing.T) {
	for _, r := range []float64{0, 0.999999} {
		h := throttleHint{rand: func() float64 { return r }}
		var got []time.Duration
		for range 8 {
			got = append(got, h.throttled())
		}
		for i, d := range got {
			hi := min(baseThrottleHint<<i, maxThrottleHint)
			if d < hi/2 || d > hi {
				t.Errorf("rand %v: hint %d = %s, want in [%s, %s]", r, i, d, hi/2, hi)
			}
		}
		h.succeeded()
		if d := h.throttled(); d > baseThrottleHint {
			t.Errorf("after a success the hint is %s, want at most %s", d, baseThrottleHint)
		}
	}
}
