package azure

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// Azure error codes that change what the daemon does.
const (
	codeSubnetFull            = "SubnetIsFull"
	codeAnotherOperation      = "AnotherOperationInProgress"
	codeRetryableDueToAnother = "RetryableErrorDueToAnotherOperation"
	codeRetryable             = "RetryableError"
	codePreconditionFailed    = "PreconditionFailed"
)

// nicLimitCodes are the codes Azure uses when a NIC would exceed its
// ipConfiguration limit.
var nicLimitCodes = map[string]bool{
	"NetworkInterfaceIpConfigurationCountExceedsLimit": true,
	"MaxNumberOfIpConfigurationsPerNicReached":         true,
	"IpConfigurationCountLimitReached":                 true,
}

// classify turns an SDK error into a *cloud.Error.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var ce *cloud.Error
	if errors.As(err, &ce) {
		return err
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		if errors.Is(err, context.Canceled) {
			return &cloud.Error{Kind: cloud.Transient, Op: op, Err: err}
		}
		// Timeouts, connection errors, TLS errors: worth retrying later.
		return &cloud.Error{Kind: cloud.Transient, Op: op, Err: err}
	}
	e := &cloud.Error{Op: op, Code: re.ErrorCode, Err: err}
	if re.RawResponse != nil {
		e.RetryAfter = retryAfter(re.RawResponse.Header)
	}
	switch {
	case re.ErrorCode == codeSubnetFull:
		e.Kind = cloud.SubnetFull
	case nicLimitCodes[re.ErrorCode]:
		e.Kind = cloud.NICLimit
	case re.StatusCode == http.StatusPreconditionFailed, re.ErrorCode == codePreconditionFailed,
		re.ErrorCode == codeAnotherOperation, re.ErrorCode == codeRetryableDueToAnother, re.ErrorCode == codeRetryable,
		re.StatusCode == http.StatusConflict:
		e.Kind = cloud.Conflict
	case re.StatusCode == http.StatusTooManyRequests:
		e.Kind = cloud.Throttled
		if e.RetryAfter == 0 {
			e.RetryAfter = time.Second
		}
	case re.StatusCode >= 500, re.StatusCode == http.StatusRequestTimeout:
		e.Kind = cloud.Transient
	default:
		e.Kind = cloud.Fatal
	}
	return e
}

// maxRetryAfter bounds the delay an answer can impose: a Retry-After far in
// the future (or one that overflows a time.Duration) must not stop the pool
// worker for years.
const maxRetryAfter = 10 * time.Minute

// retryAfter reads the delay an Azure response asks for, in the headers the
// SDK honours: retry-after-ms, x-ms-retry-after-ms, then Retry-After
// (seconds or an HTTP date). The result is in 0..maxRetryAfter.
func retryAfter(h http.Header) time.Duration {
	for _, k := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := h.Get(k); v != "" {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
				return boundedDelay(ms, time.Millisecond)
			}
		}
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s > 0 {
		return boundedDelay(s, time.Second)
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return min(d, maxRetryAfter)
		}
	}
	return 0
}

// boundedDelay is n units, at most maxRetryAfter (without overflowing).
func boundedDelay(n int64, unit time.Duration) time.Duration {
	if n >= int64(maxRetryAfter/unit) {
		return maxRetryAfter
	}
	return time.Duration(n) * unit
}
