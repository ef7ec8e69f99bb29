package linux

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
)

// TestDiffAndMerge checks the element maths of the reconciler without root:
// what an intact set gets added and deleted, and what a rebuilt one holds.
func TestDiffAndMerge(t *testing.T) {
	m := &nftables.Set{Name: "pods", IsMap: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeEtherAddr}
	el := func(k byte, v ...byte) nftables.SetElement {
		e := nftables.SetElement{Key: []byte{10, 0, 0, k}}
		if len(v) > 0 {
			e.Val = append([]byte{2, 0, 0, 0, 0}, v...)
		}
		return e
	}
	padded := func(e nftables.SetElement) nftables.SetElement {
		e.Val = append(e.Val, 0, 0) // as the kernel reports a map value
		return e
	}
	have := []nftables.SetElement{padded(el(1, 1)), padded(el(2, 2)), padded(el(3, 3))}
	given := []nftables.SetElement{el(1, 1), el(2, 9), el(4, 4)}
	tests := []struct {
		name             string
		exact            bool
		wantAdd, wantDel []nftables.SetElement
		wantMerged       []nftables.SetElement
	}{
		{"added to the registered ones", false,
			[]nftables.SetElement{el(2, 9), el(4, 4)}, []nftables.SetElement{{Key: el(2).Key}},
			[]nftables.SetElement{el(1, 1), el(2, 9), el(4, 4), el(3, 3)}},
		{"the complete list", true,
			[]nftables.SetElement{el(2, 9), el(4, 4)}, []nftables.SetElement{{Key: el(2).Key}, {Key: el(3).Key}},
			[]nftables.SetElement{el(1, 1), el(2, 9), el(4, 4)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			add, del := diff(m, have, given, tc.exact)
			if d := cmp.Diff(tc.wantAdd, add); d != "" {
				t.Errorf("add (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantDel, del); d != "" {
				t.Errorf("delete (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.wantMerged, merge(m, have, given, tc.exact)); d != "" {
				t.Errorf("rebuilt set (-want +got):\n%s", d)
			}
		})
	}
	if add, del := diff(m, have, []nftables.SetElement{el(1, 1), el(3, 3)}, false); len(add)+len(del) != 0 {
		t.Errorf("registered elements: add %v delete %v, want nothing", add, del)
	}
}
