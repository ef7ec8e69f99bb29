package azure

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// Azure error codes that change what the daemon does.
const (
	codeSubnetFull            = "SubnetIsFull"
	codeAnotherOperation      = "AnotherOperationInProgress"
	codeRetryableDueToAnother = "RetryableErrorDueToAnotherOperation"
	codeRetryable             = "RetryableError"
	codePreconditionFailed    = "PreconditionFailed"
	// codeAddressIsAllocated answers a static address that another
	// ipConfiguration of the subnet holds (400).
	codeAddressIsAllocated = "PrivateIPAddressIsAllocated"
)

// nicLimitCodes are the codes Azure uses when a NIC would exceed its
// ipConfiguration limit.
var nicLimitCodes = map[string]bool{
	"NetworkInterfaceIpConfigurationCountExceedsLimit": true,
	"MaxNumberOfIpConfigurationsPerNicReached":         true,
	"IpConfigurationCountLimitReached":                 true,
}

// classify turns an SDK error into a *cloud.Error.
// Classify turns an error of an ARM call op into a *cloud.Error whose Kind
// says what to do about it (nil stays nil), for the packages beside the
// provider that call ARM themselves.
func Classify(op string, err error) error { return classify(op, err) }

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
		e.Message = errorMessage(re.RawResponse)
	}
	switch {
	case re.ErrorCode == codeSubnetFull:
		e.Kind = cloud.SubnetFull
	case nicLimitCodes[re.ErrorCode]:
		e.Kind = cloud.NICLimit
	case re.ErrorCode == codeAddressIsAllocated:
		e.Kind = cloud.AddressInUse
	case re.StatusCode == http.StatusPreconditionFailed, re.ErrorCode == codePreconditionFailed,
		re.ErrorCode == codeAnotherOperation, re.ErrorCode == codeRetryableDueToAnother, re.ErrorCode == codeRetryable,
		re.StatusCode == http.StatusConflict:
		e.Kind = cloud.Conflict
	case re.StatusCode == http.StatusForbidden:
		// AuthorizationFailed, LinkedAuthorizationFailed: the identity's
		// roles do not allow the action.
		e.Kind = cloud.Denied
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

// errorMessage returns error.message of an ARM error body (the SDK keeps the
// body it read), one line of at most cloud.MaxMessage bytes, or "".
func errorMessage(resp *http.Response) string {
	body, err := runtime.Payload(resp)
	if err != nil {
		return ""
	}
	var doc struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &doc) != nil || doc.Error == nil {
		return ""
	}
	msg := strings.Join(strings.Fields(doc.Error.Message), " ")
	if len(msg) > cloud.MaxMessage {
		msg = msg[:cloud.MaxMessage]
	}
	return strings.ToValidUTF8(msg, "")
}
