package fabric

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// nftTable is the fabric's netdev table in the vnet namespace.
const nftTable = "fabric"

const outboundSet = "outbound"

func nodeChain(dev string) string { return "ingress-" + dev }
func nodeSet(dev string) string   { return "ips-" + dev }

var egressChain = "egress-" + inetLink

// nftChain is one base chain with its rules, as wanted.
type nftChain struct {
	chain *nftables.Chain
	rules [][]expr.Any
	notes []string // one comment per rule
}

// nftWant is the whole wanted table.
type nftWant struct {
	table  *nftables.Table
	chains []nftChain
	sets   map[string][]netip.Addr // set name -> sorted elements
}

// buildNFT turns the spec into chains, rules and sets.
//
// Per node link, on ingress:
//
//	meta iiftype ether ether saddr != <NIC MAC> drop
//	meta protocol arp arp saddr ether != <NIC MAC> drop
//	meta protocol ip ip saddr != @ips-<link> drop   (only without IP forwarding)
//
// On egress to the internet link:
//
//	meta protocol ip ip saddr != @outbound drop
func buildNFT(spec nftSpec) nftWant {
	t := &nftables.Table{Name: nftTable, Family: nftables.TableFamilyNetdev}
	w := nftWant{table: t, sets: make(map[string][]netip.Addr)}
	accept := nftables.ChainPolicyAccept
	for _, n := range spec.Nodes {
		c := nftChain{chain: &nftables.Chain{
			Name:     nodeChain(n.Dev),
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookIngress,
			Priority: nftables.ChainPriorityFilter,
			Policy:   &accept,
			Device:   n.Dev,
		}}
		c.add("source mac must be the nic's",
			&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1},
			cmpEq(binaryutil.NativeEndian.PutUint16(unix.ARPHRD_ETHER)),
			loadLinkSource(), cmpNeq(n.MAC), drop())
		c.add("arp sender mac must be the nic's",
			loadProto(), cmpEq(binaryutil.BigEndian.PutUint16(unix.ETH_P_ARP)),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
			cmpNeq(n.MAC), drop())
		if !n.IPForwarding {
			c.add("source ip must be assigned to the nic",
				loadProto(), cmpEq(binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)),
				loadIPSource(), notInSet(nodeSet(n.Dev)), drop())
		}
		w.chains = append(w.chains, c)
		w.sets[nodeSet(n.Dev)] = n.IPs
	}
	out := nftChain{chain: &nftables.Chain{
		Name:     egressChain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookEgress,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
		Device:   inetLink,
	}}
	out.add("only primary ips reach the internet",
		loadProto(), cmpEq(binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)),
		loadIPSource(), notInSet(outboundSet), drop())
	w.chains = append(w.chains, out)
	w.sets[outboundSet] = spec.Outbound
	return w
}

func (c *nftChain) add(note string, exprs ...expr.Any) {
	c.rules = append(c.rules, exprs)
	c.notes = append(c.notes, note)
}

func loadProto() expr.Any { return &expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1} }
func loadLinkSource() expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
}
func loadIPSource() expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
}
func cmpEq(b []byte) expr.Any  { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
func cmpNeq(b []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: b} }
func notInSet(name string) expr.Any {
	return &expr.Lookup{SourceRegister: 1, SetName: name, Invert: true}
}
func drop() expr.Any { return &expr.Verdict{Kind: expr.VerdictDrop} }

func comment(note string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, "fabric: "+note)
}

// ruleKey is a canonical encoding of a rule's expressions and user data, the
// same for a rule as built here and as read back from the kernel.
func ruleKey(exprs []expr.Any, ud []byte) (string, error) {
	var b []byte
	for _, e := range exprs {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = 0 // the kernel does not report it
			e = &c
		}
		m, err := expr.Marshal(byte(nftables.TableFamilyNetdev), e)
		if err != nil {
			return "", fmt.Errorf("marshal %T: %w", e, err)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(ud)))
	b = append(b, ud...)
	return string(b), nil
}

// reconcileNFTLocked makes the table match spec. When chains, rules or sets
// differ it replaces the whole table in one transaction; when only set
// elements differ it adds and deletes those, again in one transaction.
//
// Chains of links that do not exist (an interface link that could not be
// created) are left out: one of them would fail the whole transaction.
func (f *Fabric) reconcileNFTLocked(spec nftSpec, dryRun bool) (int, error) {
	spec.Nodes = slices.DeleteFunc(slices.Clone(spec.Nodes), func(n nftNode) bool {
		_, ok := f.ifindex[n.Dev]
		return !ok
	})
	w := buildNFT(spec)
	same, haveElems, err := f.nftStructureMatches(w)
	if err != nil {
		return 0, err
	}
	if !same || f.nftStale {
		if dryRun {
			return 1, nil
		}
		if err := f.rebuildNFT(w); err != nil {
			return 1, fmt.Errorf("rewrite nftables table %s: %w", nftTable, err)
		}
		f.nftStale = false
		return 1, nil
	}
	changes := 0
	for name, want := range w.sets {
		s := &nftables.Set{Table: w.table, Name: name, KeyType: nftables.TypeIPAddr}
		have := haveElems[name]
		var add, del []nftables.SetElement
		for _, a := range want {
			if !have[a] {
				add = append(add, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		for a := range have {
			if !slices.Contains(want, a) {
				del = append(del, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		changes += len(add) + len(del)
		if dryRun {
			continue
		}
		if len(add) > 0 {
			if err := f.nft.SetAddElements(s, add); err != nil {
				return changes, fmt.Errorf("add elements to set %s: %w", name, err)
			}
		}
		if len(del) > 0 {
			if err := f.nft.SetDeleteElements(s, del); err != nil {
				return changes, fmt.Errorf("delete elements of set %s: %w", name, err)
			}
		}
	}
	if changes > 0 && !dryRun {
		if err := f.nft.Flush(); err != nil {
			return changes, fmt.Errorf("update set elements: %w", err)
		}
	}
	return changes, nil
}

// nftStructureMatches compares the kernel's table, chains, rules and sets
// with w; when they match it also returns the current set elements.
func (f *Fabric) nftStructureMatches(w nftWant) (bool, map[string]map[netip.Addr]bool, error) {
	tables, err := f.nft.ListTablesOfFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return false, nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == nftTable }) {
		return false, nil, nil
	}
	chains, err := f.nft.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return false, nil, fmt.Errorf("list nftables chains: %w", err)
	}
	have := make(map[string]*nftables.Chain)
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == nftTable {
			have[c.Name] = c
		}
	}
	if len(have) != len(w.chains) {
		return false, nil, nil
	}
	for _, wc := range w.chains {
		hc, ok := have[wc.chain.Name]
		if !ok || !sameChain(hc, wc.chain) {
			return false, nil, nil
		}
		rules, err := f.nft.GetRules(w.table, wc.chain)
		if err != nil {
			return false, nil, fmt.Errorf("list rules of chain %s: %w", wc.chain.Name, err)
		}
		if len(rules) != len(wc.rules) {
			return false, nil, nil
		}
		for i, r := range rules {
			got, err := ruleKey(r.Exprs, r.UserData)
			if err != nil {
				return false, nil, nil // something we did not write
			}
			want, err := ruleKey(wc.rules[i], comment(wc.notes[i]))
			if err != nil {
				return false, nil, err
			}
			if got != want {
				return false, nil, nil
			}
		}
	}
	sets, err := f.nft.GetSets(w.table)
	if err != nil {
		return false, nil, fmt.Errorf("list nftables sets: %w", err)
	}
	if len(sets) != len(w.sets) {
		return false, nil, nil
	}
	elems := make(map[string]map[netip.Addr]bool, len(sets))
	for _, s := range sets {
		if _, ok := w.sets[s.Name]; !ok || s.KeyType.Name != nftables.TypeIPAddr.Name || s.Interval || s.IsMap || s.Constant {
			return false, nil, nil
		}
		es, err := f.nft.GetSetElements(s)
		if err != nil {
			return false, nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		m := make(map[netip.Addr]bool, len(es))
		for _, e := range es {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok {
				return false, nil, nil
			}
			m[a] = true
		}
		elems[s.Name] = m
	}
	return true, elems, nil
}

func sameChain(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority &&
		have.Policy != nil && *have.Policy == *want.Policy
}

// rebuildNFT replaces the table with w in one transaction.
func (f *Fabric) rebuildNFT(w nftWant) error {
	tables, err := f.nft.ListTablesOfFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	if slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == nftTable }) {
		f.nft.DelTable(w.table)
	}
	f.nft.AddTable(w.table)
	ids := make(map[string]uint32)
	names := make([]string, 0, len(w.sets))
	for name := range w.sets {
		names = append(names, name)
	}
	slices.Sort(names)
	var errs []error
	for i, name := range names {
		// IDs need only be unique within the batch. Setting them here also
		// keeps AddSet away from the library's unsynchronised global
		// counter, which races when several fabrics run in one process.
		s := &nftables.Set{Table: w.table, Name: name, KeyType: nftables.TypeIPAddr, ID: uint32(i + 1)}
		elems := make([]nftables.SetElement, 0, len(w.sets[name]))
		for _, a := range w.sets[name] {
			elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
		}
		if err := f.nft.AddSet(s, elems); err != nil {
			errs = append(errs, fmt.Errorf("add set %s: %w", name, err))
		}
		ids[name] = s.ID
	}
	for _, c := range w.chains {
		f.nft.AddChain(c.chain)
		for i, exprs := range c.rules {
			exprs = slices.Clone(exprs)
			for j, e := range exprs {
				if l, ok := e.(*expr.Lookup); ok {
					cp := *l
					cp.SetID = ids[l.SetName]
					exprs[j] = &cp
				}
			}
			f.nft.AddRule(&nftables.Rule{Table: w.table, Chain: c.chain, Exprs: exprs, UserData: comment(c.notes[i])})
		}
	}
	if len(errs) > 0 {
		// Drop the queued batch rather than commit half a table.
		return errors.Join(append(errs, f.discardBatch())...)
	}
	return f.nft.Flush()
}

// discardBatch forgets queued messages: the library has no explicit
// abort, so recreate the connection.
func (f *Fabric) discardBatch() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(f.vnetNS)))
	if err != nil {
		return fmt.Errorf("recreate nftables connection: %w", err)
	}
	f.nft = c
	return nil
}
