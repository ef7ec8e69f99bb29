package linux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Table is the wanted state of one nftables table a mode owns: its chains
// with their rules, and its one set (nil: none), whose elements are mostly
// maintained by ADD and DEL.
type Table struct {
	Table  *nftables.Table
	Set    *nftables.Set
	Chains []Chain
	// Elements must be in the set (a changed map value is replaced).
	Elements []nftables.SetElement
	// Exact: the set holds Elements and nothing else. Otherwise the
	// elements already there stay.
	Exact bool
	// Recover lists the elements of a set that was lost (missing or
	// unreadable) when the table is rebuilt, e.g. from the veths' aliases.
	// It is called under the node lock; nil recovers nothing.
	Recover func() ([]nftables.SetElement, error)
}

// Chain is a wanted chain and its rules, in order.
type Chain struct {
	Chain *nftables.Chain
	Rules []Rule
}

// Rule is one rule with the note that explains it (stored as its comment).
type Rule struct {
	Note  string
	Exprs []expr.Any
}

// Add appends a rule; parts are expressions or groups of them.
func (c *Chain) Add(note string, parts ...any) {
	c.Rules = append(c.Rules, Rule{Note: note, Exprs: Flatten(parts)})
}

// Flatten turns a mix of single expressions and groups into one list.
func Flatten(in []any) []expr.Any {
	var out []expr.Any
	for _, x := range in {
		switch v := x.(type) {
		case []expr.Any:
			out = append(out, v...)
		case expr.Any:
			out = append(out, v)
		default:
			panic(fmt.Sprintf("linux: rule part of type %T", x))
		}
	}
	return out
}

// Tables is what the kernel holds of the tables with the owned names.
type Tables struct {
	tables map[tableID]*heldTable
	// elems says whether the sets' elements were listed.
	elems bool
}

// Has reports whether a table named name (of any family) exists.
func (t Tables) Has(name string) bool {
	for id := range t.tables {
		if id.name == name {
			return true
		}
	}
	return false
}

type tableID struct {
	name   string
	family nftables.TableFamily
}

type heldTable struct {
	chains map[string]*nftables.Chain
	rules  map[string][]*nftables.Rule
	// sets by name: the elements when listed (nil otherwise) and the
	// set's definition.
	sets map[string]*nftables.Set
	// elems by set name, when listed and well-formed.
	elems map[string][]nftables.SetElement
}

// ReadTables reads the chains, rules and sets of every table named one of
// names. With elems it also lists the sets' elements (O(elements));
// without, Reconcile lists them only when a wanted table needs them. It
// does not depend on the wanted state, so it can run while the mode
// prepares it.
func (n *NS) ReadTables(names []string, elems bool) (Tables, error) {
	held := Tables{tables: make(map[tableID]*heldTable), elems: elems}
	tables, err := n.NFT.ListTables()
	if err != nil {
		return held, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if slices.Contains(names, t.Name) {
			held.tables[tableID{t.Name, t.Family}] = &heldTable{
				chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{},
				sets: map[string]*nftables.Set{}, elems: map[string][]nftables.SetElement{},
			}
		}
	}
	if len(held.tables) == 0 {
		return held, nil
	}
	chains, err := n.NFT.ListChains()
	if err != nil {
		return held, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table == nil {
			continue
		}
		if ht, ok := held.tables[tableID{c.Table.Name, c.Table.Family}]; ok {
			ht.chains[c.Name] = c
		}
	}
	for id, ht := range held.tables {
		t := &nftables.Table{Name: id.name, Family: id.family}
		for name, c := range ht.chains {
			if ht.rules[name], err = n.NFT.GetRules(t, c); err != nil {
				return held, fmt.Errorf("list rules of %s %s: %w", id.name, name, err)
			}
		}
		sets, err := n.NFT.GetSets(t)
		if err != nil {
			return held, fmt.Errorf("list sets of %s: %w", id.name, err)
		}
		for _, s := range sets {
			ht.sets[s.Name] = s
			if !elems {
				continue
			}
			es, err := n.NFT.GetSetElements(s)
			if err != nil {
				return held, fmt.Errorf("list elements of %s %s: %w", id.name, s.Name, err)
			}
			ht.elems[s.Name] = es
		}
	}
	return held, nil
}

// Reconcile brings the tables to want, starting from held (a fresh
// ReadTables of names, the owned table names; a table with one of those
// names that want does not list is deleted). A table whose chains, rules
// or set differ is rebuilt as a whole, with the elements its set held (or
// its Recover ones when the set was lost); an intact table only has its
// elements corrected. Everything goes in one transaction under the node's
// lock, after a second read under it; when nothing needs changing it only
// reads, without the lock. It returns the number of changes made.
func (n *NS) Reconcile(ctx context.Context, names []string, want []Table, held Tables) (int, error) {
	if !held.elems && needsElements(want) {
		var err error
		if held, err = n.ReadTables(names, true); err != nil {
			return 0, err
		}
	}
	p, err := plan(want, held, false)
	if err != nil || p.changes() == 0 {
		return 0, err
	}
	unlock, err := n.Lock(ctx)
	if err != nil {
		return 0, err
	}
	changes, err := n.reconcileLocked(names, want)
	return changes, errors.Join(err, unlock())
}

func (n *NS) reconcileLocked(names []string, want []Table) (int, error) {
	held, err := n.ReadTables(names, true)
	if err != nil {
		return 0, err
	}
	p, err := plan(want, held, true)
	if err != nil || p.changes() == 0 {
		return 0, err
	}
	return p.changes(), n.apply(p)
}

// needsElements reports whether some wanted table's elements must be
// compared even when the table is intact.
func needsElements(want []Table) bool {
	return slices.ContainsFunc(want, func(w Table) bool { return w.Exact || len(w.Elements) > 0 })
}

// tablePlan is the batch that brings the kernel to the wanted state.
type tablePlan struct {
	drop    []*nftables.Table
	rebuild []rebuild
	add     map[*nftables.Set][]nftables.SetElement
	del     map[*nftables.Set][]nftables.SetElement
}

type rebuild struct {
	want   Table
	exists bool
	elems  []nftables.SetElement
}

func (p tablePlan) changes() int {
	c := len(p.drop) + len(p.rebuild)
	for _, v := range p.add {
		c += len(v)
	}
	for _, v := range p.del {
		c += len(v)
	}
	return c
}

// plan computes the batch. Recover is only called when locked (a rebuild is
// then certain); before, a rebuild is only counted.
func plan(want []Table, held Tables, locked bool) (tablePlan, error) {
	p := tablePlan{add: map[*nftables.Set][]nftables.SetElement{}, del: map[*nftables.Set][]nftables.SetElement{}}
	wanted := make(map[tableID]bool)
	for _, w := range want {
		id := tableID{w.Table.Name, w.Table.Family}
		wanted[id] = true
		ht := held.tables[id]
		have, readable := []nftables.SetElement(nil), false
		switch {
		case ht != nil && w.Set == nil:
			readable = true
		case ht != nil:
			have, readable = ht.setElements(w.Set, held.elems)
		}
		ok, err := ht.matches(w)
		if err != nil {
			return p, err
		}
		if !ok || !readable {
			rb := rebuild{want: w, exists: ht != nil, elems: have}
			if !readable && w.Recover != nil && locked {
				if rb.elems, err = w.Recover(); err != nil {
					return p, err
				}
			}
			rb.elems = merge(w.Set, rb.elems, w.Elements, w.Exact)
			p.rebuild = append(p.rebuild, rb)
			continue
		}
		if !held.elems || w.Set == nil {
			continue
		}
		add, del := diff(w.Set, have, w.Elements, w.Exact)
		if len(add) > 0 {
			p.add[w.Set] = add
		}
		if len(del) > 0 {
			p.del[w.Set] = del
		}
	}
	for id := range held.tables {
		if !wanted[id] {
			p.drop = append(p.drop, &nftables.Table{Name: id.name, Family: id.family})
		}
	}
	return p, nil
}

// setElements returns the wanted set's elements as held, and whether the
// set exists with the wanted types and well-formed elements. Without
// listed elements only the types are checked.
func (ht *heldTable) setElements(want *nftables.Set, listed bool) ([]nftables.SetElement, bool) {
	s, ok := ht.sets[want.Name]
	if !ok || s.IsMap != want.IsMap || s.Concatenation != want.Concatenation ||
		!sameDatatype(s.KeyType, want.KeyType, want.Concatenation) ||
		(want.IsMap && !sameDatatype(s.DataType, want.DataType, false)) {
		return nil, false
	}
	if !listed {
		return nil, true
	}
	elems := ht.elems[want.Name]
	for _, e := range elems {
		if len(e.Key) != int(want.KeyType.Bytes) || (want.IsMap && len(e.Val) < int(want.DataType.Bytes)) {
			return nil, false
		}
	}
	return elems, true
}

// sameDatatype compares set types; a concatenation's name is not reported
// back as built, so only its size is compared.
func sameDatatype(a, b nftables.SetDatatype, concat bool) bool {
	return (concat || a.Name == b.Name) && a.Bytes == b.Bytes
}

// matches reports whether the table's chains and rules are as wanted.
func (ht *heldTable) matches(w Table) (bool, error) {
	if ht == nil || len(ht.chains) != len(w.Chains) {
		return false, nil
	}
	for _, wc := range w.Chains {
		hc, ok := ht.chains[wc.Chain.Name]
		if !ok || !sameChain(hc, wc.Chain) {
			return false, nil
		}
		rules := ht.rules[wc.Chain.Name]
		if len(rules) != len(wc.Rules) {
			return false, nil
		}
		for i, r := range rules {
			got, err := ruleKey(w.Table.Family, r.Exprs, r.UserData)
			if err != nil {
				// A rule we cannot encode is not one of ours.
				return false, nil
			}
			want, err := ruleKey(w.Table.Family, wc.Rules[i].Exprs, comment(wc.Rules[i].Note))
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

func sameChain(have, want *nftables.Chain) bool {
	return have.Type == want.Type &&
		have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority &&
		have.Policy != nil && *have.Policy == *want.Policy
}

// elemValue is an element's map value as far as the set's data type goes
// (the kernel pads it to a register).
func elemValue(s *nftables.Set, e nftables.SetElement) string {
	if !s.IsMap {
		return ""
	}
	return string(e.Val[:min(len(e.Val), int(s.DataType.Bytes))])
}

// diff lists the elements to add and delete so that have holds given (and,
// when exact, nothing else). A changed map value is a delete and an add.
func diff(s *nftables.Set, have, given []nftables.SetElement, exact bool) (add, del []nftables.SetElement) {
	held := make(map[string]nftables.SetElement, len(have))
	for _, e := range have {
		held[string(e.Key)] = e
	}
	keep := make(map[string]bool, len(given))
	for _, e := range given {
		keep[string(e.Key)] = true
		h, ok := held[string(e.Key)]
		if ok && elemValue(s, h) == elemValue(s, e) {
			continue
		}
		if ok {
			del = append(del, nftables.SetElement{Key: e.Key})
		}
		add = append(add, e)
	}
	if exact {
		for _, e := range have {
			if !keep[string(e.Key)] {
				del = append(del, nftables.SetElement{Key: e.Key})
			}
		}
	}
	return add, del
}

// merge is the elements of a rebuilt set: have with given replacing the
// same keys, only given when exact.
func merge(s *nftables.Set, have, given []nftables.SetElement, exact bool) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(have)+len(given))
	seen := make(map[string]bool, len(given))
	for _, e := range given {
		if !seen[string(e.Key)] {
			seen[string(e.Key)] = true
			out = append(out, e)
		}
	}
	if exact {
		return out
	}
	for _, e := range have {
		if !seen[string(e.Key)] {
			seen[string(e.Key)] = true
			v := e
			if s.IsMap {
				v.Val = e.Val[:min(len(e.Val), int(s.DataType.Bytes))]
			}
			out = append(out, nftables.SetElement{Key: v.Key, Val: v.Val})
		}
	}
	return out
}

// apply sends the plan as one transaction.
func (n *NS) apply(p tablePlan) error {
	for _, t := range p.drop {
		n.NFT.DelTable(t)
	}
	var errs []error
	for _, rb := range p.rebuild {
		w := rb.want
		if rb.exists {
			n.NFT.DelTable(w.Table)
		}
		n.NFT.AddTable(w.Table)
		var s nftables.Set
		if w.Set != nil {
			s = *w.Set
			s.Table = w.Table
			if err := n.NFT.AddSet(&s, rb.elems); err != nil {
				errs = append(errs, fmt.Errorf("add set %s %s: %w", w.Table.Name, s.Name, err))
			}
		}
		for _, c := range w.Chains {
			n.NFT.AddChain(c.Chain)
			for _, r := range c.Rules {
				exprs := slices.Clone(r.Exprs)
				for i, e := range exprs {
					if l, ok := e.(*expr.Lookup); ok && w.Set != nil && l.SetName == s.Name {
						cp := *l
						cp.SetID = s.ID
						exprs[i] = &cp
					}
				}
				n.NFT.AddRule(&nftables.Rule{Table: w.Table, Chain: c.Chain, Exprs: exprs, UserData: comment(r.Note)})
			}
		}
	}
	// Deletions before additions: a changed map value is a delete and an
	// add of the same key in this one transaction.
	for s, es := range p.del {
		if err := n.NFT.SetDeleteElements(s, es); err != nil {
			errs = append(errs, fmt.Errorf("delete elements of %s %s: %w", s.Table.Name, s.Name, err))
		}
	}
	for s, es := range p.add {
		if err := n.NFT.SetAddElements(s, es); err != nil {
			errs = append(errs, fmt.Errorf("add elements to %s %s: %w", s.Table.Name, s.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(append(errs, n.DiscardBatch())...)
	}
	if err := n.NFT.Flush(); err != nil {
		return fmt.Errorf("apply nftables changes: %w", err)
	}
	return nil
}

// ReadSet lists a set's elements; ok is false when the set does not exist.
func (n *NS) ReadSet(s *nftables.Set) ([]nftables.SetElement, bool, error) {
	elems, err := n.NFT.GetSetElements(s)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		// The library reports a missing table without its errno.
		if ok, lerr := n.hasSet(s); lerr == nil && !ok {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("list elements of %s %s: %w", s.Table.Name, s.Name, err)
	}
	return elems, true, nil
}

// hasSet reports whether the set's table holds it.
func (n *NS) hasSet(s *nftables.Set) (bool, error) {
	tables, err := n.NFT.ListTablesOfFamily(s.Table.Family)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == s.Table.Name }) {
		return false, nil
	}
	sets, err := n.NFT.GetSets(s.Table)
	if err != nil {
		return false, fmt.Errorf("list sets of %s: %w", s.Table.Name, err)
	}
	return slices.ContainsFunc(sets, func(x *nftables.Set) bool { return x.Name == s.Name }), nil
}

func comment(note string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, "vnet-cni: "+note)
}

// RuleKey encodes a rule's expressions and its note canonically: the same
// for a rule as built and as read back from the kernel.
func RuleKey(fam nftables.TableFamily, r Rule) (string, error) {
	return ruleKey(fam, r.Exprs, comment(r.Note))
}

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
