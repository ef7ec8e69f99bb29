package linux

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// fakeNode records what the lifecycle does to a mode's node.
type fakeNode struct {
	closed int
	dels   []PodRef
}

func (n *fakeNode) DelPod(_ context.Context, ref PodRef) error {
	n.dels = append(n.dels, ref)
	return nil
}

func (n *fakeNode) Close() error {
	n.closed++
	return nil
}

var errNotReady = errors.New("not ready")

// TestAttachmentLifecycle drives Complete's building blocks without
// Prepare (no veth, no kernel): the managed retry, the error wrapping and
// Abort's removal.
func TestAttachmentLifecycle(t *testing.T) {
	ctx := context.Background()
	ip := netip.MustParseAddr("10.0.0.5")
	veth := VethRequest{ContainerID: "c1", IfName: "eth0", NetNS: "/run/netns/p"}
	for _, tc := range []struct {
		name      string
		managed   bool
		ensureErr error
		addErrs   []error
		// wantAdds and wantEnsures count the calls of add and ensure,
		// wantErr is what AddPod returns.
		wantAdds, wantEnsures int
		wantErr               error
	}{
		{name: "added", addErrs: []error{nil}, wantAdds: 1},
		{name: "managed retry", managed: true, addErrs: []error{errNotReady, nil}, wantAdds: 2, wantEnsures: 1},
		{name: "unmanaged no retry", addErrs: []error{errNotReady}, wantAdds: 1, wantErr: errNotReady},
		{name: "managed retry fails to set up", managed: true, ensureErr: errors.New("boom"),
			addErrs: []error{errNotReady}, wantAdds: 1, wantEnsures: 1, wantErr: ErrNodeSetup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := &fakeNode{}
			opens := 0
			a := NewAttachment(t.TempDir(), veth, tc.managed, func() (*fakeNode, error) {
				opens++
				return node, nil
			})
			ensures := 0
			ensure := func(context.Context, *fakeNode) error {
				ensures++
				return tc.ensureErr
			}
			if p := a.Collect(); p.Started || p.Opened || p.Err != nil {
				t.Fatalf("Collect without Prepare = %+v, want zero", p)
			}
			a.Reopen()
			if err := a.Ready(); err != nil {
				t.Fatalf("Ready: %v", err)
			}
			var calls []bool
			_, err := a.AddPod(ctx, ip, errNotReady, ensure, func(_ context.Context, n *fakeNode, again bool) (PodResult, error) {
				if n != node {
					t.Errorf("add got node %p, want %p", n, node)
				}
				calls = append(calls, again)
				return PodResult{}, tc.addErrs[len(calls)-1]
			})
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Errorf("AddPod = %v, want %v", err, tc.wantErr)
			}
			if len(calls) != tc.wantAdds || len(calls) == 2 && (calls[0] || !calls[1]) {
				t.Errorf("add calls (again) = %v, want %d", calls, tc.wantAdds)
			}
			if ensures != tc.wantEnsures {
				t.Errorf("ensure calls = %d, want %d", ensures, tc.wantEnsures)
			}
			if err := a.Abort(ctx); err != nil {
				t.Fatalf("Abort: %v", err)
			}
			want := PodRef{ContainerID: "c1", IfName: "eth0", NetNS: "/run/netns/p", IP: ip}
			if len(node.dels) != 1 || node.dels[0] != want {
				t.Errorf("DelPod calls = %+v, want one of %+v", node.dels, want)
			}
			if err := a.Close(); err != nil || node.closed != 1 || opens != 1 {
				t.Errorf("Close = %v with %d closes after %d opens, want one of each", err, node.closed, opens)
			}
		})
	}
}

// TestAttachmentOpenFails: a node that cannot be opened is ErrNodeSetup,
// Ensure does nothing on it, and Abort without a veth or an address does
// not open it again.
func TestAttachmentOpenFails(t *testing.T) {
	ctx := context.Background()
	errOpen := errors.New("no such namespace")
	opens := 0
	a := NewAttachment("", VethRequest{ContainerID: "c1", IfName: "eth0"}, false, func() (*fakeNode, error) {
		opens++
		return nil, errOpen
	})
	a.Collect()
	a.Reopen()
	a.Ensure(ctx, func(context.Context, *fakeNode) error {
		t.Error("Ensure ran on a node that is not open")
		return nil
	})
	if err := a.Ready(); !errors.Is(err, ErrNodeSetup) || !errors.Is(err, errOpen) {
		t.Errorf("Ready = %v, want ErrNodeSetup wrapping %v", err, errOpen)
	}
	if err := a.Abort(ctx); err != nil || opens != 1 {
		t.Errorf("Abort = %v after %d opens, want nil after 1", err, opens)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
}
