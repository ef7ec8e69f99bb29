// Package cloud holds what every cloud provider of vnet-cni shares: the
// instance the daemon runs on with its network interfaces and their
// addresses, the provider's limits, and the classification of cloud errors.
// It names no provider's own identifiers (Azure's subscription and resource
// group, AWS's account): those stay inside each provider's package. The
// provider interfaces themselves are defined by their users.
package cloud

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Instance is the VM the daemon runs on, as its cloud describes it.
type Instance struct {
	// Provider is "azure" or "aws".
	Provider string
	// ID is the provider's identifier of the instance (Azure's vmId, an EC2
	// instance ID); Name its name (Azure's VM name, AWS's private DNS name).
	ID   string
	Name string
	// Interfaces are the instance's network interfaces, by device index;
	// exactly one is Primary.
	Interfaces []Interface
	// NetworkPrefixes is the address space of the virtual network (VNet or VPC).
	NetworkPrefixes []netip.Prefix
	// Limits are the provider's limits for this instance.
	Limits Limits
}

// Primary returns the instance's primary interface, and false when there
// is none (a provider always reports one).
func (in Instance) Primary() (Interface, bool) {
	for _, ifc := range in.Interfaces {
		if ifc.Primary {
			return ifc, true
		}
	}
	return Interface{}, false
}

// Interface is one network interface (an Azure NIC, an AWS ENI) and its
// addresses.
type Interface struct {
	// ID is the provider's identifier of the interface (an Azure NIC's
	// resource ID, an ENI ID); records of the address store carry it.
	ID string
	// MAC is the interface's hardware address, lower-case hex without
	// separators.
	MAC string
	// DeviceIndex is the interface's position on the instance, 0 for the
	// primary one (AWS's device-number; per-interface routing tables use it).
	DeviceIndex int
	// Primary reports the instance's primary interface.
	Primary bool
	// PrimaryIP is the interface's own address, which is never handed out.
	PrimaryIP netip.Addr
	// Subnet is the interface's subnet and SubnetID the provider's name of
	// it; Gateway is the subnet's router, its first address.
	Subnet   netip.Prefix
	SubnetID string
	Gateway  netip.Addr
	// Secondary lists every other address on the interface, sorted.
	Secondary []netip.Addr
	// Prefixes are address prefixes delegated to the interface (AWS prefix
	// delegation); nil when the provider has none.
	Prefixes []netip.Prefix
	// IPForwarding reports whether the cloud lets the interface send traffic
	// from addresses it does not own.
	IPForwarding bool
	// Owned reports an interface vnet-cni created for pod addresses (AWS:
	// by its tags); the daemon detaches and deletes such an interface once
	// it has stayed empty. The primary interface is never owned.
	Owned bool
}

// Limits are what a provider allows on one instance.
type Limits struct {
	// Interfaces is the number of interfaces that can carry pod addresses.
	Interfaces int
	// AddressesPerInterface is the number of private addresses one interface
	// can hold, its primary address included (Azure: 256 ipConfigurations;
	// EC2: per instance type, e.g. 6 on a t3.medium).
	AddressesPerInterface int
}

// Secondaries is the number of secondary addresses the limits allow on n
// interfaces: every address of each interface but its primary one.
func (l Limits) Secondaries(n int) int {
	return max(l.AddressesPerInterface-1, 0) * max(min(n, l.Interfaces), 0)
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
	// AddressInUse means that an address asked for by value is held by
	// another interface (Azure's PrivateIPAddressIsAllocated); asking again
	// helps only once that interface lets it go.
	AddressInUse
	// Denied means that the identity may not make the call (Azure RBAC's
	// 403 AuthorizationFailed, EC2's UnauthorizedOperation): asking again
	// helps only once an operator grants the permission.
	Denied
	// InterfaceLimit means the instance cannot hold more network interfaces
	// (EC2's AttachmentLimitExceeded): unlike NICLimit, attaching another
	// interface does not help; only releasing addresses or a larger
	// instance type does.
	InterfaceLimit
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
	case AddressInUse:
		return "address_in_use"
	case Denied:
		return "denied"
	case InterfaceLimit:
		return "interface_limit"
	default:
		return fmt.Sprintf("kind(%d)", int(k))
	}
}

// MaxMessage bounds Error.Message.
const MaxMessage = 1024

// Error is a classified cloud error.
type Error struct {
	Kind Kind
	// Op is the API operation, e.g. "NetworkInterfaces_CreateOrUpdate".
	Op string
	// Code is the provider's error code, e.g. "SubnetIsFull".
	Code string
	// Message is the provider's own explanation, when it sent one (Azure:
	// error.message, e.g. which resource holds an address); at most
	// MaxMessage bytes.
	Message string
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

// Reason is a one-line summary of err for people (status output): the
// kind, the provider's code and message of a classified error, else the
// error itself.
func Reason(err error) string {
	var ce *Error
	if !errors.As(err, &ce) || ce.Message == "" {
		return err.Error()
	}
	msg := ce.Kind.String()
	if ce.Code != "" {
		msg += " (" + ce.Code + ")"
	}
	return msg + ": " + ce.Message
}

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
