// Package pool holds the warm-pool maths of vnet-ipamd as one pure function.
//
// The daemon gathers the state of its address store and its configuration into an
// [Input], calls [Plan], and then acts on the returned [Decision]: one batched NIC
// update that adds Decision.Allocate addresses, or one that removes Decision.Release.
// Plan never performs I/O, never reads the clock and never keeps state, so the same
// input always yields the same decision.
package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Targets are the pool sizes the operator asks for (see the ipamd config package).
type Targets struct {
	// WarmIPTarget is the number of free addresses to keep ready for new pods.
	WarmIPTarget int
	// MinIPTarget is the floor of secondary addresses on the NIC (free, assigned
	// and cooling together); the primary address is not counted.
	MinIPTarget int
	// MaxIPs is the operator's ceiling of secondary addresses; the
	// provider's (Input.Capacity) applies too. Zero and negative values
	// leave only the provider's.
	MaxIPs int
	// BatchSize is the allocation granularity: an allocation asks for what is
	// needed rounded up to a multiple of BatchSize (then capped by MaxIPs).
	// Values below 1 mean 1.
	BatchSize int
	// ReleaseDelay is how long an address must have been free before it may be
	// released to the cloud as excess.
	ReleaseDelay time.Duration
}

// Validate reports targets that no configuration should produce: negative
// sizes or delay, or a batch below 1. Plan itself copes with any value (see
// the field comments), and targets above the ceiling only make it report
// LimitReached; Validate is for callers that take targets from outside.
func (t Targets) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"warmIPTarget", t.WarmIPTarget}, {"minIPTarget", t.MinIPTarget}, {"maxIPs", t.MaxIPs}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s %d is negative", f.name, f.v))
		}
	}
	if t.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("batchSize %d is below 1", t.BatchSize))
	}
	if t.ReleaseDelay < 0 {
		errs = append(errs, fmt.Errorf("releaseDelay %s is negative", t.ReleaseDelay))
	}
	return errors.Join(errs...)
}

// FreeIP is a free address and the instant it became free.
type FreeIP struct {
	IP    netip.Addr
	Since time.Time
	// Rank orders releases: of the addresses eligible for release, those
	// of a higher rank go first. The daemon ranks an address by its
	// interface's device index, so that the interface attached last empties
	// first and can be detached.
	Rank int
}

// Input is everything Plan looks at. Counts below zero are treated as zero.
type Input struct {
	// Now is the current time; it is compared with FreeIP.Since.
	Now time.Time
	// Free are the addresses that can be handed out right now.
	Free []FreeIP
	// Assigned is the number of addresses owned by an attachment.
	Assigned int
	// Cooling is the number of released addresses waiting for their cooldown.
	// They count toward the total on the NIC but not toward the warm target.
	Cooling int
	// Releasing is the number of addresses in a release that is in flight
	// (marked for removal, the cloud has not confirmed yet).
	Releasing int
	// Pending is the number of allocation requests waiting because no address
	// was free; they are demand on top of WarmIPTarget.
	Pending int
	// Targets are the configured pool sizes.
	Targets Targets
	// Capacity is the number of secondary addresses the provider allows on
	// the interfaces the pool fills (cloud.Limits.Secondaries); the pool
	// never grows beyond it, whatever Targets.MaxIPs says. Zero or less
	// means no room.
	Capacity int
}

// Ceiling is the most secondary addresses the pool may hold: the provider's
// capacity, lowered to the operator's MaxIPs when that is set.
func Ceiling(t Targets, capacity int) int {
	capacity = max(capacity, 0)
	if t.MaxIPs > 0 {
		return min(t.MaxIPs, capacity)
	}
	return capacity
}

// Action is what a Decision asks the daemon to do.
type Action int

// The actions of a Decision.
const (
	// ActionNone: nothing to do now.
	ActionNone Action = iota
	// ActionAllocate: add Decision.Allocate addresses in one NIC update.
	ActionAllocate
	// ActionRelease: remove Decision.Release in one NIC update.
	ActionRelease
)

// String returns "none", "allocate" or "release".
func (a Action) String() string {
	switch a {
	case ActionNone:
		return "none"
	case ActionAllocate:
		return "allocate"
	case ActionRelease:
		return "release"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Decision is the outcome of Plan.
type Decision struct {
	// Action says which of the fields below to act on.
	Action Action
	// Allocate is the number of addresses to add (ActionAllocate only).
	Allocate int
	// Release are the free addresses to remove, sorted by IP (ActionRelease only).
	Release []netip.Addr
	// Wanted is the number of addresses the pool would add if no ceiling
	// applied; it is set whenever the pool is short, also when LimitReached.
	Wanted int
	// LimitReached reports that the pool wants more addresses than MaxIPs or
	// the provider's capacity allow: Allocate is smaller than Wanted (possibly zero). The
	// daemon reports it instead of calling the cloud for the missing part.
	LimitReached bool
	// RecheckAt, when not zero, is the earliest instant at which Plan may
	// decide differently without any other change of the input: the moment a
	// waiting excess address has been free for ReleaseDelay.
	RecheckAt time.Time
	// Reason explains the decision for logs and status output.
	Reason string
}

// Plan computes what the daemon should do with the pool.
//
// Rules, in order:
//   - A release in flight (Releasing > 0) blocks every new decision, allocation
//     included. Adding addresses while removing others would thrash, and both are
//     updates of the same NIC that would race on its ETag. The daemon plans again
//     once the release has been confirmed (store Remove) or reverted. At startup
//     it resolves releasing entries left by a crash before it plans.
//   - Total is free + assigned + cooling. The ceiling is [Ceiling]: the
//     provider's Capacity, lowered to MaxIPs when that is set.
//   - Short: wanted = max(WarmIPTarget + Pending - free, MinIPTarget - total).
//     When wanted > 0 the pool allocates wanted rounded up to BatchSize, capped
//     by the room below the ceiling. If the cap cuts the allocation, LimitReached
//     is set (with Allocate 0 and ActionNone when there is no room at all).
//   - Above the ceiling (MaxIPs lowered below the current total, or a
//     provider that allows fewer addresses than the interfaces hold): free
//     addresses are released down to the ceiling, even below the warm target;
//     LimitReached is set when the pool is short at the same time.
//   - Excess: there is excess only when more than WarmIPTarget+BatchSize-1
//     addresses are free (the most one rounded-up allocation can leave, so a
//     fill is never followed by a release). Excess is released down to
//     WarmIPTarget free, never below MinIPTarget total.
//   - Only addresses free for at least ReleaseDelay are released, those of
//     the highest Rank first, then the longest free (ties by IP); when part
//     of the excess is not eligible yet, RecheckAt says when the next
//     address will be.
//   - Assigned, cooling and releasing addresses are never chosen for release
//     because they are not in Input.Free.
func Plan(in Input) Decision {
	t := normalize(in.Targets)
	free := len(in.Free)
	assigned := max(in.Assigned, 0)
	cooling := max(in.Cooling, 0)
	releasing := max(in.Releasing, 0)
	pending := max(in.Pending, 0)
	total := free + assigned + cooling
	ceiling := Ceiling(t, in.Capacity)

	if releasing > 0 {
		return Decision{
			Action: ActionNone,
			Reason: fmt.Sprintf("release of %d addresses in flight; waiting for it before planning", releasing),
		}
	}

	wanted := max(t.WarmIPTarget+pending-free, t.MinIPTarget-total, 0)
	if over := total - ceiling; over > 0 {
		// Above the ceiling (maxIPs was lowered): shrink first, whatever the
		// warm target says; the pool cannot grow anyway.
		if free == 0 {
			return Decision{
				Action:       ActionNone,
				Wanted:       wanted,
				LimitReached: wanted > 0,
				Reason: fmt.Sprintf("%d addresses above the maximum of %d but none is free to release",
					over, ceiling),
			}
		}
		d := planRelease(in.Now, in.Free, min(over, free), t.ReleaseDelay, "above the maximum")
		d.Wanted = wanted
		d.LimitReached = wanted > 0
		return d
	}
	if wanted > 0 {
		return planAllocate(wanted, total, free, ceiling, t.BatchSize)
	}

	excess := 0
	if keep := t.WarmIPTarget + t.BatchSize - 1; free > keep {
		// Release down to the warm target but keep the floor.
		excess = min(free-t.WarmIPTarget, total-t.MinIPTarget)
	}
	if excess <= 0 {
		return Decision{
			Action: ActionNone,
			Reason: fmt.Sprintf("pool within targets: %d free, %d total (warm %d, min %d, max %d, batch %d)",
				free, total, t.WarmIPTarget, t.MinIPTarget, ceiling, t.BatchSize),
		}
	}
	return planRelease(in.Now, in.Free, excess, t.ReleaseDelay, "in excess")
}

func normalize(t Targets) Targets {
	t.WarmIPTarget = max(t.WarmIPTarget, 0)
	t.MinIPTarget = max(t.MinIPTarget, 0)
	t.BatchSize = max(t.BatchSize, 1)
	t.ReleaseDelay = max(t.ReleaseDelay, 0)
	return t
}

func planAllocate(wanted, total, free, ceiling, batch int) Decision {
	room := max(ceiling-total, 0)
	n := min((wanted+batch-1)/batch*batch, room)
	d := Decision{Wanted: wanted}
	switch {
	case n == 0:
		d.Action = ActionNone
		d.LimitReached = true
		d.Reason = fmt.Sprintf("limit reached: pool wants %d more addresses but holds %d of at most %d",
			wanted, total, ceiling)
	case n < wanted:
		d.Action = ActionAllocate
		d.Allocate = n
		d.LimitReached = true
		d.Reason = fmt.Sprintf("limit reached: pool wants %d more addresses, allocating %d up to the maximum of %d",
			wanted, n, ceiling)
	default:
		d.Action = ActionAllocate
		d.Allocate = n
		d.Reason = fmt.Sprintf("pool short by %d (%d free, %d total): allocating %d (batch %d)",
			wanted, free, total, n, batch)
	}
	return d
}

func planRelease(now time.Time, free []FreeIP, excess int, delay time.Duration, why string) Decision {
	byAge := slices.Clone(free)
	slices.SortFunc(byAge, func(a, b FreeIP) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return a.IP.Compare(b.IP)
	})
	// Sorted by age, the eligible addresses are a prefix.
	eligible := 0
	for eligible < len(byAge) && !now.Before(byAge[eligible].Since.Add(delay)) {
		eligible++
	}
	var recheck time.Time
	if eligible < excess {
		// Every later address becomes eligible later too.
		recheck = byAge[eligible].Since.Add(delay)
	}
	if eligible == 0 {
		return Decision{
			Action:    ActionNone,
			RecheckAt: recheck,
			Reason: fmt.Sprintf("%d free addresses %s, none free for the release delay of %s yet",
				excess, why, delay),
		}
	}
	chosen := byAge[:eligible]
	// Higher rank first, then the longest free (a stable sort keeps the age
	// order within a rank).
	slices.SortStableFunc(chosen, func(a, b FreeIP) int { return b.Rank - a.Rank })
	chosen = chosen[:min(excess, eligible)]
	release := make([]netip.Addr, len(chosen))
	for i, f := range chosen {
		release[i] = f.IP
	}
	slices.SortFunc(release, func(a, b netip.Addr) int { return a.Compare(b) })
	reason := fmt.Sprintf("releasing %d free addresses %s", len(release), why)
	if len(release) < excess {
		reason += fmt.Sprintf("; %d more wait for the release delay of %s", excess-len(release), delay)
	}
	return Decision{Action: ActionRelease, Release: release, RecheckAt: recheck, Reason: reason}
}
