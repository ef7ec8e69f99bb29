package arm

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestFaultInjection: latency delays the chosen operation, an error rate of
// 1 answers every request with the configured status and code.
func TestFaultInjection(t *testing.T) {
	e := newEnv(t, nil)
	ctx := noRetry(testCtx(t))

	e.s.SetFaults(Faults{Latency: map[string]Duration{"NetworkInterfaces_Get": Duration(200 * time.Millisecond)}})
	start := time.Now()
	if _, err := e.nics.Get(ctx, testRG, "node-0", nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("Get took %v with 200ms latency injected", took)
	}

	e.s.SetFaults(Faults{Errors: map[string]ErrorFault{
		"*":                     {Rate: 1, Status: http.StatusConflict, Code: "Conflict"},
		"VirtualNetworks_Get":   {Rate: 0, Status: http.StatusConflict, Code: "Conflict"},
		"NetworkInterfaces_Get": {Rate: 1, Status: http.StatusServiceUnavailable, Code: "ServerBusy", RetryAfterSeconds: 7},
	}})
	var resp *http.Response
	_, err := e.nics.Get(policy.WithCaptureResponse(ctx, &resp), testRG, "node-0", nil)
	wantAPIError(t, err, http.StatusServiceUnavailable, "ServerBusy")
	if got := resp.Header.Get("Retry-After"); got != "7" {
		t.Errorf("Retry-After = %q, want 7", got)
	}
	_, err = e.subnets.Get(ctx, testRG, "vnet", "nodes", nil)
	wantAPIError(t, err, http.StatusConflict, "Conflict")
	if _, err := e.vnets.Get(ctx, testRG, "vnet", nil); err != nil {
		t.Errorf("an operation's own rate 0 must win over *: %v", err)
	}
	if got := e.s.Stats().Calls["NetworkInterfaces_Get"]["503"]; got != 1 {
		t.Errorf("503 count = %d, want 1", got)
	}
}

// TestAdminEndpoints: faults round-trip as JSON, bad faults are refused,
// stats are served.
func TestAdminEndpoints(t *testing.T) {
	e := newEnv(t, nil)
	admin := httptest.NewServer(e.s.AdminHandler())
	t.Cleanup(admin.Close)
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(testCtx(t), method, admin.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := admin.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}

	in := `{"latency":{"*":"250ms"},"errors":{"Routes_Delete":{"rate":0.5,"status":500,"code":"InternalServerError"}},` +
		`"storm":{"duration":"2s","retryAfterSeconds":3},"operationFailure":{"rate":0.1,"code":"Canceled"}}`
	if status, body := do("PUT", "/faults", in); status != http.StatusOK {
		t.Fatalf("PUT /faults = %d %s", status, body)
	}
	status, body := do("GET", "/faults", "")
	if status != http.StatusOK {
		t.Fatalf("GET /faults = %d", status)
	}
	var got Faults
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	want := Faults{
		Latency:          map[string]Duration{"*": Duration(250 * time.Millisecond)},
		Errors:           map[string]ErrorFault{"Routes_Delete": {Rate: 0.5, Status: 500, Code: "InternalServerError"}},
		Storm:            &Storm{Duration: Duration(2 * time.Second), RetryAfterSeconds: 3},
		OperationFailure: &OperationFailure{Rate: 0.1, Code: "Canceled"},
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Storm{}, "Until")); diff != "" {
		t.Errorf("faults (-want +got):\n%s", diff)
	}
	if left := time.Until(got.Storm.Until); left <= 0 || left > 2*time.Second {
		t.Errorf("storm until is %v away, want within 2s", left)
	}
	// The storm is on: ARM answers 429.
	_, err := e.nics.Get(noRetry(testCtx(t)), testRG, "node-0", nil)
	wantAPIError(t, err, http.StatusTooManyRequests, CodeThrottled)

	for _, bad := range []string{`{"errors":{"*":{"rate":2,"status":500,"code":"X"}}}`, `{"latency":{"*":250}}`, `{"unknown":1}`} {
		if status, _ := do("PUT", "/faults", bad); status != http.StatusBadRequest {
			t.Errorf("PUT /faults %s = %d, want 400", bad, status)
		}
	}
	if status, _ := do("POST", "/faults/reset", ""); status != http.StatusNoContent {
		t.Errorf("POST /faults/reset = %d", status)
	}
	if _, body := do("GET", "/faults", ""); body != "{}" {
		t.Errorf("faults after reset = %s, want {}", body)
	}

	_, body = do("GET", "/stats", "")
	var stats Stats
	if err := json.Unmarshal([]byte(body), &stats); err != nil {
		t.Fatalf("decode stats %s: %v", body, err)
	}
	if diff := cmp.Diff(Stats{Calls: map[string]map[string]int{"NetworkInterfaces_Get": {"429": 1}}, Total: 1, Throttled: 1, Errors: 1}, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if status, _ := do("POST", "/stats/reset", ""); status != http.StatusNoContent {
		t.Errorf("POST /stats/reset = %d", status)
	}
	if s := e.s.Stats(); s.Total != 0 {
		t.Errorf("stats after reset = %+v", s)
	}
}

// TestLatencyRespectsContext: a client that gives up is not held by the
// injected latency.
func TestLatencyRespectsContext(t *testing.T) {
	e := newEnv(t, nil)
	e.s.SetFaults(Faults{Latency: map[string]Duration{"*": Duration(time.Minute)}})
	req := httptest.NewRequest(http.MethodGet, nicPath("node-0")+"?api-version="+apiVersion, nil)
	req.Header.Set("Authorization", "Bearer "+e.token())
	ctx, cancel := contextWithTimeout(t, 50*time.Millisecond)
	defer cancel()
	rec := httptest.NewRecorder()
	start := time.Now()
	e.s.Handler().ServeHTTP(rec, req.WithContext(ctx))
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("handler returned after %v, want soon after the context ended", took)
	}
	if got := e.s.Stats().Calls["NetworkInterfaces_Get"]["499"]; got != 1 {
		t.Errorf("499 count = %d, want 1", got)
	}
}
