// Package cloud holds what every cloud provider of vnet-cni shares: the
// node's network identity, the NIC state and the classification of cloud
// errors. The provider interfaces themselves are defined by their users.
package cloud

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Node is the network identity of the VM the daemon runs on.
type Node struct {
	// Provider is "azure" or "aws".
	Provider       string
	SubscriptionID string
	ResourceGroup  string
	Location       string
	VMName         string
	VMID           string
	// NICName and NICID name the primary network interface as the API knows it.
	NICName string
	NICID   string
	MAC     string
	// PrimaryIP is the NIC's primary private address.
	PrimaryIP netip.Addr
	// Subnet is the NIC's subnet; Gateway its first address.
	Subnet   netip.Prefix
	SubnetID string
	Gateway  netip.Addr
	// VNetPrefixes is the address space of the virtual network.
	VNetPrefixes []netip.Prefix
	// MaxIPs is the provider's limit of addresses on the NIC, primary included.
	MaxIPs int
}

// NIC is the current address state of the node's NIC.
type NIC struct {
	Primary netip.Addr
	// Secondary lists every other address on the NIC, sorted.
	Secondary    []netip.Addr
	IPForwarding bool
}

// Kind classifies a cloud error by what the caller should do about it.
type Kind int

const (
	// Fatal errors need an operator: bad credentials, missing resources.
	Fatal Kind = iota
	// Transient errors are worth retrying soon: timeouts, 5xx.
	Transient
	// Throttled means the API asked us to slow down; RetryAfter says how long.
	Throttled
	// SubnetFull means the subnet has no free address left.
	SubnetFull
	// NICLimit means the NIC cannot hold more addresses.
	NICLimit
	// Conflict means a concurrent writer changed the resource (ETag mismatch
	// or another operation in progress); re-read and retry.
	Conflict
)

func (k Kind) String() string {
	switch k {
	case Fatal:
		return "fatal"
	case Transient:
		return "transient"
	case Throttled:
		return "throttled"
	case SubnetFull:
		return "subnet_full"
	case NICLimit:
		return "nic_limit"
	case Conflict:
		return "conflict"
	default:
		return fmt.Sprintf("kind(%d)", int(k))
	}
}

// Error is a classified cloud error.
type Error struct {
	Kind Kind
	// Op is the API operation, e.g. "NetworkInterfaces_CreateOrUpdate".
	Op string
	// Code is the provider's error code, e.g. "SubnetIsFull".
	Code string
	// RetryAfter is the delay the API asked for (Throttled), or zero.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	msg := e.Op + ": " + e.Kind.String()
	if e.Code != "" {
		msg += " (" + e.Code + ")"
	}
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of a classified error anywhere in err's chain, and
// Transient for an unclassified one.
func KindOf(err error) Kind {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Kind
	}
	return Transient
}

// RetryAfterOf returns the delay a classified error asks for, or zero.
func RetryAfterOf(err error) time.Duration {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.RetryAfter
	}
	return 0
}
