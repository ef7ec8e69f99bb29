package aws

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/vnet-cni/vnet-cni/cloud"
)

// EC2 error codes that change what the provider or the daemon does.
const (
	codeRequestLimitExceeded   = "RequestLimitExceeded"
	codeIPLimitExceeded        = "PrivateIpAddressLimitExceeded"
	codeSubnetFull             = "InsufficientFreeAddressesInSubnet"
	codeAddressInUse           = "InvalidIPAddress.InUse"
	codeAttachmentLimit        = "AttachmentLimitExceeded"
	codeENINotFound            = "InvalidNetworkInterfaceID.NotFound"
	codeENIInUse               = "InvalidNetworkInterface.InUse"
	codeAttachmentNotFound     = "InvalidAttachmentID.NotFound"
	codeIncorrectState         = "IncorrectState"
	codeInvalidParameterValue  = "InvalidParameterValue"
	codeAuthFailure            = "AuthFailure"
	codeUnauthorizedOperation  = "UnauthorizedOperation"
	codeRequestExpired         = "RequestExpired"
	codeMissingParameter       = "MissingParameter"
	codeOperationNotPermitted  = "OperationNotPermitted"
	codeInvalidInstanceIDFound = "InvalidInstanceID.NotFound"
)

// kinds maps the EC2 codes with a fixed meaning to their kind.
var kinds = map[string]cloud.Kind{
	codeRequestLimitExceeded: cloud.Throttled,
	codeIPLimitExceeded:      cloud.NICLimit,
	codeSubnetFull:           cloud.SubnetFull,
	codeAddressInUse:         cloud.AddressInUse,
	codeAttachmentLimit:      cloud.InterfaceLimit,
	// The interface or attachment is not in the state the caller read a
	// moment ago (gone, attached meanwhile, still changing): re-read.
	codeENINotFound:        cloud.Conflict,
	codeENIInUse:           cloud.Conflict,
	codeAttachmentNotFound: cloud.Conflict,
	codeIncorrectState:     cloud.Conflict,
	// The role may not make the call: an operator has to grant it.
	codeUnauthorizedOperation: cloud.Denied,
	// An operator has to act: credentials, the clock, a bug.
	codeAuthFailure:            cloud.Fatal,
	codeRequestExpired:         cloud.Fatal,
	codeMissingParameter:       cloud.Fatal,
	codeOperationNotPermitted:  cloud.Fatal,
	codeInvalidInstanceIDFound: cloud.Fatal,
}

// kindOf classifies an EC2 error answer by its code and HTTP status.
// RequestLimitExceeded comes with a 503 and is Throttled, not Transient.
func kindOf(code string, status int) cloud.Kind {
	if k, ok := kinds[code]; ok {
		return k
	}
	switch {
	case strings.HasPrefix(code, "InvalidParameter"):
		return cloud.Fatal
	case status >= 500, status == 0:
		return cloud.Transient
	default:
		return cloud.Fatal
	}
}

// classify turns an SDK error into a *cloud.Error for the EC2 action op.
// Errors without an EC2 answer (connection refused, TLS, timeouts, a
// cancelled context) are Transient. RetryAfter is left to the provider.
func classify(op string, err error) *cloud.Error {
	var ce *cloud.Error
	if errors.As(err, &ce) {
		return ce
	}
	e := &cloud.Error{Kind: cloud.Transient, Op: op, Err: err}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return e
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	e.Code = ae.ErrorCode()
	e.Message = oneLine(ae.ErrorMessage())
	e.Kind = kindOf(e.Code, status)
	return e
}

// codeOf returns the EC2 error code in err's chain, or "".
func codeOf(err error) string {
	var ce *cloud.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// oneLine makes an EC2 message fit cloud.Error.Message: one line of valid
// UTF-8, at most cloud.MaxMessage bytes.
func oneLine(msg string) string {
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > cloud.MaxMessage {
		msg = msg[:cloud.MaxMessage]
	}
	return strings.ToValidUTF8(msg, "")
}

// Throttle hints. EC2 sends no Retry-After; its buckets refill per second.
// The hint doubles with every throttled call in a row (the SDK's own
// retries of that call included) up to maxThrottleHint, with jitter, so
// that many nodes throttled at once do not come back in step.
const (
	baseThrottleHint = time.Second
	maxThrottleHint  = 30 * time.Second
)

// throttleHint tracks throttled calls in a row across the provider: the
// account's buckets are shared by every action of a class.
type throttleHint struct {
	mu     sync.Mutex
	streak int
	// rand returns a number in [0, 1); nil means math/rand/v2.
	rand func() float64
}

// throttled records a throttled call and returns the delay to ask for: a
// value in [d/2, d] where d is baseThrottleHint doubled per earlier
// throttled call in a row, at most maxThrottleHint.
func (h *throttleHint) throttled() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.streak++
	d := maxThrottleHint
	if shift := h.streak - 1; shift < 5 {
		d = min(baseThrottleHint<<shift, maxThrottleHint)
	}
	r := rand.Float64
	if h.rand != nil {
		r = h.rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// succeeded ends a throttled streak.
func (h *throttleHint) succeeded() {
	h.mu.Lock()
	h.streak = 0
	h.mu.Unlock()
}

// notThrottle tells the SDK's retryer not to retry RequestLimitExceeded
// (and leaves every other error to its defaults).
func notThrottle(err error) awssdk.Ternary {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == codeRequestLimitExceeded {
		return awssdk.FalseTernary
	}
	return awssdk.UnknownTernary
}
