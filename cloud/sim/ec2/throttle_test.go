package ec2

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestThrottleDefaults(t *testing.T) {
	th := Throttle{}.withDefaults()
	for action, want := range map[string]Bucket{
		"AssignPrivateIpAddresses":  {Size: 100, Refill: 5},
		"AttachNetworkInterface":    {Size: 100, Refill: 5},
		"CreateTags":                {Size: 100, Refill: 5},
		"DescribeNetworkInterfaces": {Size: 100, Refill: 20},
	} {
		if got := th.bucketFor(action); got != want {
			t.Errorf("%s: bucket %+v, want %+v", action, got, want)
		}
	}
}

// TestThrottleRetried: a small bucket on AssignPrivateIpAddresses answers
// 503 RequestLimitExceeded; the SDK's standard retryer backs off and every
// call succeeds in the end; the counters show the retries.
func TestThrottleRetried(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Throttle.Actions = map[string]Bucket{"AssignPrivateIpAddresses": {Size: 2, Refill: 4}}
	}, config.WithRetryer(func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 10
			o.MaxBackoff = 300 * time.Millisecond
		})
	}))
	ctx := ctxT(t)
	id := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)})
	start := time.Now()
	for range 6 {
		_, err := e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(1)})
		noErr(t, err)
	}
	elapsed := time.Since(start)
	st := e.s.Stats()
	calls := st.Calls["AssignPrivateIpAddresses"]
	if calls["200"] != 6 || calls["503"] == 0 || st.Throttled != calls["503"] {
		t.Fatalf("calls %v throttled %d: want 6 successes after some 503s", calls, st.Throttled)
	}
	// 2 tokens at start, 4 more per second: 6 successes need about a second.
	if elapsed < 900*time.Millisecond {
		t.Fatalf("6 calls took %v; the bucket should have held them to ~1s", elapsed)
	}
	t.Logf("6 assignments in %v with %d throttled attempts", elapsed, calls["503"])
	if n := len(describeENI(t, e, id).PrivateIpAddresses); n != 7 {
		t.Fatalf("%d addresses, want 7", n)
	}
	// Other actions have their own buckets.
	if _, err := e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{}); err != nil {
		t.Fatal(err)
	}
}

// TestThrottleSurfaced: with retries off the caller sees
// RequestLimitExceeded with HTTP 503.
func TestThrottleSurfaced(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Throttle.Actions = map[string]Bucket{"DescribeNetworkInterfaces": {Size: 1, Refill: 0.1}}
	}, config.WithRetryMaxAttempts(1))
	ctx := ctxT(t)
	_, err := e.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{})
	noErr(t, err)
	_, err = e.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{})
	wantCode(t, err, CodeRequestLimitExceeded, http.StatusServiceUnavailable)
}

func TestFaults(t *testing.T) {
	e := newEnv(t, nil, config.WithRetryer(func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 3
			o.MaxBackoff = 50 * time.Millisecond
		})
	}))
	ctx := ctxT(t)
	admin := httptest.NewServer(e.s.AdminHandler())
	defer admin.Close()
	put := func(f string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPut, admin.URL+"/faults", bytes.NewBufferString(f))
		noErr(t, err)
		resp, err := http.DefaultClient.Do(req)
		noErr(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT /faults %s: %d", f, resp.StatusCode)
		}
	}
	id := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)})

	// A 5xx error on one action at rate 1: the SDK retries it 3 times.
	put(`{"errors":{"AssignPrivateIpAddresses":{"rate":1,"status":500,"code":"InternalError"}}}`)
	e.s.ResetStats()
	_, err := e.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(1)})
	wantCode(t, err, CodeInternalError, http.StatusInternalServerError)
	if n := e.s.Stats().Calls["AssignPrivateIpAddresses"]["500"]; n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
	if _, err := e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{}); err != nil {
		t.Fatalf("other actions are not affected: %v", err)
	}

	// Latency.
	put(`{"latency":{"DescribeSubnets":"200ms"}}`)
	start := time.Now()
	_, err = e.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	noErr(t, err)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("DescribeSubnets took %v with 200ms latency", d)
	}

	// A storm throttles every action.
	put(`{"storm":{"duration":"1h"}}`)
	_, err = e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	wantCode(t, err, CodeRequestLimitExceeded, http.StatusServiceUnavailable)

	// Reset; the stats document counts by action and status.
	resp, err := http.Post(admin.URL+"/faults/reset", "", nil)
	noErr(t, err)
	resp.Body.Close()
	_, err = e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	noErr(t, err)
	resp, err = http.Get(admin.URL + "/stats")
	noErr(t, err)
	defer resp.Body.Close()
	var st Stats
	noErr(t, json.NewDecoder(resp.Body).Decode(&st))
	if st.Calls["DescribeInstances"]["503"] != 3 || st.Calls["DescribeInstances"]["200"] != 1 || st.Throttled != 3 {
		t.Fatalf("stats %+v", st)
	}
	req, err := http.NewRequest(http.MethodPut, admin.URL+"/faults", bytes.NewBufferString(`{"errors":{"*":{"rate":2,"status":200,"code":""}}}`))
	noErr(t, err)
	resp2, err := http.DefaultClient.Do(req)
	noErr(t, err)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadRequest {
		t.Fatalf("invalid faults accepted: %d", resp2.StatusCode)
	}
}

// TestAdminTerminate: POST /instances/{id}/terminate terminates as EC2
// does: the ENIs with DeleteOnTermination (the primary by default) are
// deleted, the others detached and left available, the instance no longer
// listed; an unknown instance is 404.
func TestAdminTerminate(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	admin := httptest.NewServer(e.s.AdminHandler())
	defer admin.Close()
	kept := createENI(t, e, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(mainSubnet)})
	attach(t, e, kept, node0, 1)
	terminate := func(id string) (*http.Response, Termination) {
		resp, err := http.Post(admin.URL+"/instances/"+id+"/terminate", "", nil)
		noErr(t, err)
		defer resp.Body.Close()
		var tm Termination
		if resp.StatusCode == http.StatusOK {
			noErr(t, json.NewDecoder(resp.Body).Decode(&tm))
		}
		return resp, tm
	}
	resp, tm := terminate(node0)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("terminate: %s", resp.Status)
	}
	if len(tm.Deleted) != 1 || len(tm.Detached) != 1 || tm.Detached[0] != kept {
		t.Errorf("termination %+v, want the primary deleted and %s detached", tm, kept)
	}
	out, err := e.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{kept}})
	noErr(t, err)
	if got := out.NetworkInterfaces[0]; got.Status != types.NetworkInterfaceStatusAvailable || got.Attachment != nil {
		t.Errorf("detached eni: status %s attachment %+v, want available", got.Status, got.Attachment)
	}
	_, err = e.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: tm.Deleted})
	wantCode(t, err, CodeInvalidENIIDNotFound, http.StatusBadRequest)
	insts, err := e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	noErr(t, err)
	for _, r := range insts.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) == node0 {
				t.Errorf("terminated instance %s still listed", node0)
			}
		}
	}
	if resp, _ := terminate(node0); resp.StatusCode != http.StatusNotFound {
		t.Errorf("terminate again: %s, want 404", resp.Status)
	}
}
