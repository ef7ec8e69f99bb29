package kube

import (
	"strconv"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
)

// The reasons of the Events on the Node (all of type Warning but
// OverridesApplied).
const (
	// ReasonLimitReached: the pool wants more addresses than maxIPs or the
	// provider's limit allow; new pods beyond it get CNI error 11.
	ReasonLimitReached = "PoolLimitReached"
	// ReasonSubnetFull: the subnet has no free address for the pool.
	ReasonSubnetFull = "SubnetFull"
	// ReasonNICLimit: the interfaces hold as many addresses as they can.
	ReasonNICLimit = "NICLimit"
	// ReasonThrottled: the cloud throttles the daemon's calls.
	ReasonThrottled = "CloudThrottled"
	// ReasonWriteDenied: the node's identity may not write its NIC.
	ReasonWriteDenied = "CloudWriteDenied"
	// ReasonInvalidOverride: the VNetNode's spec was refused.
	ReasonInvalidOverride = "InvalidOverride"
	// ReasonOverridesApplied: the VNetNode's spec is in effect.
	ReasonOverridesApplied = "OverridesApplied"
)

// event is one Event to record on the Node.
type event struct {
	warning bool
	reason  string
	message string
}

// conditionOf is the reason of the pool's trouble in a report, "" when
// none: an active cloud error of a kind an operator should hear about wins
// over the limit it causes.
func conditionOf(r daemon.Report) (reason, message string) {
	if e := r.CloudError; e != nil && e.Active {
		switch e.Kind {
		case cloud.SubnetFull:
			return ReasonSubnetFull, "the subnet has no free address for the pool: " + e.Message
		case cloud.NICLimit, cloud.InterfaceLimit:
			return ReasonNICLimit, "the node's interfaces hold no more addresses: " + e.Message
		case cloud.Throttled:
			return ReasonThrottled, "the cloud throttles the pool's calls: " + e.Message
		case cloud.Denied:
			return ReasonWriteDenied, "the node's identity may not add addresses to its interface: the pool holds only its " +
				strconv.Itoa(r.Counts.Total()) + " addresses and new pods beyond them wait (CNI error 11); grant the identity write access " +
				"to the interface, or create more addresses with the node (the template's ipAddressCount): " + e.Message
		}
	}
	if r.LimitReached {
		return ReasonLimitReached, "the pool is at its limit of " + strconv.Itoa(r.Ceiling) + " addresses (targets from " + r.TargetsFrom + "): new pods beyond it wait"
	}
	return "", ""
}

// dedupe decides which conditions become Events: one when a condition
// begins, and none for the same reason within interval of the last one,
// however often the condition comes and goes. Not safe for concurrent use.
type dedupe struct {
	interval time.Duration
	current  string
	last     map[string]time.Time
}

func newDedupe(interval time.Duration) *dedupe {
	return &dedupe{interval: interval, last: map[string]time.Time{}}
}

// observe takes the condition now and returns the Event to record, if any.
func (d *dedupe) observe(now time.Time, reason, message string) (event, bool) {
	if reason == d.current {
		return event{}, false
	}
	d.current = reason
	if reason == "" {
		return event{}, false
	}
	if at, ok := d.last[reason]; ok && now.Sub(at) < d.interval {
		return event{}, false
	}
	d.last[reason] = now
	return event{warning: true, reason: reason, message: message}, true
}
