package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vnet-cni/vnet-cni/integration/probe"
)

// expect dials and checks who answered and which source address it saw
// (any of wantSeen).
func expect(ctx context.Context, nsPath string, dst netip.AddrPort, wantName string, wantSeen ...netip.Addr) (probe.Answer, error) {
	a, err := probe.Dial(ctx, nsPath, dst)
	if err != nil {
		return a, err
	}
	if a.Name != wantName {
		return a, fmt.Errorf("answered by %s, want %s", a.Name, wantName)
	}
	for _, w := range wantSeen {
		if a.Seen == w {
			return a, nil
		}
	}
	return a, errors.New("source " + a.Seen.String() + " arrived, want " + joinAddrs(wantSeen, " or "))
}

func joinAddrs(as []netip.Addr, sep string) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, sep)
}
