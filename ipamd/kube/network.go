package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/noderoute"
)

// Kubenet mode's part of the agent: the node's pod CIDR and address from
// its Node, and the Node's NetworkUnavailable condition from the node's
// route (noderoute), which the node lifecycle controller turns into the
// node.kubernetes.io/network-unavailable taint.

// Reasons of the Events about the pod CIDR.
const (
	ReasonPodCIDRMissing  = "PodCIDRMissing"
	ReasonPodCIDRRejected = "PodCIDRRejected"
)

// nodeNetwork is what the Node says of the node's network.
type nodeNetwork struct {
	known      bool
	podCIDRs   []string
	internalIP string
}

func networkOf(n *corev1.Node) nodeNetwork {
	nn := nodeNetwork{known: true, podCIDRs: n.Spec.PodCIDRs}
	if len(nn.podCIDRs) == 0 && n.Spec.PodCIDR != "" {
		nn.podCIDRs = []string{n.Spec.PodCIDR}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && nn.internalIP == "" {
			if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
				nn.internalIP = a.Address
			}
		}
	}
	return nn
}

// PodCIDR returns the node's IPv4 pod CIDR from its Node, checked against
// the cluster CIDR. The daemon calls it when it connects: an error keeps it
// not ready and is retried. A Node without a pod CIDR, or with one that is
// not the cluster's, gets a Warning Event as well.
func (a *Agent) PodCIDR(cluster netip.Prefix) (netip.Prefix, error) {
	a.mu.Lock()
	nn := a.network
	a.mu.Unlock()
	if !nn.known {
		return netip.Prefix{}, &cloud.Error{Kind: cloud.Transient, Op: "read the Node's pod CIDR",
			Err: fmt.Errorf("waiting for the Kubernetes Node %s (its spec.podCIDRs)", a.opts.NodeName)}
	}
	p, err := podCIDROf(nn, cluster)
	if err != nil {
		reason := ReasonPodCIDRRejected
		if len(nn.podCIDRs) == 0 {
			reason = ReasonPodCIDRMissing
		}
		a.podCIDREvent(reason, err.Error())
		return netip.Prefix{}, &cloud.Error{Kind: cloud.Transient, Op: "read the Node's pod CIDR", Code: reason, Err: err}
	}
	return p, nil
}

// podCIDREvent sends a Warning Event about the pod CIDR, at most one per
// reason and message every EventInterval.
func (a *Agent) podCIDREvent(reason, msg string) {
	a.mu.Lock()
	key := reason + "\x00" + msg
	last, seen := a.cidrEvents[key]
	now := time.Now()
	send := !seen || now.Sub(last) >= a.opts.EventInterval
	if send {
		if a.cidrEvents == nil {
			a.cidrEvents = map[string]time.Time{}
		}
		a.cidrEvents[key] = now
	}
	a.mu.Unlock()
	if send {
		a.log.Error("the node's pod CIDR is not usable: kubenet mode cannot start its pods", "node", a.opts.NodeName, "reason", reason, "err", msg)
		a.event(corev1.EventTypeWarning, reason, msg)
	}
}

func podCIDROf(nn nodeNetwork, cluster netip.Prefix) (netip.Prefix, error) {
	if len(nn.podCIDRs) == 0 {
		return netip.Prefix{}, errors.New("the Node has no spec.podCIDRs: kubenet mode needs kube-controller-manager's --allocate-node-cidrs (or a pod CIDR set on the Node)")
	}
	for _, s := range nn.podCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("the Node's pod CIDR %q does not parse: %w", s, err)
		}
		if !p.Addr().Is4() {
			continue
		}
		switch {
		case p.Masked() != p:
			return netip.Prefix{}, fmt.Errorf("the Node's pod CIDR %s is not a network address", p)
		case p.Bits() < cluster.Bits() || !cluster.Contains(p.Addr()):
			return netip.Prefix{}, fmt.Errorf("the Node's pod CIDR %s is outside the cluster CIDR %s (kubenet.clusterCIDR): no route is programmed for it", p, cluster)
		case p.Bits() > 29:
			return netip.Prefix{}, fmt.Errorf("the Node's pod CIDR %s is smaller than a /29", p)
		}
		return p, nil
	}
	return netip.Prefix{}, fmt.Errorf("the Node's pod CIDRs %v have no IPv4 network", nn.podCIDRs)
}

// NetworkState sets the Node's NetworkUnavailable condition from the
// node's route (noderoute.Reporter): False with RouteCreated once the
// route is effective, True with the reason otherwise. The condition is
// written by Run, again until it is written; the reasons that need an
// operator are Events as well.
func (a *Agent) NetworkState(st noderoute.State) {
	a.mu.Lock()
	a.netState = &st
	a.mu.Unlock()
	switch st.Reason {
	case noderoute.ReasonRouteLimitReached, noderoute.ReasonPodCIDRRejected, noderoute.ReasonIPForwardingOff:
		a.event(corev1.EventTypeWarning, st.Reason, st.Message)
	case noderoute.ReasonRouteCreated:
		a.event(corev1.EventTypeNormal, st.Reason, st.Message)
	}
	select {
	case a.netKick <- struct{}{}:
	default:
	}
	// The VNetNode's status shows it too.
	a.kick()
}

// reportNetwork writes the NetworkUnavailable condition whenever it
// changed and until the write succeeded, until ctx is done.
func (a *Agent) reportNetwork(ctx context.Context) {
	var written *noderoute.State
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.netKick:
		case <-retry.C:
		}
		a.mu.Lock()
		st := a.netState
		a.mu.Unlock()
		if st == nil || (written != nil && written.Available == st.Available && written.Reason == st.Reason && written.Message == st.Message) {
			continue
		}
		if err := a.patchCondition(ctx, *st); err != nil {
			a.log.Warn("write the Node's NetworkUnavailable condition; trying again", "node", a.opts.NodeName, "err", err)
			resetTimer(retry, 2*time.Second)
			continue
		}
		a.log.Info("wrote the Node's NetworkUnavailable condition", "node", a.opts.NodeName, "unavailable", !st.Available, "reason", st.Reason)
		written = st
	}
}

func (a *Agent) patchCondition(ctx context.Context, st noderoute.State) error {
	status := corev1.ConditionTrue
	if st.Available {
		status = corev1.ConditionFalse
	}
	now := metav1.NewTime(time.Now())
	since := metav1.NewTime(st.Since)
	cond := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: status, Reason: st.Reason, Message: st.Message,
		LastHeartbeatTime: now, LastTransitionTime: since,
	}
	data, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.opts.CallTimeout)
	defer cancel()
	// Conditions merge by type in a strategic merge patch: the others
	// (kubelet's Ready, MemoryPressure...) stay.
	err = a.core.Patch(types.StrategicMergePatchType).Resource("nodes").Name(a.opts.NodeName).
		SubResource("status").Body(data).Do(ctx).Error()
	if err != nil {
		return fmt.Errorf("patch node %s status: %w", a.opts.NodeName, err)
	}
	return nil
}

// NodeIP returns the Node's InternalIP, invalid when the Node has none.
func (a *Agent) NodeIP() netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	ip, _ := netip.ParseAddr(a.network.internalIP)
	return ip
}
