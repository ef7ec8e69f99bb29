package cloud

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestKindString(t *testing.T) {
	seen := map[string]Kind{}
	for _, tc := range []struct {
		kind Kind
		want string
	}{
		{Fatal, "fatal"},
		{Transient, "transient"},
		{Throttled, "throttled"},
		{SubnetFull, "subnet_full"},
		{NICLimit, "nic_limit"},
		{Conflict, "conflict"},
		{AddressInUse, "address_in_use"},
		{Denied, "denied"},
		{InterfaceLimit, "interface_limit"},
		{Kind(99), "kind(99)"},
	} {
		if got := tc.kind.String(); got != tc.want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(tc.kind), got, tc.want)
		}
		if k, dup := seen[tc.want]; dup {
			t.Errorf("kinds %d and %d share the name %q", k, tc.kind, tc.want)
		}
		seen[tc.want] = tc.kind
	}
}

func TestKindOfAndRetryAfter(t *testing.T) {
	ce := &Error{Kind: InterfaceLimit, Op: "AttachNetworkInterface", Code: "AttachmentLimitExceeded", RetryAfter: time.Second}
	wrapped := fmt.Errorf("add interface: %w", ce)
	if got := KindOf(wrapped); got != InterfaceLimit {
		t.Errorf("KindOf(wrapped) = %s, want interface_limit", got)
	}
	if got := RetryAfterOf(wrapped); got != time.Second {
		t.Errorf("RetryAfterOf(wrapped) = %s, want 1s", got)
	}
	if got := KindOf(errors.New("plain")); got != Transient {
		t.Errorf("KindOf(plain) = %s, want transient", got)
	}
}
