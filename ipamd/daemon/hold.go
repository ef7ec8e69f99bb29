package daemon

import (
	"maps"
	"slices"
	"strings"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// Hold keeps the daemon not ready for a reason outside the pool: kubenet
// mode holds a node back while its pod CIDR's route is not effective in the
// VNet (a pod would start black-holed). While any hold is set, STATUS says
// not ready with the hold's reason and ADD is refused with "try again"; DEL,
// CHECK and GC work as always, and running pods keep their addresses.
// SetHold with an empty reason lifts the hold of that name.
func (d *Daemon) SetHold(name, reason string) {
	d.mu.Lock()
	prev, had := d.holds[name]
	switch {
	case reason == "" && !had, reason != "" && had && prev == reason:
		d.mu.Unlock()
		return
	case reason == "":
		delete(d.holds, name)
	default:
		if d.holds == nil {
			d.holds = map[string]string{}
		}
		d.holds[name] = reason
	}
	d.mu.Unlock()
	if reason == "" {
		d.log.Info("hold lifted", "hold", name)
	} else {
		d.log.Warn("holding the node's pods back", "hold", name, "reason", reason)
	}
	d.notify()
}

// holdLocked returns the reasons of the holds in effect, "" when none.
func (d *Daemon) holdLocked() string {
	if len(d.holds) == 0 {
		return ""
	}
	names := slices.Sorted(maps.Keys(d.holds))
	reasons := make([]string, len(names))
	for i, n := range names {
		reasons[i] = d.holds[n]
	}
	return strings.Join(reasons, "; ")
}

// heldErr is the error of an ADD while the node is held back, nil when it
// is not.
func (d *Daemon) heldErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if why := d.holdLocked(); why != "" {
		return api.Errorf(api.CodeTryAgain, "the node holds its pods back: %s", why)
	}
	return nil
}
