package aws

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/vnet-cni/vnet-cni/cloud"
	ec2sim "github.com/vnet-cni/vnet-cni/cloud/sim/ec2"
)

// ownTags are the tags vnet-cni puts on an ENI of instance in cluster c.
func ownTags(c, instance string, created time.Time) map[string]string {
	return map[string]string{TagCluster: c, TagInstance: instance, TagCreatedBy: createdBy, TagCreatedAt: created.UTC().Format(time.RFC3339)}
}

// TestAddInterface fills an m5.large's 3 ENI slots: two new ENIs at
// devices 1 and 2, tagged, attached with DeleteOnTermination, usable at
// once; the next one is refused with InterfaceLimit before any change.
func TestAddInterface(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	c := e.count("CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute", "DeleteNetworkInterface")
	var added []cloud.Interface
	for dev := 1; dev <= 2; dev++ {
		ifc, err := p.AddInterface(ctx)
		if err != nil {
			t.Fatalf("AddInterface %d: %v", dev, err)
		}
		if ifc.DeviceIndex != dev || ifc.Primary || ifc.SubnetID != mainSubnet || ifc.Gateway.String() != "10.0.0.1" || len(ifc.MAC) != 12 || len(ifc.Secondary) != 0 {
			t.Errorf("new interface %+v, want device %d in the main subnet with no secondary", ifc, dev)
		}
		eni := e.describe(t, ifc.ID)
		if eni.Attachment == nil || eni.Attachment.Status != types.AttachmentStatusAttached || !awssdk.ToBool(eni.Attachment.DeleteOnTermination) {
			t.Errorf("eni %s attachment %+v, want attached with DeleteOnTermination", ifc.ID, eni.Attachment)
		}
		tg := tags(eni)
		created, err := time.Parse(time.RFC3339, tg[TagCreatedAt])
		if tg[TagCluster] != cluster || tg[TagInstance] != node0 || tg[TagCreatedBy] != createdBy || err != nil || time.Since(created) > time.Minute {
			t.Errorf("eni %s tags %v", ifc.ID, tg)
		}
		added = append(added, ifc)
	}
	want := map[string]int{"CreateNetworkInterface": 2, "AttachNetworkInterface": 2, "ModifyNetworkInterfaceAttribute": 2, "DeleteNetworkInterface": 0}
	if got := c.since(); !mapsEqual(got, want) {
		t.Errorf("calls %v, want %v", got, want)
	}
	// The new ENIs take addresses; Instance lists all three.
	ips, err := p.AddAddresses(ctx, added[1].ID, 9)
	if err != nil {
		t.Fatal(err)
	}
	in, err := p.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Interfaces) != 3 || in.Interfaces[2].ID != added[1].ID || len(in.Interfaces[2].Secondary) != 9 || in.Limits.Interfaces != 3 {
		t.Fatalf("interfaces %+v limits %+v: want 3, the last with %v", in.Interfaces, in.Limits, ips)
	}

	c = e.count("CreateNetworkInterface", "AttachNetworkInterface")
	_, err = p.AddInterface(ctx)
	if cloud.KindOf(err) != cloud.InterfaceLimit {
		t.Fatalf("a 4th ENI on an m5.large: %v, want interface_limit", err)
	}
	if got := c.since(); got["CreateNetworkInterface"]+got["AttachNetworkInterface"] != 0 {
		t.Errorf("the refused AddInterface made calls %v", got)
	}
}

// TestAddInterfaceRollsBack: whatever fails after the create, the ENI is
// detached and deleted again before AddInterface returns.
func TestAddInterfaceRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sim    func(*ec2sim.Config)
		cfg    func(*Config)
		faults ec2sim.Faults
		kind   cloud.Kind
	}{
		{
			name:   "attachment limit from ec2",
			faults: ec2sim.Faults{Errors: map[string]ec2sim.ErrorFault{"AttachNetworkInterface": {Rate: 1, Status: 400, Code: codeAttachmentLimit}}},
			kind:   cloud.InterfaceLimit,
		},
		{
			name: "attach times out",
			sim:  func(c *ec2sim.Config) { c.AttachDelay = 3 * time.Second },
			cfg:  func(c *Config) { c.AttachTimeout = 200 * time.Millisecond },
			kind: cloud.Transient,
		},
		{
			name:   "delete on termination refused",
			faults: ec2sim.Faults{Errors: map[string]ec2sim.ErrorFault{"ModifyNetworkInterfaceAttribute": {Rate: 1, Status: 403, Code: "UnauthorizedOperation"}}},
			kind:   cloud.Denied,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.sim)
			cfg := e.config(node0)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			p := e.provider(t, cfg)
			before := e.enis()
			e.s.SetFaults(tc.faults)
			c := e.count("CreateNetworkInterface", "DeleteNetworkInterface")
			_, err := p.AddInterface(ctxT(t))
			if cloud.KindOf(err) != tc.kind {
				t.Fatalf("error %v (kind %s), want kind %s", err, cloud.KindOf(err), tc.kind)
			}
			if got := e.enis(); !slices.Equal(got, before) {
				t.Errorf("ENIs after the failed AddInterface %v, want %v (a leak)", got, before)
			}
			if got := c.since(); got["CreateNetworkInterface"] != 1 || got["DeleteNetworkInterface"] != 1 {
				t.Errorf("calls %v, want one create and one delete", got)
			}
		})
	}
}

// TestCreateThenCrashAdopted: a process that died between its create and
// its attach left a tagged, unattached ENI; the next AddInterface attaches
// that one instead of creating another.
func TestCreateThenCrashAdopted(t *testing.T) {
	e := newEnv(t, nil)
	crashed := e.provider(t, e.config(node0))
	left, err := crashed.createENI(ctxT(t), e.describe(t, eni0)) // AddInterface's create step, then the crash
	if err != nil {
		t.Fatal(err)
	}
	id := awssdk.ToString(left.NetworkInterfaceId)
	cfg := e.config(node0)
	p, err := New(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := e.count("CreateNetworkInterface")
	ifc, err := p.AddInterface(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if ifc.ID != id || ifc.DeviceIndex != 1 {
		t.Errorf("AddInterface gave %s at device %d, want the leftover %s at 1", ifc.ID, ifc.DeviceIndex, id)
	}
	if n := c.since()["CreateNetworkInterface"]; n != 0 {
		t.Errorf("%d creates, want 0 (the leftover is adopted)", n)
	}
	if got := len(e.enis()); got != 3 {
		t.Errorf("%d ENIs, want the two primaries and the adopted one (no duplicate)", got)
	}
}

// TestCreateThenCrashRepairedByInstance: after a restart the first
// Instance deletes the leftover of this instance and sets the missing
// DeleteOnTermination of an ENI attached before the crash; it leaves
// every other ENI alone.
func TestCreateThenCrashRepairedByInstance(t *testing.T) {
	e := newEnv(t, nil)
	old := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	attached, err := old.AddInterface(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.setDOT(t, attached.ID, false) // as if the crash came before the modify
	left, err := old.createENI(ctx, e.describe(t, eni0))
	if err != nil {
		t.Fatal(err)
	}
	leftover := awssdk.ToString(left.NetworkInterfaceId)
	keep := []string{
		e.createENI(t, nil), // someone else's
		e.createENI(t, ownTags("other-cluster", node0, time.Now())),
		e.createENI(t, ownTags(cluster, node1, time.Now())), // node1's business
	}
	p := e.provider(t, e.config(node0))
	in, err := p.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Interfaces) != 2 || in.Interfaces[1].ID != attached.ID {
		t.Errorf("interfaces %+v, want the primary and %s", in.Interfaces, attached.ID)
	}
	if _, ok := e.eniState(leftover); ok {
		t.Errorf("leftover %s survived the first Instance", leftover)
	}
	for _, id := range keep {
		if _, ok := e.eniState(id); !ok {
			t.Errorf("eni %s, not this instance's leftover, was deleted", id)
		}
	}
	if eni := e.describe(t, attached.ID); !awssdk.ToBool(eni.Attachment.DeleteOnTermination) {
		t.Errorf("DeleteOnTermination of %s not repaired", attached.ID)
	}
	// Repaired once: later reads only describe.
	c := e.count("DescribeNetworkInterfaces", "DeleteNetworkInterface", "ModifyNetworkInterfaceAttribute")
	if _, err := p.Instance(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.since(); !mapsEqual(got, map[string]int{"DescribeNetworkInterfaces": 1, "DeleteNetworkInterface": 0, "ModifyNetworkInterfaceAttribute": 0}) {
		t.Errorf("a second Instance made calls %v, want one describe", got)
	}
}

// TestInstanceDuringAddInterface: the repair of a fresh process never
// deletes the ENI its own AddInterface has created and not yet attached.
func TestInstanceDuringAddInterface(t *testing.T) {
	e := newEnv(t, func(c *ec2sim.Config) {
		c.Faults.Latency = map[string]ec2sim.Duration{"AttachNetworkInterface": ec2sim.Duration(400 * time.Millisecond)}
	})
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	before := len(e.enis())
	var wg sync.WaitGroup
	var addErr error
	var ifc cloud.Interface
	wg.Add(1)
	go func() {
		defer wg.Done()
		ifc, addErr = p.AddInterface(ctx)
	}()
	waitFor(t, "the create", func() bool { return len(e.enis()) > before })
	if _, err := p.Instance(ctx); err != nil { // the first Instance: repair is due
		t.Fatal(err)
	}
	wg.Wait()
	if addErr != nil {
		t.Fatalf("AddInterface with an Instance in between: %v", addErr)
	}
	if st, ok := e.eniState(ifc.ID); !ok || st.InstanceID != node0 {
		t.Errorf("eni %s: %+v, want it attached to node0", ifc.ID, st)
	}
}

// TestRemoveInterface refuses the primary, ENIs vnet-cni did not create
// and non-empty ones, with no change; it detaches and deletes an empty one
// of its own; a missing one is done.
func TestRemoveInterface(t *testing.T) {
	e := newEnv(t, nil)
	p := e.provider(t, e.config(node0))
	ctx := ctxT(t)
	full, err := p.AddInterface(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.AddAddresses(ctx, full.ID, 2); err != nil {
		t.Fatal(err)
	}
	foreign := e.createENI(t, nil)
	e.attachENI(t, foreign, node0, 2)
	c := e.count("DetachNetworkInterface", "DeleteNetworkInterface")
	for _, id := range []string{eni0, full.ID, foreign, eni1} {
		if err := p.RemoveInterface(ctx, id); cloud.KindOf(err) != cloud.Fatal {
			t.Errorf("RemoveInterface(%s): %v, want fatal", id, err)
		}
	}
	if got := c.since(); got["DetachNetworkInterface"]+got["DeleteNetworkInterface"] != 0 {
		t.Errorf("refused removals made calls %v", got)
	}

	in, err := p.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveAddresses(ctx, full.ID, in.Interfaces[1].Secondary); err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveInterface(ctx, full.ID); err != nil {
		t.Fatalf("RemoveInterface of an empty ENI: %v", err)
	}
	if _, ok := e.eniState(full.ID); ok {
		t.Errorf("eni %s still exists", full.ID)
	}
	if in, err := p.Instance(ctx); err != nil || len(in.Interfaces) != 1 {
		t.Errorf("after removal: %+v, %v: want the primary only", in.Interfaces, err)
	}
	if err := p.RemoveInterface(ctx, full.ID); err != nil {
		t.Errorf("removing a deleted ENI again: %v, want done", err)
	}
	// The freed device slot is used again.
	again, err := p.AddInterface(ctx)
	if err != nil || again.DeviceIndex != 1 {
		t.Errorf("AddInterface after removal: device %d, %v; want 1", again.DeviceIndex, err)
	}
}

// TestSweep: node1 dies with ENIs; the sweep deletes only vnet-cni's ENIs
// of this cluster that node1 leaked (those EC2 did not delete with it),
// not other clusters', not untagged ones, not a live instance's, and
// honours the grace period.
func TestSweep(t *testing.T) {
	e := newEnv(t, func(c *ec2sim.Config) { c.Instances[1].Type = "m5.4xlarge" })
	ctx := ctxT(t)
	p1 := e.provider(t, e.config(node1))
	kept, err := p1.AddInterface(ctx) // DeleteOnTermination: EC2 deletes it with node1
	if err != nil {
		t.Fatal(err)
	}
	leaked, err := p1.AddInterface(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.setDOT(t, leaked.ID, false) // the window a crash can leave
	otherCluster := e.createENI(t, ownTags("other-cluster", node1, time.Now().Add(-time.Hour)))
	untagged := e.createENI(t, nil)
	e.attachENI(t, otherCluster, node1, 3)
	e.attachENI(t, untagged, node1, 4)
	live := e.createENI(t, ownTags(cluster, node0, time.Now().Add(-time.Hour))) // node0 runs
	if err := e.s.TerminateInstance(node1); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.eniState(kept.ID); ok {
		t.Fatalf("the sim kept %s, which had DeleteOnTermination", kept.ID)
	}

	// Within the grace period nothing goes.
	cfg := e.config(node0)
	cfg.SweepGrace = time.Hour
	p0 := e.provider(t, cfg)
	if got, err := p0.Sweep(ctx); err != nil || len(got) != 0 {
		t.Fatalf("sweep within the grace period deleted %v, %v", got, err)
	}
	if _, err := e.admin.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{leaked.ID},
		Tags:      []types.Tag{{Key: awssdk.String(TagCreatedAt), Value: awssdk.String(time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339))}},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := p0.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{leaked.ID}) {
		t.Errorf("sweep deleted %v, want only %s", got, leaked.ID)
	}
	if _, ok := e.eniState(leaked.ID); ok {
		t.Errorf("%s still exists", leaked.ID)
	}
	for _, id := range []string{otherCluster, untagged, live} {
		if _, ok := e.eniState(id); !ok {
			t.Errorf("sweep deleted %s", id)
		}
	}
	c := e.count("DeleteNetworkInterface", "DescribeInstances")
	if got, err := p0.Sweep(ctx); err != nil || len(got) != 0 {
		t.Errorf("a second sweep deleted %v, %v", got, err)
	}
	// node0's ENI is still a candidate: one DescribeInstances finds node0 alive.
	if got := c.since(); got["DeleteNetworkInterface"] != 0 || got["DescribeInstances"] != 1 {
		t.Errorf("a sweep with nothing to delete made calls %v, want one DescribeInstances", got)
	}
}

// TestSweepStopsWhenThrottled: a throttled delete ends the sweep instead of
// pushing on.
func TestSweepStopsWhenThrottled(t *testing.T) {
	e := newEnv(t, func(c *ec2sim.Config) {
		c.Throttle.Actions = map[string]ec2sim.Bucket{"DeleteNetworkInterface": {Size: 1, Refill: 0.001}}
	})
	ctx := ctxT(t)
	for range 4 {
		e.createENI(t, ownTags(cluster, node1, time.Now().Add(-time.Hour)))
	}
	if err := e.s.TerminateInstance(node1); err != nil {
		t.Fatal(err)
	}
	p := e.provider(t, e.config(node0))
	c := e.count("DeleteNetworkInterface")
	got, err := p.Sweep(ctx)
	var ce *cloud.Error
	if !errors.As(err, &ce) || ce.Kind != cloud.Throttled || len(got) != 1 {
		t.Fatalf("sweep deleted %v, %v: want one deleted, then throttled", got, err)
	}
	if n := c.since()["DeleteNetworkInterface"]; n != 2 {
		t.Errorf("%d deletes, want 2 (one throttled request, not retried)", n)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestAttachThenCrashAdopted: a process killed while it waited for its
// attachment leaves vnet-cni's ENI attaching (or, by the time the next one
// looks, attached without DeleteOnTermination and unknown to the daemon).
// The next AddInterface adopts it, without a create or a second attach.
func TestAttachThenCrashAdopted(t *testing.T) {
	for _, tc := range []struct {
		name     string
		attached bool // wait for the attachment before the restart
	}{{"attaching", false}, {"attached but unknown", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *ec2sim.Config) { c.AttachDelay = 400 * time.Millisecond })
			ctx := ctxT(t)
			id := e.createENI(t, ownTags(cluster, node0, time.Now()))
			if _, err := e.admin.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
				NetworkInterfaceId: awssdk.String(id), InstanceId: awssdk.String(node0), DeviceIndex: awssdk.Int32(1),
			}); err != nil {
				t.Fatal(err)
			}
			if tc.attached {
				waitFor(t, "the attachment", func() bool {
					a := e.describe(t, id).Attachment
					return a != nil && a.Status == types.AttachmentStatusAttached
				})
			}
			p := e.provider(t, e.config(node0))
			c := e.count("CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute", "DeleteNetworkInterface")
			ifc, err := p.AddInterface(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ifc.ID != id || ifc.DeviceIndex != 1 || !ifc.Owned {
				t.Errorf("AddInterface gave %+v, want the adopted %s at device 1", ifc, id)
			}
			want := map[string]int{"CreateNetworkInterface": 0, "AttachNetworkInterface": 0, "ModifyNetworkInterfaceAttribute": 1, "DeleteNetworkInterface": 0}
			if got := c.since(); !mapsEqual(got, want) {
				t.Errorf("calls %v, want %v", got, want)
			}
			if a := e.describe(t, id).Attachment; a == nil || a.Status != types.AttachmentStatusAttached || !awssdk.ToBool(a.DeleteOnTermination) {
				t.Errorf("adopted eni attachment %+v, want attached with DeleteOnTermination", a)
			}
			in, err := p.Instance(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(in.Interfaces) != 2 || in.Interfaces[1].ID != id {
				t.Errorf("interfaces %+v, want the primary and %s", in.Interfaces, id)
			}
			if got := len(e.enis()); got != 3 {
				t.Errorf("%d ENIs, want the two primaries and the adopted one", got)
			}
			// A known, attached ENI is not adopted again: the next one is new.
			next, err := p.AddInterface(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if next.ID == id || next.DeviceIndex != 2 {
				t.Errorf("second AddInterface gave %s at device %d, want a new ENI at 2", next.ID, next.DeviceIndex)
			}
		})
	}
}

// TestDetachThenCrashRepaired: a process killed during RemoveInterface
// leaves vnet-cni's ENI detaching; the first Instance after it became
// available deletes it, however many Instances came while it detached.
func TestDetachThenCrashRepaired(t *testing.T) {
	e := newEnv(t, func(c *ec2sim.Config) { c.DetachDelay = 400 * time.Millisecond })
	ctx := ctxT(t)
	old := e.provider(t, e.config(node0))
	ifc, err := old.AddInterface(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := e.describe(t, ifc.ID).Attachment
	if _, err := e.admin.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: a.AttachmentId}); err != nil {
		t.Fatal(err) // RemoveInterface's detach, then the crash
	}
	p := e.provider(t, e.config(node0))
	for range 2 {
		in, err := p.Instance(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(in.Interfaces) != 1 {
			t.Errorf("interfaces %+v while %s detaches, want the primary only", in.Interfaces, ifc.ID)
		}
	}
	if _, ok := e.eniState(ifc.ID); !ok {
		t.Fatalf("eni %s deleted while it was detaching", ifc.ID)
	}
	waitFor(t, "the detachment", func() bool { return e.describe(t, ifc.ID).Attachment == nil })
	if _, err := p.Instance(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.eniState(ifc.ID); ok {
		t.Errorf("eni %s left behind after its detachment completed", ifc.ID)
	}
}
