package arm

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
	"github.com/google/go-cmp/cmp"
)

// TestNICUpdateIsLongRunning: a PUT answers 200 Updating with an
// Azure-AsyncOperation URL on the request's host; until the operation
// succeeds GET, Snapshot and Changed show the old state.
func TestNICUpdateIsLongRunning(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.OperationDuration = 400 * time.Millisecond })
	ctx := testCtx(t)
	drain(e.s)
	before := e.s.Snapshot()

	var initial *http.Response
	poller, err := e.nics.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &initial), testRG, "node-0",
		nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("pod-a", "", false)), nil)
	if err != nil {
		t.Fatalf("BeginCreateOrUpdate: %v", err)
	}
	if initial.StatusCode != http.StatusOK {
		t.Errorf("PUT status = %d, want 200", initial.StatusCode)
	}
	wantPrefix := e.ts.URL + "/subscriptions/" + testSub + "/providers/Microsoft.Network/locations/" + testLocation + "/operations/"
	if got := initial.Header.Get("Azure-AsyncOperation"); !strings.HasPrefix(got, wantPrefix) || !strings.Contains(got, "api-version="+apiVersion) {
		t.Errorf("Azure-AsyncOperation = %q, want prefix %q and the api-version", got, wantPrefix)
	}
	if got := initial.Header.Get("Retry-After-Ms"); got != "10" {
		t.Errorf("Retry-After-Ms = %q, want 10", got)
	}

	during, err := e.nics.Get(ctx, testRG, "node-0", nil)
	if err != nil {
		t.Fatalf("Get during the operation: %v", err)
	}
	if got := *during.Properties.ProvisioningState; got != armnetwork.ProvisioningStateUpdating {
		t.Errorf("provisioningState during the operation = %s, want Updating", got)
	}
	if diff := cmp.Diff(map[string]string{"ipconfig1": "10.0.0.4"}, addrsOf(during.Interface)); diff != "" {
		t.Errorf("ipConfigurations during the operation (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, e.s.Snapshot(), netipOpts); diff != "" {
		t.Errorf("Snapshot changed before the operation succeeded (-before +now):\n%s", diff)
	}
	select {
	case <-e.s.Changed():
		t.Error("Changed fired before the operation succeeded")
	default:
	}

	res, err := poller.PollUntilDone(ctx, nil)
	if err != nil {
		t.Fatalf("PollUntilDone: %v", err)
	}
	if diff := cmp.Diff(map[string]string{"ipconfig1": "10.0.0.4", "pod-a": "10.0.0.6"}, addrsOf(res.Interface)); diff != "" {
		t.Errorf("ipConfigurations after the operation (-want +got):\n%s", diff)
	}
	if got := *res.Properties.ProvisioningState; got != armnetwork.ProvisioningStateSucceeded {
		t.Errorf("provisioningState after the operation = %s, want Succeeded", got)
	}
	select {
	case <-e.s.Changed():
	case <-time.After(time.Second):
		t.Error("Changed did not fire after the operation succeeded")
	}
	snap := e.s.Snapshot()
	if diff := cmp.Diff([]netip.Addr{netip.MustParseAddr("10.0.0.6")}, snap.NICs[0].Secondary, netipOpts); diff != "" {
		t.Errorf("Snapshot secondaries of node-0 (-want +got):\n%s", diff)
	}
	polls := e.s.Stats().Calls["AsyncOperations_Get"]["200"]
	if polls < 1 {
		t.Errorf("AsyncOperations_Get 200 count = %d, want at least 1", polls)
	}
}

// TestChangedFiresWithoutReads: the operation commits on its timer, so the
// data plane hears of it without anyone polling.
func TestChangedFiresWithoutReads(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	drain(e.s)
	if _, err := e.nics.BeginCreateOrUpdate(ctx, testRG, "node-1", nicBody(ipc("ipconfig1", "10.0.0.5", true), ipc("x", "10.0.0.50", false)), nil); err != nil {
		t.Fatalf("BeginCreateOrUpdate: %v", err)
	}
	select {
	case <-e.s.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("Changed did not fire")
	}
	if got := e.s.Snapshot().NICs[1].Secondary; len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.50") {
		t.Errorf("node-1 secondaries = %v, want [10.0.0.50]", got)
	}
}

// TestSecondWriteWhileInProgress: Azure answers 429 RetryableError with the
// detail RetryableErrorDueToAnotherOperation and a Retry-After.
func TestSecondWriteWhileInProgress(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.OperationDuration = 2 * time.Second })
	ctx := testCtx(t)
	if _, err := e.nics.BeginCreateOrUpdate(ctx, testRG, "node-0", nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("a", "", false)), nil); err != nil {
		t.Fatalf("first PUT: %v", err)
	}
	var resp *http.Response
	_, err := e.nics.BeginCreateOrUpdate(policy.WithCaptureResponse(noRetry(ctx), &resp), testRG, "node-0",
		nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("b", "", false)), nil)
	wantAPIError(t, err, http.StatusTooManyRequests, CodeRetryable)
	if !strings.Contains(err.Error(), CodeAnotherOperation) {
		t.Errorf("error does not carry the detail %s: %v", CodeAnotherOperation, err)
	}
	if got := resp.Header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After = %q, want 2", got)
	}
	// A write to the other NIC is not blocked.
	if _, err := e.nics.BeginCreateOrUpdate(noRetry(ctx), testRG, "node-1", nicBody(ipc("ipconfig1", "10.0.0.5", true)), nil); err != nil {
		t.Errorf("PUT on another NIC: %v", err)
	}
}

// TestOperationFailure: an operation failed by a fault ends Failed, the NIC
// keeps its state and the reserved address is released.
func TestOperationFailure(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	e.s.SetFaults(Faults{OperationFailure: &OperationFailure{Rate: 1, Code: "InternalServerError"}})
	_, err := e.putNIC(ctx, "node-0", nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("a", "10.0.0.77", false)))
	if err == nil || !strings.Contains(err.Error(), "InternalServerError") {
		t.Fatalf("PollUntilDone error = %v, want the operation's InternalServerError", err)
	}
	got, err := e.nics.Get(ctx, testRG, "node-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"ipconfig1": "10.0.0.4"}, addrsOf(got.Interface)); diff != "" {
		t.Errorf("node-0 after the failed operation (-want +got):\n%s", diff)
	}
	e.s.SetFaults(Faults{})
	if _, err := e.putNIC(ctx, "node-1", nicBody(ipc("ipconfig1", "10.0.0.5", true), ipc("a", "10.0.0.77", false))); err != nil {
		t.Errorf("the failed operation's address is still held: %v", err)
	}
}

// TestCreateNIC: a PUT of a new NIC answers 201 and the NIC is not visible
// until the operation succeeds.
func TestCreateNIC(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.OperationDuration = 300 * time.Millisecond })
	ctx := testCtx(t)
	var initial *http.Response
	p, err := e.nics.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &initial), testRG, "extra", nicBody(ipc("ipconfig1", "", true)), nil)
	if err != nil {
		t.Fatalf("BeginCreateOrUpdate: %v", err)
	}
	if initial.StatusCode != http.StatusCreated {
		t.Errorf("status = %d, want 201", initial.StatusCode)
	}
	_, err = e.nics.Get(ctx, testRG, "extra", nil)
	wantAPIError(t, err, http.StatusNotFound, CodeResourceNotFound)
	res, err := p.PollUntilDone(ctx, nil)
	if err != nil {
		t.Fatalf("PollUntilDone: %v", err)
	}
	if got := addrsOf(res.Interface)["ipconfig1"]; got != "10.0.0.6" {
		t.Errorf("primary = %s, want 10.0.0.6", got)
	}
	if mac := *res.Properties.MacAddress; !strings.HasPrefix(mac, "00-0D-3A-") || len(mac) != 17 {
		t.Errorf("mac = %s, want 00-0D-3A-xx-xx-xx", mac)
	}
	if n := len(e.s.Snapshot().NICs); n != 3 {
		t.Errorf("Snapshot has %d NICs, want 3", n)
	}
}

// TestCloseAbandonsOperations: after Close a pending operation never
// commits.
func TestCloseAbandonsOperations(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	before := e.s.Snapshot()
	if _, err := e.nics.BeginCreateOrUpdate(ctx, testRG, "node-0", nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("a", "", false)), nil); err != nil {
		t.Fatal(err)
	}
	e.s.Close()
	time.Sleep(100 * time.Millisecond)
	if diff := cmp.Diff(before, e.s.Snapshot(), netipOpts); diff != "" {
		t.Errorf("Snapshot changed after Close (-before +after):\n%s", diff)
	}
}

// TestIfMatch: If-Match with a stale ETag is refused with 412, "*" and the
// current ETag are accepted; If-None-Match "*" refuses an existing NIC.
func TestIfMatch(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t)
	first, err := e.nics.Get(ctx, testRG, "node-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	stale := *first.Etag
	if !strings.HasPrefix(stale, `W/"`) {
		t.Errorf("etag = %s, want W/\"...\"", stale)
	}
	if _, err := e.putNIC(policy.WithHTTPHeader(ctx, http.Header{"If-Match": {stale}}), "node-0",
		nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("a", "", false))); err != nil {
		t.Fatalf("PUT with the current ETag: %v", err)
	}
	current, err := e.nics.Get(ctx, testRG, "node-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *current.Etag == stale {
		t.Fatal("ETag did not change on a committed change")
	}
	for _, c := range current.Properties.IPConfigurations {
		if *c.Etag != *current.Etag {
			t.Errorf("ipConfiguration %s etag = %s, want the NIC's %s", *c.Name, *c.Etag, *current.Etag)
		}
	}
	body := nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("a", "", false), ipc("b", "", false))
	tests := []struct {
		name   string
		header http.Header
		status int
	}{
		{"stale If-Match", http.Header{"If-Match": {stale}}, http.StatusPreconditionFailed},
		{"If-None-Match star on existing", http.Header{"If-None-Match": {"*"}}, http.StatusPreconditionFailed},
		{"If-Match star", http.Header{"If-Match": {"*"}}, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.putNIC(policy.WithHTTPHeader(ctx, tt.header), "node-0", body)
			if tt.status == http.StatusOK {
				if err != nil {
					t.Fatalf("PUT: %v", err)
				}
				return
			}
			wantAPIError(t, err, tt.status, CodePreconditionFailed)
		})
	}
}
