package kube

import (
	"strings"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/noderoute"
	"github.com/vnet-cni/vnet-cni/ipamd/podcidr"
)

// The VNetNode resource (manifests/crds/vnetnodes.vnet-cni.io.yaml):
// cluster-scoped, one per node, named like the node.
var VNetNodes = schema.GroupVersionResource{Group: "vnet-cni.io", Version: "v1alpha1", Resource: "vnetnodes"}

// Kind and APIVersion of the VNetNode objects.
const (
	Kind       = "VNetNode"
	APIVersion = "vnet-cni.io/v1alpha1"
)

// VNetNode is the per-node object, written by hand (no code generator):
// the daemon reads spec and writes status.
type VNetNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              Overrides      `json:"spec,omitempty"`
	Status            VNetNodeStatus `json:"status,omitempty"`
}

// VNetNodeStatus is the pool as the daemon last reported it. Every field is
// written on every status write (a merge patch of the whole status), so a
// field that became empty is cleared.
type VNetNodeStatus struct {
	// Ready is the daemon's readiness (ADD can succeed); Reason says why not.
	Ready  bool   `json:"ready"`
	Reason string `json:"reason"`
	// The addresses of the pool by state.
	Free        int `json:"free"`
	Assigned    int `json:"assigned"`
	Cooling     int `json:"cooling"`
	Releasing   int `json:"releasing"`
	Quarantined int `json:"quarantined"`
	// The targets in effect: MaxIPs is the pool's ceiling (maxIPs within the
	// provider's limit), TargetsFrom what set them (config, node, vnetnode,
	// default).
	MaxIPs       int    `json:"maxIPs"`
	WarmIPTarget int    `json:"warmIPTarget"`
	MinIPTarget  int    `json:"minIPTarget"`
	BatchSize    int    `json:"batchSize"`
	TargetsFrom  string `json:"targetsFrom"`
	LimitReached bool   `json:"limitReached"`
	// NICs are the short names of the interfaces (an Azure NIC's name, an
	// ENI's ID), primary first, comma-separated; Interfaces their full IDs.
	NICs       string   `json:"nics"`
	Interfaces []string `json:"interfaces"`
	// LastCloudError is the last cloud error since the daemon started,
	// kept after a success (Active false); null when none.
	LastCloudError *CloudErrorStatus `json:"lastCloudError"`
	// ObservedGeneration is the spec's generation the daemon applied (or
	// refused, saying why in OverrideError, null when none).
	ObservedGeneration int64   `json:"observedGeneration"`
	OverrideError      *string `json:"overrideError"`
	// Route is the node's route in kubenet mode (absent in the other
	// modes), as the Node's NetworkUnavailable condition says it.
	Route *RouteStatus `json:"route,omitempty"`
}

// RouteStatus is the node's route in the VNet's route table (kubenet).
type RouteStatus struct {
	// PodCIDR via NextHop (the node's address) is the route.
	PodCIDR string `json:"podCIDR"`
	NextHop string `json:"nextHop"`
	// Available is true once the route is effective in the VNet; the
	// node's pods are held back until then. Reason (RouteCreated,
	// RouteNotEffective, RouteLimitReached, PodCIDRRejected,
	// IPForwardingNotEnabled, RouteError) and Message say more.
	Available bool        `json:"available"`
	Reason    string      `json:"reason"`
	Message   string      `json:"message"`
	Since     metav1.Time `json:"since"`
}

// maxStatusMessage is the CRD's maxLength of a message in the status: a
// longer one would make the API server refuse the whole status.
const maxStatusMessage = 1024

// boundMessage cuts msg to maxStatusMessage bytes (so as many characters
// at most), at a character's boundary.
func boundMessage(msg string) string {
	if len(msg) <= maxStatusMessage {
		return msg
	}
	cut := maxStatusMessage
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut]
}

// routeStatusOf is the status of the node's route state.
func routeStatusOf(st noderoute.State) *RouteStatus {
	r := &RouteStatus{Available: st.Available, Reason: st.Reason, Message: boundMessage(st.Message), Since: metav1.NewTime(st.Since.Truncate(time.Second))}
	if st.PodCIDR.IsValid() {
		r.PodCIDR = st.PodCIDR.String()
	}
	if st.NextHop.IsValid() {
		r.NextHop = st.NextHop.String()
	}
	return r
}

// CloudErrorStatus is a cloud error in the status.
type CloudErrorStatus struct {
	// Reason is the error's kind: SubnetFull, NICLimit, InterfaceLimit,
	// Throttled, Denied, Conflict, AddressInUse, Transient or Fatal.
	Reason  string      `json:"reason"`
	Message string      `json:"message"`
	Time    metav1.Time `json:"time"`
	Active  bool        `json:"active"`
}

// reasons names the cloud error kinds in status and Events.
var reasons = map[cloud.Kind]string{
	cloud.Fatal: "Fatal", cloud.Transient: "Transient", cloud.Throttled: "Throttled",
	cloud.SubnetFull: "SubnetFull", cloud.NICLimit: "NICLimit", cloud.Conflict: "Conflict",
	cloud.AddressInUse: "AddressInUse", cloud.Denied: "Denied", cloud.InterfaceLimit: "InterfaceLimit",
}

// statusOf is the VNetNode status for a daemon report, the spec generation
// seen and the refusal of its overrides (nil: none).
func statusOf(r daemon.Report, generation int64, overrideErr error) VNetNodeStatus {
	s := VNetNodeStatus{
		Ready: r.Ready, Free: r.Counts.Free, Assigned: r.Counts.Assigned, Cooling: r.Counts.Cooling,
		Releasing: r.Counts.Releasing, Quarantined: r.Counts.Quarantined,
		MaxIPs: r.Ceiling, WarmIPTarget: r.Targets.WarmIPTarget, MinIPTarget: r.Targets.MinIPTarget,
		BatchSize: r.Targets.BatchSize, TargetsFrom: r.TargetsFrom, LimitReached: r.LimitReached,
		Interfaces: append([]string{}, r.Interfaces...), ObservedGeneration: generation,
	}
	if !r.Ready {
		s.Reason = r.Reason
	}
	names := make([]string, len(r.Interfaces))
	for i, id := range r.Interfaces {
		if cidr, ok := strings.CutPrefix(id, podcidr.InterfacePrefix); ok {
			// Kubenet: the pool's interface is the pod CIDR.
			names[i] = cidr
			continue
		}
		names[i] = id[strings.LastIndexByte(id, '/')+1:]
	}
	s.NICs = strings.Join(names, ",")
	if e := r.CloudError; e != nil {
		s.LastCloudError = &CloudErrorStatus{Reason: reasons[e.Kind], Message: boundMessage(e.Message),
			Time: metav1.NewTime(e.At.Truncate(time.Second)), Active: e.Active}
	}
	if overrideErr != nil {
		msg := overrideErr.Error()
		s.OverrideError = &msg
	}
	return s
}
