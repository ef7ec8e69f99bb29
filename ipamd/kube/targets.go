// Package kube is vnet-ipamd's side of the Kubernetes API: an informer on
// its own Node (the pool's maxIPs defaults to the node's allocatable pods),
// Events on the Node about the pool, and the node's VNetNode object
// (vnetnodes.vnet-cni.io): overrides of the pool targets in its spec,
// applied at run time, and the pool in its status.
//
// Nothing here is on the path of ADD or DEL: the daemon serves pods from
// its store whether the API server answers or not.
package kube

import (
	"errors"
	"fmt"

	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

// What set the pool's targets (daemon.Report.TargetsFrom, the status's
// pool.maxFrom, the pool_ceiling metric's label).
const (
	// FromConfig: the configuration file sets maxIPs.
	FromConfig = "config"
	// FromNode: maxIPs is the node's allocatable pods.
	FromNode = "node"
	// FromVNetNode: the VNetNode's spec overrides one of the targets.
	FromVNetNode = "vnetnode"
	// FromDefault: maxIPs is to come from the node, which is not known
	// (yet): the fallback applies.
	FromDefault = "default"
)

// MaxAddresses bounds maxIPs, batchSize and the targets, as the
// configuration does.
const MaxAddresses = 1024

// Overrides are the VNetNode's spec: each set field replaces the
// configuration's value.
type Overrides struct {
	WarmIPTarget *int `json:"warmIPTarget,omitempty"`
	MinIPTarget  *int `json:"minIPTarget,omitempty"`
	MaxIPs       *int `json:"maxIPs,omitempty"`
	BatchSize    *int `json:"batchSize,omitempty"`
}

// empty reports whether no field is set.
func (o Overrides) empty() bool {
	return o.WarmIPTarget == nil && o.MinIPTarget == nil && o.MaxIPs == nil && o.BatchSize == nil
}

// Compose returns the pool targets in effect and what set them, from the
// configuration's targets (base, whose MaxIPs 0 means "the node's"), the
// node's allocatable pods (0: unknown), the fallback maxIPs for when the
// node is unknown, and the VNetNode's overrides. Without overrides, the
// warm and minimum targets are lowered to a maxIPs that came from the
// node, so a small node is full rather than misconfigured. Overrides that
// make the targets invalid (warmIPTarget above maxIPs, say) are refused:
// the targets without them are returned, with the error.
func Compose(base pool.Targets, allocatable, fallback int, o Overrides) (pool.Targets, string, error) {
	t, from := base, FromConfig
	if t.MaxIPs <= 0 {
		t.MaxIPs, from = fallback, FromDefault
		if allocatable > 0 {
			t.MaxIPs, from = min(allocatable, MaxAddresses), FromNode
		}
		t.WarmIPTarget = min(t.WarmIPTarget, t.MaxIPs)
		t.MinIPTarget = min(t.MinIPTarget, t.MaxIPs)
	}
	if o.empty() {
		return t, from, nil
	}
	ot := base
	if ot.MaxIPs <= 0 {
		ot.MaxIPs = t.MaxIPs
	}
	set := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	set(&ot.WarmIPTarget, o.WarmIPTarget)
	set(&ot.MinIPTarget, o.MinIPTarget)
	set(&ot.MaxIPs, o.MaxIPs)
	set(&ot.BatchSize, o.BatchSize)
	if err := validate(ot); err != nil {
		return t, from, fmt.Errorf("overrides refused: %w", err)
	}
	return ot, FromVNetNode, nil
}

// validate checks composed targets as the configuration checks its own.
func validate(t pool.Targets) error {
	var errs []error
	check := func(name string, v, lo, hi int, why string) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("%s %d out of range %d..%d%s", name, v, lo, hi, why))
		}
	}
	check("maxIPs", t.MaxIPs, 1, MaxAddresses, "")
	upper := max(t.MaxIPs, 1)
	check("warmIPTarget", t.WarmIPTarget, 0, upper, " (maxIPs)")
	check("minIPTarget", t.MinIPTarget, 0, upper, " (maxIPs)")
	check("batchSize", t.BatchSize, 1, MaxAddresses, "")
	return errors.Join(errs...)
}
