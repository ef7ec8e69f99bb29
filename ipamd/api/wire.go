package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Version is the protocol version this package speaks, "major.minor".
// 1.1 added the interface of assignments, address records and the status;
// 1.2 the stamps of allocate, release and gc requests, and the addresses the
// cloud lost (status, address records); 1.3 the device index and MAC of an
// assignment's interface, with that interface's subnet and gateway.
const Version = "1.3"

const (
	versionMajor = 1
	versionMinor = 3
)

// Operation names on the wire.
const (
	OpAllocate = "allocate"
	OpRelease  = "release"
	OpCheck    = "check"
	OpGC       = "gc"
	OpStatus   = "status"
	OpList     = "list"
)

// Limits on identifiers, checked by Validate.
const (
	maxContainerIDLen = 1024
	maxIfNameLen      = 15 // IFNAMSIZ - 1
	maxNameLen        = 253
	maxNetnsLen       = 4096
)

// Request is the envelope of every request, as the server decodes it: Body
// is decoded once Op is known.
type Request struct {
	Version   string          `json:"version"`
	Op        string          `json:"op"`
	TimeoutMS int64           `json:"timeoutMs,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"`
}

// outRequest is the envelope of a request as the client encodes it.
type outRequest struct {
	Version   string `json:"version"`
	Op        string `json:"op"`
	TimeoutMS int64  `json:"timeoutMs,omitempty"`
	Body      any    `json:"body"`
}

// Response is the envelope of every response: Error or Body. The server
// sets Body to the response value; the client sets it to a pointer to the
// response type before decoding, so that the body is decoded in the same pass.
type Response struct {
	Version string `json:"version"`
	Error   *Error `json:"error,omitempty"`
	Body    any    `json:"body,omitempty"`
}

// Attachment identifies one network attachment of a container, the key of
// every record: CNI_CONTAINERID and CNI_IFNAME.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AllocateRequest asks for the address of an attachment. Allocate is
// idempotent: the same attachment gets the same address again.
type AllocateRequest struct {
	ContainerID  string `json:"containerID"`
	IfName       string `json:"ifName"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	Netns        string `json:"netns,omitempty"`
	// At is when the plugin made the call (NewStamp). The daemon records
	// it with the assignment, so that a release made before it cannot free
	// the assignment; without it (a 1.1 client) the daemon stamps the call
	// when it serves it.
	At Stamp `json:"at,omitzero"`
}

// Assignment is an address held by an attachment, with what the plugin needs
// to configure the pod: the pod gets IP/Subnet.Bits() and a default route via
// Gateway.
type Assignment struct {
	ContainerID  string     `json:"containerID"`
	IfName       string     `json:"ifName"`
	PodNamespace string     `json:"podNamespace,omitempty"`
	PodName      string     `json:"podName,omitempty"`
	IP           netip.Addr `json:"ip"`
	// Interface is the cloud's ID of the node interface that holds IP (an
	// Azure NIC's resource ID, an ENI ID); empty from a 1.0 daemon.
	Interface string `json:"interface,omitempty"`
	// InterfaceMAC (lower-case hex without separators, as the cloud
	// reports it) and DeviceIndex (0: the primary) find that interface in
	// the node, for routed mode's policy routing; empty and 0 from a daemon
	// before 1.3, whose addresses are all on the primary.
	InterfaceMAC string `json:"interfaceMAC,omitempty"`
	DeviceIndex  int    `json:"deviceIndex,omitempty"`
	// Subnet and Gateway are those of the interface that holds IP.
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	MTU     int          `json:"mtu"`
	// VNetCIDRs and PrimaryIP describe the node's network, so that the
	// plugin needs one round trip for ADD (SNAT exclusions, bridge set-up).
	VNetCIDRs []netip.Prefix `json:"vnetCIDRs,omitempty"`
	PrimaryIP netip.Addr     `json:"primaryIP,omitzero"`
}

// AllocateResponse carries the attachment's assignment.
type AllocateResponse struct {
	Assignment Assignment `json:"assignment"`
}

// ReleaseRequest releases the address of an attachment. Release is
// idempotent: releasing an unknown attachment succeeds with Known false.
type ReleaseRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// At is when the plugin made the call (NewStamp): a release made
	// before the attachment's latest Allocate is superseded and frees
	// nothing. Without it the daemon stamps the call when it serves it.
	At Stamp `json:"at,omitzero"`
}

// ReleaseResponse tells whether the attachment was known, and its address.
// A superseded release (made before the attachment's latest Allocate) frees
// nothing and answers Known false with Superseded true.
type ReleaseResponse struct {
	Known      bool       `json:"known"`
	IP         netip.Addr `json:"ip,omitzero"`
	Superseded bool       `json:"superseded,omitempty"`
}

// CheckRequest asks for the current assignment of an attachment.
type CheckRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// CheckResponse holds the assignment, nil when the attachment is unknown.
type CheckResponse struct {
	Assignment *Assignment `json:"assignment,omitempty"`
}

// GCRequest lists every attachment that is still valid; the daemon releases
// all others. Valid must not be nil: an empty, non-nil list releases
// everything, a missing list is refused.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
	// At is when the plugin made the call: assignments allocated after it
	// (by an ADD the runtime's list could not know of) are kept.
	At Stamp `json:"at,omitzero"`
}

// GCResponse lists the assignments that the collection released.
type GCResponse struct {
	Released []Assignment `json:"released,omitempty"`
}

// StatusRequest asks for the daemon's status. It has no fields yet.
type StatusRequest struct{}

// PoolCounts counts the node's addresses by state.
type PoolCounts struct {
	Free      int `json:"free"`
	Assigned  int `json:"assigned"`
	Cooling   int `json:"cooling"`
	Releasing int `json:"releasing"`
	// Quarantined addresses are kept out of the pool for a while after the
	// daemon's store was damaged or lost.
	Quarantined int `json:"quarantined,omitempty"`
	Total       int `json:"total"`
	Max         int `json:"max"`
	// MaxFrom says what set the pool's targets, maxIPs among them:
	// "config" (the configuration file), "node" (maxIPs is the Kubernetes
	// node's allocatable pods), "vnetnode" (an override of the node's
	// VNetNode object) or "default" (maxIPs should come from the node,
	// which is not known yet). Empty from daemons before protocol 1.2.
	MaxFrom string `json:"maxFrom,omitempty"`
}

// StatusResponse tells whether Allocate can currently succeed, and describes
// the node's network.
type StatusResponse struct {
	Ready     bool           `json:"ready"`
	Reason    string         `json:"reason,omitempty"` // why not ready
	NodeName  string         `json:"nodeName"`
	Pool      PoolCounts     `json:"pool"`
	VNetCIDRs []netip.Prefix `json:"vnetCIDRs"`
	Subnet    netip.Prefix   `json:"subnet"`
	Gateway   netip.Addr     `json:"gateway"`
	PrimaryIP netip.Addr     `json:"primaryIP"`
	// Interface is the cloud's ID of the interface the pool fills.
	Interface string `json:"interface,omitempty"`
	MTU       int    `json:"mtu"`
	// LimitReached reports that the pool wants more addresses than the NIC,
	// maxIPs or the subnet allow.
	LimitReached bool `json:"limitReached,omitempty"`
	// LastCloudError is the last cloud error the pool hit, empty after a
	// successful cloud call.
	LastCloudError string `json:"lastCloudError,omitempty"`
	// Lost lists the addresses the daemon assigned that are gone from their
	// interface in the cloud (deleted outside vnet-ipamd): they stay with
	// their owner and out of the pool while the daemon puts them back.
	Lost []LostAddress `json:"lost,omitempty"`
}

// LostAddress is an assigned or cooling address that the cloud no longer
// shows on the node's interface.
type LostAddress struct {
	IP           netip.Addr `json:"ip"`
	Interface    string     `json:"interface,omitempty"`
	State        string     `json:"state"`
	ContainerID  string     `json:"containerID"`
	IfName       string     `json:"ifName"`
	PodNamespace string     `json:"podNamespace,omitempty"`
	PodName      string     `json:"podName,omitempty"`
	// Since is when the daemon found it missing.
	Since time.Time `json:"since"`
	// RestoreError is why the last attempt to put it back failed (another
	// interface holds it, the cloud refused); empty before the first
	// attempt ended.
	RestoreError string `json:"restoreError,omitempty"`
}

// ListRequest asks for every address the daemon holds.
type ListRequest struct{}

// AddressRecord is one address of the pool and, when it is assigned or
// cooling, its owner.
type AddressRecord struct {
	IP netip.Addr `json:"ip"`
	// Interface is the cloud's ID of the interface that holds IP.
	Interface    string `json:"interface,omitempty"`
	State        string `json:"state"`
	ContainerID  string `json:"containerID,omitempty"`
	IfName       string `json:"ifName,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	// Since is when the address entered its state.
	Since time.Time `json:"since"`
	// LostSince is when the daemon found the address gone from its
	// interface in the cloud; zero while the cloud has it (see LostAddress).
	LostSince time.Time `json:"lostSince,omitzero"`
}

// ListResponse lists the addresses, sorted by IP.
type ListResponse struct {
	Addresses []AddressRecord `json:"addresses"`
}

// Validate applies the limits that the server checks before a handler sees
// the request: the CNI rules for the attachment and bounded names.
func (r AllocateRequest) Validate() error {
	if err := validateAttachment(r.ContainerID, r.IfName); err != nil {
		return err
	}
	switch {
	case len(r.PodNamespace) > maxNameLen:
		return fmt.Errorf("pod namespace longer than %d bytes", maxNameLen)
	case len(r.PodName) > maxNameLen:
		return fmt.Errorf("pod name longer than %d bytes", maxNameLen)
	case len(r.Netns) > maxNetnsLen:
		return fmt.Errorf("netns longer than %d bytes", maxNetnsLen)
	}
	return nil
}

// Validate checks the attachment.
func (r ReleaseRequest) Validate() error { return validateAttachment(r.ContainerID, r.IfName) }

// Validate checks the attachment.
func (r CheckRequest) Validate() error { return validateAttachment(r.ContainerID, r.IfName) }

// Validate accepts every status request.
func (StatusRequest) Validate() error { return nil }

// Validate accepts every list request.
func (ListRequest) Validate() error { return nil }

// Validate refuses a missing list and checks every attachment in it.
func (r GCRequest) Validate() error {
	if r.Valid == nil {
		return errors.New("gc request without a list of valid attachments (send an empty list to release everything)")
	}
	for i, a := range r.Valid {
		if err := validateAttachment(a.ContainerID, a.IfName); err != nil {
			return fmt.Errorf("valid attachment %d: %w", i, err)
		}
	}
	return nil
}

// validateAttachment applies the CNI rules: a container ID of letters, digits,
// '_', '.' and '-'; an interface name of at most 15 bytes without '/', ':' or
// white space, and neither "." nor "..".
func validateAttachment(containerID, ifName string) error {
	if containerID == "" {
		return errors.New("empty container id")
	}
	if len(containerID) > maxContainerIDLen {
		return fmt.Errorf("container id longer than %d bytes", maxContainerIDLen)
	}
	for _, c := range []byte(containerID) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return fmt.Errorf("container id %q: invalid character %q", containerID, c)
		}
	}
	if ifName == "" {
		return errors.New("empty interface name")
	}
	if len(ifName) > maxIfNameLen {
		return fmt.Errorf("interface name %q longer than %d bytes", ifName, maxIfNameLen)
	}
	if ifName == "." || ifName == ".." {
		return fmt.Errorf("invalid interface name %q", ifName)
	}
	if strings.ContainsAny(ifName, "/: \t\n\v\f\r") {
		return fmt.Errorf("interface name %q contains '/', ':' or white space", ifName)
	}
	return nil
}

// CheckVersion accepts any minor version of this package's major version:
// CodeInvalidRequest for a malformed version, CodeVersionMismatch for
// another major version.
func CheckVersion(v string) *Error {
	major, _, err := parseVersion(v)
	if err != nil {
		return Errorf(CodeInvalidRequest, "%v", err)
	}
	if major != versionMajor {
		return Errorf(CodeVersionMismatch, "protocol version %s is not supported: this server speaks %s", v, Version)
	}
	return nil
}

// parseVersion parses "major.minor".
func parseVersion(v string) (int, int, error) {
	ma, mi, ok := strings.Cut(v, ".")
	if !ok {
		return 0, 0, fmt.Errorf("protocol version %q is not major.minor", v)
	}
	major, err1 := strconv.ParseUint(ma, 10, 16)
	minor, err2 := strconv.ParseUint(mi, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("protocol version %q is not major.minor", v)
	}
	return int(major), int(minor), nil
}
