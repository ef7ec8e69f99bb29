package arm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// TestConcurrentWritersNeverShareAnAddress: two writers update their NICs
// at the same time, with Dynamic ipConfigurations and the same contested
// Static addresses, while a reader watches the committed and reserved
// state. No address is ever held twice, and each contested address is won
// by exactly one writer.
func TestConcurrentWritersNeverShareAnAddress(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	const rounds = 8
	contested := func(i int) string { return fmt.Sprintf("10.0.0.%d", 200+i) }

	var watchErr error
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for ctx.Err() == nil {
			if err := checkUnique(e.s); err != nil {
				watchErr = err
				return
			}
		}
	}()

	wins := make([][]bool, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for w, name := range []string{"node-0", "node-1"} {
		wins[w] = make([]bool, rounds)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				won, err := writeRound(ctx, e, name, i, contested(i))
				if err != nil {
					errs[w] = fmt.Errorf("%s round %d: %w", name, i, err)
					return
				}
				wins[w][i] = won
			}
		}()
	}
	wg.Wait()
	cancel()
	<-watchDone
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if watchErr != nil {
		t.Fatal(watchErr)
	}
	if err := checkUnique(e.s); err != nil {
		t.Fatal(err)
	}
	for i := range rounds {
		if wins[0][i] == wins[1][i] {
			t.Errorf("round %d: contested address won by both or neither (%v, %v)", i, wins[0][i], wins[1][i])
		}
	}
}

// writeRound adds two Dynamic ipConfigurations and tries to take the
// contested Static address; every third round it drops its oldest
// secondary. It reports whether it got the contested address.
func writeRound(ctx context.Context, e *env, name string, i int, contested string) (bool, error) {
	cur, err := e.nics.Get(ctx, testRG, name, nil)
	if err != nil {
		return false, err
	}
	var cfgs []*armnetwork.InterfaceIPConfiguration
	for j, c := range cur.Properties.IPConfigurations {
		if i%3 == 2 && j == 1 {
			continue
		}
		cfgs = append(cfgs, ipc(*c.Name, "", *c.Properties.Primary))
	}
	cfgs = append(cfgs, ipc(fmt.Sprintf("d%da", i), "", false), ipc(fmt.Sprintf("d%db", i), "", false))
	_, err = e.putNIC(ctx, name, nicBody(append(cfgs, ipc(fmt.Sprintf("s%d", i), contested, false))...))
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && re.ErrorCode == CodeAddressIsAllocated {
		_, err = e.putNIC(ctx, name, nicBody(cfgs...))
		return false, err
	}
	return err == nil, err
}

// checkUnique fails when an address is held twice, committed or reserved.
func checkUnique(s *Server) error {
	snap := s.Snapshot()
	seen := map[netip.Addr]string{}
	for _, n := range snap.NICs {
		for _, a := range append([]netip.Addr{n.Primary}, n.Secondary...) {
			if other, dup := seen[a]; dup {
				return fmt.Errorf("committed address %s on %s and %s", a, other, n.Name)
			}
			seen[a] = n.Name
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	held := map[netip.Addr]string{}
	for _, n := range s.nics {
		mine := map[netip.Addr]bool{}
		for _, c := range n.state.ipConfigs {
			mine[c.addr] = true
		}
		if n.pending != nil {
			for _, c := range n.pending.target.ipConfigs {
				mine[c.addr] = true
			}
		}
		for a := range mine {
			if other, dup := held[a]; dup {
				return fmt.Errorf("address %s held by %s and %s", a, other, n.name)
			}
			held[a] = n.name
		}
	}
	return nil
}
