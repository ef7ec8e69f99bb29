package azure0

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// tableState is what the kernel holds of one wanted table.
type tableState struct {
	exists bool
	// ok: chains, rules and the set are exactly as wanted.
	ok bool
	// elems are the set's elements (value: the MAC as a string, "" in a
	// plain set); readable says whether the set could be read at all.
	elems    map[netip.Addr]string
	readable bool
}

// nftState is the kernel's view of every table named TableName.
type nftState struct {
	tables map[nftables.TableFamily]tableState
}

// nftRaw is what the kernel holds in the tables named TableName, read
// without knowing the wanted state (so it can be read concurrently with the
// bridge).
type nftRaw struct {
	tables map[nftables.TableFamily]*rawTable
}

type rawTable struct {
	chains   map[string]*nftables.Chain
	rules    map[string][]*nftables.Rule
	elems    map[netip.Addr]string
	readable bool
}

// fetchNFT reads the tables named TableName: chains, rules and pod set.
// With elems it also lists the pod sets' elements (O(pods)); without, it
// only checks that each set exists with the wanted types, which is all a
// reconcile that adds no pods needs to know when the tables are intact.
func (n *Node) fetchNFT(elems bool) (nftRaw, error) {
	raw := nftRaw{tables: make(map[nftables.TableFamily]*rawTable)}
	tables, err := n.ns.NFT.ListTables()
	if err != nil {
		return raw, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			raw.tables[t.Family] = &rawTable{chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{}}
		}
	}
	if len(raw.tables) == 0 {
		return raw, nil
	}
	chains, err := n.ns.NFT.ListChains()
	if err != nil {
		return raw, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		if rt, ok := raw.tables[c.Table.Family]; ok {
			rt.chains[c.Name] = c
		}
	}
	for fam, rt := range raw.tables {
		t := &nftables.Table{Name: TableName, Family: fam}
		for name, c := range rt.chains {
			if rt.rules[name], err = n.ns.NFT.GetRules(t, c); err != nil {
				return raw, fmt.Errorf("list rules of %s: %w", name, err)
			}
		}
		set := wantTable{table: t, isMap: fam == nftables.TableFamilyBridge}.podSet()
		if elems {
			rt.elems, rt.readable, err = n.readPodSet(set)
		} else {
			rt.readable, err = n.podSetIntact(set)
		}
		if err != nil {
			return raw, err
		}
	}
	return raw, nil
}

// compareNFT compares the kernel with want, table by table.
func compareNFT(want []wantTable, raw nftRaw) (nftState, error) {
	st := nftState{tables: make(map[nftables.TableFamily]tableState)}
	for fam, rt := range raw.tables {
		st.tables[fam] = tableState{exists: true, elems: rt.elems, readable: rt.readable}
	}
	for _, w := range want {
		rt, ok := raw.tables[w.table.Family]
		if !ok {
			continue
		}
		ts := st.tables[w.table.Family]
		match, err := tableMatches(w, rt)
		if err != nil {
			return st, err
		}
		ts.ok = match && rt.readable
		st.tables[w.table.Family] = ts
	}
	return st, nil
}

// readNFT fetches everything, elements included, and compares.
func (n *Node) readNFT(want []wantTable) (nftState, error) {
	raw, err := n.fetchNFT(true)
	if err != nil {
		return nftState{}, err
	}
	return compareNFT(want, raw)
}

// tableMatches reports whether the table's chains and rules are as wanted.
// The pod set is not compared: it cannot be deleted or recreated while the
// rules refer to it, and readPodSet checks its elements.
func tableMatches(w wantTable, rt *rawTable) (bool, error) {
	if len(rt.chains) != len(w.chains) {
		return false, nil
	}
	for _, wc := range w.chains {
		hc, ok := rt.chains[wc.chain.Name]
		if !ok || !sameChain(hc, wc.chain) {
			return false, nil
		}
		rules := rt.rules[wc.chain.Name]
		if len(rules) != len(wc.rules) {
			return false, nil
		}
		for i, r := range rules {
			got, err := ruleKey(w.table.Family, r.Exprs, r.UserData)
			if err != nil {
				// A rule we cannot encode is not one of ours.
				return false, nil
			}
			want, err := ruleKey(w.table.Family, wc.rules[i].exprs, comment(wc.rules[i].note))
			if err != nil {
				return false, err
			}
			if got != want {
				return false, nil
			}
		}
	}
	return true, nil
}

// podSetIntact reports whether the pod set exists with the key (and map
// data) type of want, so that every element it can hold is well-formed; a
// missing set is not an error. It is one request whatever the set holds.
func (n *Node) podSetIntact(want *nftables.Set) (bool, error) {
	have, err := n.ns.NFT.GetSetByName(want.Table, want.Name)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get set %s %s: %w", want.Table.Name, want.Name, err)
	}
	return have.IsMap == want.IsMap &&
		sameDatatype(have.KeyType, want.KeyType) &&
		(!want.IsMap || sameDatatype(have.DataType, want.DataType)), nil
}

func sameDatatype(a, b nftables.SetDatatype) bool {
	return a.Name == b.Name && a.Bytes == b.Bytes
}

// readPodSet reads the pod set's elements; a missing set is not an error.
func (n *Node) readPodSet(s *nftables.Set) (map[netip.Addr]string, bool, error) {
	elems, err := n.ns.NFT.GetSetElements(s)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("list elements of %s %s: %w", s.Table.Name, s.Name, err)
	}
	m := make(map[netip.Addr]string, len(elems))
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || !a.Is4() {
			return nil, false, nil
		}
		v := ""
		if s.IsMap {
			if len(e.Val) < 6 {
				return nil, false, nil
			}
			v = net.HardwareAddr(e.Val[:6]).String()
		}
		m[a] = v
	}
	return m, true, nil
}

func sameChain(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority &&
		have.Policy != nil && *have.Policy == *want.Policy
}

func comment(note string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, "vnet-cni: "+note)
}

// ruleKey encodes a rule's expressions and user data canonically: the same
// for a rule as built here and as read back from the kernel.
func ruleKey(fam nftables.TableFamily, exprs []expr.Any, ud []byte) (string, error) {
	var b []byte
	for _, e := range exprs {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = 0 // not reported by the kernel
			e = &c
		}
		m, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return "", fmt.Errorf("marshal %T: %w", e, err)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(ud)))
	return string(append(b, ud...)), nil
}

// nftPlan is the batch that brings the kernel to the wanted state.
type nftPlan struct {
	rebuild []wantTable                    // replaced as a whole
	drop    []*nftables.Table              // tables that should not exist
	add     map[*nftables.Set][]netip.Addr // elements to add (to intact tables)
	del     map[*nftables.Set][]netip.Addr // elements to delete (from intact tables)
	pods    map[netip.Addr]net.HardwareAddr
}

func (p nftPlan) changes() int {
	c := len(p.rebuild) + len(p.drop)
	for _, v := range p.add {
		c += len(v)
	}
	for _, v := range p.del {
		c += len(v)
	}
	return c
}

// podsWanted merges the pods currently registered in the bridge table with
// the given ones, or returns the given ones when they are authoritative.
// recovered are pods found from the veths, used when the set was lost.
func podsWanted(st nftState, given map[netip.Addr]net.HardwareAddr, authoritative bool, recovered map[netip.Addr]net.HardwareAddr) map[netip.Addr]net.HardwareAddr {
	out := make(map[netip.Addr]net.HardwareAddr)
	if !authoritative {
		if bs := st.tables[nftables.TableFamilyBridge]; bs.readable {
			for ip, mac := range bs.elems {
				if hw, err := net.ParseMAC(mac); err == nil {
					out[ip] = hw
				}
			}
		}
		for ip, mac := range recovered {
			if _, ok := out[ip]; !ok {
				out[ip] = mac
			}
		}
	}
	for ip, mac := range given {
		out[ip] = mac
	}
	return out
}

// planNFT computes the batch from the kernel state and the wanted pods.
func planNFT(want []wantTable, st nftState, pods map[netip.Addr]net.HardwareAddr) nftPlan {
	p := nftPlan{add: map[*nftables.Set][]netip.Addr{}, del: map[*nftables.Set][]netip.Addr{}, pods: pods}
	wanted := make(map[nftables.TableFamily]bool)
	for _, w := range want {
		wanted[w.table.Family] = true
		ts := st.tables[w.table.Family]
		if !ts.ok {
			p.rebuild = append(p.rebuild, w)
			continue
		}
		s := w.podSet()
		for ip, mac := range pods {
			v := ""
			if w.isMap {
				v = mac.String()
			}
			have, ok := ts.elems[ip]
			if ok && have == v {
				continue
			}
			if ok {
				p.del[s] = append(p.del[s], ip)
			}
			p.add[s] = append(p.add[s], ip)
		}
		for ip := range ts.elems {
			if _, ok := pods[ip]; !ok {
				p.del[s] = append(p.del[s], ip)
			}
		}
	}
	for fam, ts := range st.tables {
		if ts.exists && !wanted[fam] {
			p.drop = append(p.drop, &nftables.Table{Name: TableName, Family: fam})
		}
	}
	return p
}

// applyNFT sends the plan as one transaction.
func (n *Node) applyNFT(p nftPlan, st nftState) error {
	for _, t := range p.drop {
		n.ns.NFT.DelTable(t)
	}
	var errs []error
	for _, w := range p.rebuild {
		if st.tables[w.table.Family].exists {
			n.ns.NFT.DelTable(w.table)
		}
		n.ns.NFT.AddTable(w.table)
		s := w.podSet()
		if err := n.ns.NFT.AddSet(s, elements(s, p.pods, sortedAddrs(p.pods))); err != nil {
			errs = append(errs, fmt.Errorf("add set %s: %w", s.Name, err))
		}
		for _, c := range w.chains {
			n.ns.NFT.AddChain(c.chain)
			for _, r := range c.rules {
				exprs := slices.Clone(r.exprs)
				for i, e := range exprs {
					if l, ok := e.(*expr.Lookup); ok {
						cp := *l
						cp.SetID = s.ID
						exprs[i] = &cp
					}
				}
				n.ns.NFT.AddRule(&nftables.Rule{Table: w.table, Chain: c.chain, Exprs: exprs, UserData: comment(r.note)})
			}
		}
	}
	// Deletions before additions: a changed MAC is a delete and an add of
	// the same key in this one transaction.
	for s, ips := range p.del {
		if err := n.ns.NFT.SetDeleteElements(s, elements(s, nil, ips)); err != nil {
			errs = append(errs, fmt.Errorf("delete elements of %s: %w", s.Name, err))
		}
	}
	for s, ips := range p.add {
		if err := n.ns.NFT.SetAddElements(s, elements(s, p.pods, ips)); err != nil {
			errs = append(errs, fmt.Errorf("add elements to %s: %w", s.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(append(errs, n.ns.DiscardBatch())...)
	}
	if err := n.ns.NFT.Flush(); err != nil {
		return fmt.Errorf("apply nftables changes: %w", err)
	}
	return nil
}

func elements(s *nftables.Set, pods map[netip.Addr]net.HardwareAddr, ips []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(ips))
	for _, ip := range ips {
		e := nftables.SetElement{Key: ip.AsSlice()}
		if s.IsMap && pods != nil {
			e.Val = pods[ip]
		}
		out = append(out, e)
	}
	return out
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// reconcileNFT brings both tables to the wanted state. Pods are merged
// with the registered ones unless authoritative. raw is a fresh read of the
// kernel. It returns the number of changes made (0 when everything was in
// place; then no lock is taken).
func (n *Node) reconcileNFT(ctx context.Context, spec nftSpec, raw nftRaw, pods map[netip.Addr]net.HardwareAddr, authoritative bool, bridgeIndex int) (int, error) {
	want := buildTables(spec)
	st, err := compareNFT(want, raw)
	if err != nil {
		return 0, err
	}
	if planNFT(want, st, podsWanted(st, pods, authoritative, nil)).changes() == 0 {
		return 0, nil
	}
	unlock, err := n.ns.Lock(ctx)
	if err != nil {
		return 0, err
	}
	changes, err := n.reconcileNFTLocked(want, pods, authoritative, bridgeIndex)
	return changes, errors.Join(err, unlock())
}

func (n *Node) reconcileNFTLocked(want []wantTable, pods map[netip.Addr]net.HardwareAddr, authoritative bool, bridgeIndex int) (int, error) {
	st, err := n.readNFT(want)
	if err != nil {
		return 0, err
	}
	var recovered map[netip.Addr]net.HardwareAddr
	if !authoritative && !st.tables[nftables.TableFamilyBridge].readable {
		// The pod map is gone: the veths' aliases still say which pod
		// has which address and MAC.
		if recovered, err = n.podsFromVeths(bridgeIndex); err != nil {
			return 0, err
		}
	}
	p := planNFT(want, st, podsWanted(st, pods, authoritative, recovered))
	if p.changes() == 0 {
		return 0, nil
	}
	return p.changes(), n.applyNFT(p, st)
}

// podsFromVeths reads the pods from the aliases of the bridge's veth ports.
func (n *Node) podsFromVeths(bridgeIndex int) (map[netip.Addr]net.HardwareAddr, error) {
	ports, err := n.ns.PodsOfMaster(bridgeIndex)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]net.HardwareAddr, len(ports))
	for _, p := range ports {
		out[p.IP] = p.MAC
	}
	return out, nil
}
