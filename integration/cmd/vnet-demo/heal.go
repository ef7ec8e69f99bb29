package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// selfHeal does what an operator's `nft flush ruleset` on node0 does, then
// watches vnet-ipamd rebuild vnet-cni's tables (with the pods' entries)
// without any ADD, and the pods reach the internet again.
func (d *demo) selfHeal(ctx context.Context) {
	r := d.r
	n0 := d.c.Nodes[0]
	r.Step("an operator runs `nft flush ruleset` on %s: vnet-ipamd repairs its tables, no ADD needed", n0.Name)
	tables := func() ([]string, error) {
		h, err := netns.GetFromPath(n0.NSPath)
		if err != nil {
			return nil, err
		}
		defer h.Close()
		c, err := nftables.New(nftables.WithNetNSFd(int(h)))
		if err != nil {
			return nil, err
		}
		ts, err := c.ListTables()
		if err != nil {
			return nil, err
		}
		var names []string
		for _, t := range ts {
			if !strings.HasPrefix(t.Name, "vnet-cni") {
				// portmap's own tables are its to restore.
				continue
			}
			names = append(names, fmt.Sprintf("%s %s", familyName(t.Family), t.Name))
		}
		slices.Sort(names)
		return names, nil
	}
	before, err := tables()
	r.CheckLine(fmt.Sprintf("%s's vnet-cni tables before: %v", n0.Name, before), err)
	if err != nil {
		return
	}
	flushed, err := func() (time.Time, error) {
		h, err := netns.GetFromPath(n0.NSPath)
		if err != nil {
			return time.Time{}, err
		}
		defer h.Close()
		c, err := nftables.New(nftables.WithNetNSFd(int(h)))
		if err != nil {
			return time.Time{}, err
		}
		c.FlushRuleset()
		return time.Now(), c.Flush()
	}()
	r.CheckLine("flushed the whole ruleset of "+n0.Name, err)
	if err != nil {
		return
	}
	var after []string
	for time.Since(flushed) < 10*time.Second {
		if after, err = tables(); err == nil && slices.Equal(after, before) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err == nil && !slices.Equal(after, before) {
		err = fmt.Errorf("tables %v after 10s", after)
	}
	r.CheckLine(fmt.Sprintf("vnet-ipamd rebuilt %v in %d ms", after, time.Since(flushed).Milliseconds()), err)
	inet := netip.AddrPortFrom(netip.MustParseAddr(d.sim.desc.InternetHost), 80)
	for _, p := range d.pods {
		if p.Node != n0 {
			continue
		}
		_, err := expect(ctx, p.NSPath, inet, "internet", netip.MustParseAddr(n0.PrimaryIP))
		r.CheckLine(fmt.Sprintf("%s reaches the internet again through SNAT", p.Name), err)
	}
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprint(f)
}
