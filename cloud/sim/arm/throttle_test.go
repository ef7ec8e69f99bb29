package arm

import (
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-cmp/cmp"
)

// TestStormRetryAfterHonoured: during a 429 storm the SDK waits Retry-After
// and then succeeds; the stats count the 429.
func TestStormRetryAfterHonoured(t *testing.T) {
	e := newEnv(t, nil)
	e.s.SetFaults(Faults{Storm: &Storm{Duration: Duration(300 * time.Millisecond), RetryAfterSeconds: 1}})
	start := time.Now()
	if _, err := e.nics.Get(testCtx(t), testRG, "node-0", nil); err != nil {
		t.Fatalf("Get through the storm: %v", err)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("the retry came after %v, before Retry-After (1s)", took)
	}
	if diff := cmp.Diff(map[string]int{"429": 1, "200": 1}, e.s.Stats().Calls["NetworkInterfaces_Get"]); diff != "" {
		t.Errorf("NetworkInterfaces_Get calls (-want +got):\n%s", diff)
	}
}

// TestReadBucketExhaustion: reads take tokens; when none is left ARM answers
// 429 SubscriptionRequestsThrottled with a Retry-After of the refill time.
// Writes have their own bucket.
func TestReadBucketExhaustion(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Throttle = Throttle{ReadBucket: 3, ReadRefill: 0.4, WriteBucket: 5}
	})
	ctx := noRetry(testCtx(t))
	for i, want := range []string{"2", "1", "0"} {
		var resp *http.Response
		if _, err := e.nics.Get(policy.WithCaptureResponse(ctx, &resp), testRG, "node-0", nil); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if got := resp.Header.Get("x-ms-ratelimit-remaining-subscription-reads"); got != want {
			t.Errorf("read %d: remaining reads = %s, want %s", i, got, want)
		}
	}
	var resp *http.Response
	_, err := e.nics.Get(policy.WithCaptureResponse(ctx, &resp), testRG, "node-0", nil)
	wantAPIError(t, err, http.StatusTooManyRequests, CodeThrottled)
	if got := resp.Header.Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After = %q, want 3 (one token at 0.4/s)", got)
	}
	_, err = e.nics.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &resp), testRG, "node-0", nicBody(ipc("ipconfig1", "10.0.0.4", true)), nil)
	if err != nil {
		t.Fatalf("write with the read bucket empty: %v", err)
	}
	if got := resp.Header.Get("x-ms-ratelimit-remaining-subscription-writes"); got != "4" {
		t.Errorf("remaining writes = %s, want 4", got)
	}
	if got := e.s.Stats().Calls["NetworkInterfaces_Get"]; got["429"] != 1 || got["200"] != 3 {
		t.Errorf("NetworkInterfaces_Get calls = %v, want 3×200 and 1×429", got)
	}
}
