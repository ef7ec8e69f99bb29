package aws

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// identity is the node as its IMDS describes it: the instance and its
// primary ENI (device 0).
type identity struct {
	InstanceID, InstanceType string
	Region, AvailabilityZone string
	ENIID, SubnetID, VPCID   string
	// MAC is the primary ENI's, lower-case hex without separators.
	MAC       string
	PrimaryIP netip.Addr
	Subnet    netip.Prefix
	VPCCIDRs  []netip.Prefix
}

// metadata holds the IMDS values parseIdentity reads: the paths of
// instancePaths, and interfacePaths of the primary MAC under "eni/".
type metadata map[string]string

// The metadata paths read at discovery, below latest/meta-data/.
var (
	instancePaths  = []string{"instance-id", "instance-type", "placement/region", "placement/availability-zone", "mac", "local-ipv4"}
	interfacePaths = []string{"device-number", "interface-id", "subnet-id", "subnet-ipv4-cidr-block", "vpc-id", "vpc-ipv4-cidr-blocks"}
)

// badMetadataError is IMDS answering values that make no sense, as opposed
// to IMDS not answering.
type badMetadataError struct{ err error }

func (e *badMetadataError) Error() string { return e.err.Error() }
func (e *badMetadataError) Unwrap() error { return e.err }

// maxMetadata bounds one IMDS value.
const maxMetadata = 64 << 10

// readIdentity reads the node's identity from IMDSv2 (the client asks for
// a session token first and never falls back to IMDSv1). An unreachable
// or failing IMDS is a fetch error; bad values are a parse error.
func readIdentity(ctx context.Context, client *imds.Client) (identity, error) {
	md := metadata{}
	get := func(key, path string) error {
		out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return fmt.Errorf("imds: get %s: %w", path, err)
		}
		defer out.Content.Close()
		b, err := io.ReadAll(io.LimitReader(out.Content, maxMetadata))
		if err != nil {
			return fmt.Errorf("imds: read %s: %w", path, err)
		}
		md[key] = strings.TrimSpace(string(b))
		return nil
	}
	for _, p := range instancePaths {
		if err := get(p, p); err != nil {
			return identity{}, err
		}
	}
	// The MAC goes into a path: check it first.
	hw, err := net.ParseMAC(md["mac"])
	if err != nil || len(hw) != 6 {
		return identity{}, &badMetadataError{fmt.Errorf("imds: bad mac %q", md["mac"])}
	}
	for _, p := range interfacePaths {
		if err := get("eni/"+p, "network/interfaces/macs/"+hw.String()+"/"+p); err != nil {
			return identity{}, err
		}
	}
	id, err := parseIdentity(md)
	if err != nil {
		return identity{}, &badMetadataError{err}
	}
	return id, nil
}

var (
	// idRE matches an EC2 resource id of a prefix: real ones are hex, the
	// simulator's may hold other lower-case letters.
	idRE           = regexp.MustCompile(`^(i|eni|subnet|vpc)-[0-9a-z]{1,32}$`)
	instanceTypeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,63}$`)
	regionRE       = regexp.MustCompile(`^[a-z]{2}(-[a-z0-9]+){2,4}$`)
)

// validID reports whether id is an EC2 id with the prefix (e.g. "eni").
func validID(prefix, id string) bool {
	return strings.HasPrefix(id, prefix+"-") && idRE.MatchString(id)
}

// parseIdentity validates the metadata of the instance and its primary ENI.
func parseIdentity(md metadata) (identity, error) {
	id := identity{
		InstanceID: md["instance-id"], InstanceType: md["instance-type"],
		Region: md["placement/region"], AvailabilityZone: md["placement/availability-zone"],
		ENIID: md["eni/interface-id"], SubnetID: md["eni/subnet-id"], VPCID: md["eni/vpc-id"],
	}
	switch {
	case !validID("i", id.InstanceID):
		return identity{}, fmt.Errorf("imds: bad instance-id %q", id.InstanceID)
	case !instanceTypeRE.MatchString(id.InstanceType):
		return identity{}, fmt.Errorf("imds: bad instance-type %q", id.InstanceType)
	case !regionRE.MatchString(id.Region):
		return identity{}, fmt.Errorf("imds: bad placement/region %q", id.Region)
	case len(id.AvailabilityZone) <= len(id.Region) || !strings.HasPrefix(id.AvailabilityZone, id.Region) || len(id.AvailabilityZone) > 64:
		return identity{}, fmt.Errorf("imds: availability zone %q is not in region %s", id.AvailabilityZone, id.Region)
	case !validID("eni", id.ENIID):
		return identity{}, fmt.Errorf("imds: bad interface-id %q", id.ENIID)
	case !validID("subnet", id.SubnetID):
		return identity{}, fmt.Errorf("imds: bad subnet-id %q", id.SubnetID)
	case !validID("vpc", id.VPCID):
		return identity{}, fmt.Errorf("imds: bad vpc-id %q", id.VPCID)
	}
	mac, ok := normalizeMAC(md["mac"])
	if !ok {
		return identity{}, fmt.Errorf("imds: bad mac %q", md["mac"])
	}
	id.MAC = mac
	if dev, err := strconv.Atoi(md["eni/device-number"]); err != nil || dev != 0 {
		return identity{}, fmt.Errorf("imds: the primary mac's device-number is %q, want 0", md["eni/device-number"])
	}
	ip, err := netip.ParseAddr(md["local-ipv4"])
	if err != nil || !ip.Is4() {
		return identity{}, fmt.Errorf("imds: bad local-ipv4 %q", md["local-ipv4"])
	}
	id.PrimaryIP = ip
	sn, err := parseIPv4Prefix(md["eni/subnet-ipv4-cidr-block"])
	if err != nil || sn.Bits() > 28 {
		return identity{}, fmt.Errorf("imds: bad subnet-ipv4-cidr-block %q", md["eni/subnet-ipv4-cidr-block"])
	}
	if !sn.Contains(ip) {
		return identity{}, fmt.Errorf("imds: local-ipv4 %s is outside subnet %s", ip, sn)
	}
	id.Subnet = sn
	inVPC := false
	for _, line := range strings.Split(md["eni/vpc-ipv4-cidr-blocks"], "\n") {
		p, err := parseIPv4Prefix(strings.TrimSpace(line))
		if err != nil {
			return identity{}, fmt.Errorf("imds: bad vpc-ipv4-cidr-blocks entry %q", line)
		}
		id.VPCCIDRs = append(id.VPCCIDRs, p)
		inVPC = inVPC || (p.Bits() <= sn.Bits() && p.Contains(sn.Addr()))
	}
	if !inVPC {
		return identity{}, fmt.Errorf("imds: subnet %s is outside the vpc's cidr blocks %v", sn, id.VPCCIDRs)
	}
	return id, nil
}

// parseIPv4Prefix parses a canonical IPv4 prefix ("10.0.0.0/16").
func parseIPv4Prefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !p.Addr().Is4() || p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s is not a canonical IPv4 prefix", s)
	}
	return p, nil
}

// normalizeMAC turns "0e:00:00:00:00:0A" (EC2's form) into "0e000000000a".
func normalizeMAC(s string) (string, bool) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", false
	}
	return hex.EncodeToString(hw), true
}
