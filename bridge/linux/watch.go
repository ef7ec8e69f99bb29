package linux

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Watch reports changes in the namespace that may concern a mode's
// datapath: a table of tables (vnet-cni's own, by name) created or
// deleted, or a chain, rule or set of one of them; a link that is not a pod
// veth changed (the bridge, the uplink). Pod set elements and pod veths
// change on every ADD and DEL and are not reported. The channel gets a
// value after changes (coalesced: one value may stand for many) until ctx
// is done; it is closed when the watch ends, also on a socket error.
func (n *NS) Watch(ctx context.Context, tables []string) (<-chan struct{}, error) {
	// A connection of its own (not lasting): closing the monitor closes it.
	conn, err := nftables.New(n.nftOptions()...)
	if err != nil {
		return nil, fmt.Errorf("nftables connection for the monitor: %w", err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorObject(nftables.MonitorObjectAny))
	events, err := conn.AddMonitor(mon)
	if err != nil {
		return nil, fmt.Errorf("monitor nftables: %w", err)
	}
	links := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	var subOpts netlink.LinkSubscribeOptions
	if n.path != "" {
		h := n.handle
		subOpts.Namespace = &h
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, subOpts); err != nil {
		return nil, errors.Join(fmt.Errorf("watch links: %w", err), mon.Close())
	}
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		defer func() {
			close(done)
			_ = mon.Close()
			// Let the libraries' goroutines end: they may be blocked on a
			// send.
			go func() {
				for range events {
				}
			}()
			go func() {
				for range links {
				}
			}()
			close(out)
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-events:
				if !ok {
					return
				}
				if ownedRulesetChange(ev, tables) {
					notify()
				}
			case u, ok := <-links:
				if !ok {
					return
				}
				if u.Link != nil && !strings.HasPrefix(u.Link.Attrs().Name, HostVethPrefix) {
					notify()
				}
			}
		}
	}()
	return out, nil
}

// ownedRulesetChange tells whether an nftables event changed one of the
// named tables' structure (not its set elements). A monitor error counts as
// a change: the caller checks everything.
func ownedRulesetChange(ev *nftables.MonitorEvent, tables []string) bool {
	if ev.Error != nil {
		return true
	}
	var t *nftables.Table
	switch ev.Type {
	case nftables.MonitorEventTypeNewTable, nftables.MonitorEventTypeDelTable:
		t, _ = ev.Data.(*nftables.Table)
	case nftables.MonitorEventTypeNewChain, nftables.MonitorEventTypeDelChain:
		if c, ok := ev.Data.(*nftables.Chain); ok {
			t = c.Table
		}
	case nftables.MonitorEventTypeNewRule, nftables.MonitorEventTypeDelRule:
		if r, ok := ev.Data.(*nftables.Rule); ok {
			t = r.Table
		}
	case nftables.MonitorEventTypeNewSet, nftables.MonitorEventTypeDelSet:
		if s, ok := ev.Data.(*nftables.Set); ok {
			t = s.Table
		}
	default:
		return false
	}
	// An event the library could not decode may still be one of ours.
	return t == nil || slices.Contains(tables, t.Name)
}

// LinkEvents reports every link change in the namespace (pod veths
// included) until done is closed, for a caller that waits for one link to
// appear. The channel is drained after done, so the library never blocks
// on it; it is closed when the subscription ends, also on a socket error.
func (n *NS) LinkEvents(done <-chan struct{}) (<-chan netlink.LinkUpdate, error) {
	in := make(chan netlink.LinkUpdate, 16)
	h := n.handle
	if err := netlink.LinkSubscribeWithOptions(in, done, netlink.LinkSubscribeOptions{Namespace: &h}); err != nil {
		return nil, fmt.Errorf("watch links: %w", err)
	}
	out := make(chan netlink.LinkUpdate, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-done:
				for range in {
				}
				return
			case u, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- u:
				default: // one pending update is enough to look again
				}
			}
		}
	}()
	return out, nil
}
