package routecontroller

import (
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
)

// routeOf is the route node wants: its first IPv4 pod CIDR via its first
// IPv4 InternalIP. Either is left invalid when the Node has none (or an
// unparsable one); the Reconciler rejects the route then, with the reason.
func routeOf(n *corev1.Node) routetable.Route {
	r := routetable.Route{Node: n.Name}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			r.Prefix = p
			break
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			r.NextHop = ip
			break
		}
	}
	return r
}

// reporter turns a round's rejected and over-limit nodes into Warning
// Events on their Nodes: one when the condition begins or its message
// changes, then at most one per interval while it lasts. Used by one
// term's loop only.
type reporter struct {
	recorder record.EventRecorder
	interval time.Duration
	last     map[eventKey]sent
}

type eventKey struct{ node, reason string }

type sent struct {
	at      time.Time
	message string
}

func newReporter(recorder record.EventRecorder, interval time.Duration) *reporter {
	return &reporter{recorder: recorder, interval: interval, last: map[eventKey]sent{}}
}

func (r *reporter) report(now time.Time, nodes cache.Store, res routetable.Result) {
	active := map[eventKey]string{}
	for node, why := range res.Rejected {
		active[eventKey{node, ReasonRejected}] = "the node's route is not programmed: " + why
	}
	for _, node := range res.OverLimit {
		active[eventKey{node, ReasonLimitReached}] = "the route table has no room for the node's route (its limit of routes is reached): " +
			"its pod CIDR is not routed in the virtual network"
	}
	for k, msg := range active {
		if l, ok := r.last[k]; ok && l.message == msg && now.Sub(l.at) < r.interval {
			continue
		}
		ref := nodeRef(nodes, k.node)
		if ref == nil {
			continue
		}
		r.recorder.Event(ref, corev1.EventTypeWarning, k.reason, msg)
		r.last[k] = sent{at: now, message: msg}
	}
	for k, l := range r.last {
		if _, ok := active[k]; !ok && now.Sub(l.at) >= r.interval {
			delete(r.last, k)
		}
	}
}

// nodeRef is the reference of the cached Node named name, nil when the
// cache does not hold it.
func nodeRef(nodes cache.Store, name string) *corev1.ObjectReference {
	obj, ok, err := nodes.GetByKey(name)
	if err != nil || !ok {
		return nil
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil
	}
	return &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID}
}
