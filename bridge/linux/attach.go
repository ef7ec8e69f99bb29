package linux

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The lifecycle of ADD, the same in every mode: Prepare starts the pod's
// veth pair and opens (and sets up) the node in the background before the
// address is known; Complete collects that work, sets the node up again
// when the mode needs it, and adds the pod; Abort removes what exists;
// Close releases the node. The modes say how their node is opened and set
// up, when Complete must set it up again, and how the pod is added.

// AttachNode is what the lifecycle needs of a mode's node.
type AttachNode interface {
	comparable
	// DelPod removes what exists of an attachment, for Abort.
	DelPod(ctx context.Context, ref PodRef) error
	Close() error
}

// EnsureFunc sets a mode's node up as the attachment wants it.
type EnsureFunc[N AttachNode] func(ctx context.Context, n N) error

// Attachment is one pod's attachment while ADD runs, over a mode's node N.
type Attachment[N AttachNode] struct {
	nodeNS  string
	veth    VethRequest
	managed bool
	open    func() (N, error)
	// ready delivers the background work Prepare started; nil when nothing
	// was started.
	ready     chan prepared[N]
	collected bool
	early     Prepared
	// node is where the node is now: opened, set up, or why not.
	node     nodeState[N]
	vethMade bool
	ip       netip.Addr
	steps    Steps
}

// nodeState is a node opened and set up, or why not, with the time each
// step took.
type nodeState[N AttachNode] struct {
	node         N
	err          error
	open, ensure time.Duration
}

// prepared is what the background work delivers: the node and whether the
// veth pair was made.
type prepared[N AttachNode] struct {
	node nodeState[N]
	veth bool
}

// Prepared is what the work Prepare started reached.
type Prepared struct {
	// Started says that Prepare started work (the request had the VNet's
	// address space).
	Started bool
	// Opened says that the node is open.
	Opened bool
	// Err says why the node could not be opened or set up.
	Err error
}

// NewAttachment is an attachment whose pod's veth is veth, on the node at
// nodeNS ("" is the caller's namespace) that open opens. managed says that
// vnet-ipamd keeps the node's datapath: Prepare then only opens the node,
// and AddPod sets it up when the pod cannot be added without it.
func NewAttachment[N AttachNode](nodeNS string, veth VethRequest, managed bool, open func() (N, error)) *Attachment[N] {
	return &Attachment[N]{nodeNS: nodeNS, veth: veth, managed: managed, open: open}
}

// Prepare starts, in the background and bounded by ctx, the pod's veth pair
// (see PrepareVeth) and the node: opened and, unless managed, set up with
// what early returns for it (nil: left as it is).
func (a *Attachment[N]) Prepare(ctx context.Context, early func(n N) EnsureFunc[N]) {
	a.ready = make(chan prepared[N], 1)
	go func() {
		veth := make(chan bool, 1)
		go func() {
			ok, _ := PrepareVeth(a.nodeNS, a.veth)
			veth <- ok
		}()
		s := a.openNode()
		if s.err == nil && !a.managed {
			if ensure := early(s.node); ensure != nil {
				s = ensureNode(ctx, s, ensure)
			}
		}
		a.ready <- prepared[N]{node: s, veth: <-veth}
	}()
}

// Collect waits for the work Prepare started and reports what it reached.
func (a *Attachment[N]) Collect() Prepared {
	if a.collected {
		return a.early
	}
	a.collected = true
	if a.ready == nil {
		return a.early
	}
	p := <-a.ready
	a.node, a.vethMade = p.node, p.veth
	var zero N
	a.early = Prepared{Started: true, Opened: a.node.node != zero, Err: a.node.err}
	return a.early
}

// Reopen closes the node, if open, and opens it again.
func (a *Attachment[N]) Reopen() {
	_ = a.closeNode() // opened again just below
	a.node = a.openNode()
}

// Ensure sets the open node up with ensure; it does nothing when the node
// is not open.
func (a *Attachment[N]) Ensure(ctx context.Context, ensure EnsureFunc[N]) {
	var zero N
	if a.node.node != zero {
		a.node = ensureNode(ctx, a.node, ensure)
	}
}

// Ready records the node's timings in Steps and returns why it could not be
// opened or set up.
func (a *Attachment[N]) Ready() error {
	a.steps.NodeOpen, a.steps.EnsureNode, a.steps.NodeReady = a.node.open, a.node.ensure, time.Now()
	return a.node.err
}

// AddPod adds the pod with address ip to the node, which Ready found
// ready, with add (again false). When the node is managed and add fails
// with notReady (vnet-ipamd is repairing the node, or has not set it up
// yet), it sets the node up here once with ensure, as an unmanaged ADD
// does, and calls add again (again true).
func (a *Attachment[N]) AddPod(ctx context.Context, ip netip.Addr, notReady error, ensure EnsureFunc[N],
	add func(ctx context.Context, n N, again bool) (PodResult, error),
) (PodResult, error) {
	a.ip = ip
	start := time.Now()
	res, err := add(ctx, a.node.node, false)
	if errors.Is(err, notReady) && a.managed {
		s := ensureNode(ctx, nodeState[N]{node: a.node.node}, ensure)
		a.steps.EnsureNode = s.ensure
		if s.err != nil {
			return PodResult{}, s.err
		}
		res, err = add(ctx, a.node.node, true)
	}
	a.steps.AddPod = time.Since(start)
	return res, err
}

// Steps reports the timings of the work done so far.
func (a *Attachment[N]) Steps() Steps { return a.steps }

// Abort removes what exists of the attachment: the prepared veth pair, or
// the pod that AddPod built (in part or in full). It waits for the work
// Prepare started; ctx bounds the removal.
func (a *Attachment[N]) Abort(ctx context.Context) error {
	a.Collect()
	if !a.vethMade && !a.ip.IsValid() {
		return nil
	}
	var zero N
	if a.node.node == zero {
		n, err := a.open()
		if err != nil {
			return err
		}
		a.node.node = n
	}
	return a.node.node.DelPod(ctx, PodRef{ContainerID: a.veth.ContainerID, IfName: a.veth.IfName, NetNS: a.veth.NetNS, IP: a.ip})
}

// Close releases the node, waiting for the work Prepare started.
func (a *Attachment[N]) Close() error {
	a.Collect()
	return a.closeNode()
}

func (a *Attachment[N]) closeNode() error {
	var zero N
	if a.node.node == zero {
		return nil
	}
	err := a.node.node.Close()
	a.node.node = zero
	return err
}

// openNode opens the node, timed.
func (a *Attachment[N]) openNode() nodeState[N] {
	start := time.Now()
	n, err := a.open()
	if err != nil {
		return nodeState[N]{err: fmt.Errorf("%w: %w", ErrNodeSetup, err)}
	}
	return nodeState[N]{node: n, open: time.Since(start)}
}

// ensureNode sets up the node s has opened with ensure, timed.
func ensureNode[N AttachNode](ctx context.Context, s nodeState[N], ensure EnsureFunc[N]) nodeState[N] {
	start := time.Now()
	err := ensure(ctx, s.node)
	s.ensure = time.Since(start)
	s.err = nil
	if err != nil {
		s.err = fmt.Errorf("%w: %w", ErrNodeSetup, err)
	}
	return s
}
