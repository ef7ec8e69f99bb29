package arm

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// AllOperations is the Faults key that applies to every operation.
const AllOperations = "*"

// Faults are injected into ARM requests before they reach the API. They are
// also the JSON document of the admin endpoint /faults.
type Faults struct {
	// Latency adds a delay to requests of an operation (by operationId, e.g.
	// "NetworkInterfaces_CreateOrUpdate", or "*" for all); both apply.
	Latency map[string]Duration `json:"latency,omitempty"`
	// Errors answers requests of an operation with an ARM error at a rate.
	// The operation's own entry is used before "*".
	Errors map[string]ErrorFault `json:"errors,omitempty"`
	// Storm answers every ARM request with 429 while it lasts.
	Storm *Storm `json:"storm,omitempty"`
	// OperationFailure makes long-running operations end in Failed instead of
	// Succeeded at a rate; the resource then keeps its old state.
	OperationFailure *OperationFailure `json:"operationFailure,omitempty"`
}

// ErrorFault answers a fraction Rate (0..1) of the requests with Status and
// an ARM error body with Code.
type ErrorFault struct {
	Rate    float64 `json:"rate"`
	Status  int     `json:"status"`
	Code    string  `json:"code"`
	Message string  `json:"message,omitempty"`
	// RetryAfterSeconds is sent with 429 and 503 answers (default 1).
	RetryAfterSeconds int `json:"retryAfterSeconds,omitempty"`
}

// Storm is a 429 storm. Duration is turned into Until when the faults are
// set; the storm ends at Until.
type Storm struct {
	Duration          Duration  `json:"duration,omitzero"`
	Until             time.Time `json:"until,omitzero"`
	RetryAfterSeconds int       `json:"retryAfterSeconds,omitempty"`
}

// OperationFailure fails a fraction Rate of long-running operations with
// the ARM error Code.
type OperationFailure struct {
	Rate    float64 `json:"rate"`
	Code    string  `json:"code,omitempty"`
	Message string  `json:"message,omitempty"`
}

// Duration is a duration in the faults document (see simadmin.Duration).
type Duration = simadmin.Duration

func (f Faults) validate() error {
	var errs []error
	for op, d := range f.Latency {
		if d < 0 {
			errs = append(errs, fmt.Errorf("latency of %s is negative", op))
		}
	}
	for op, e := range f.Errors {
		if e.Rate < 0 || e.Rate > 1 {
			errs = append(errs, fmt.Errorf("error rate of %s is outside 0..1", op))
		}
		if e.Status < 400 || e.Status > 599 {
			errs = append(errs, fmt.Errorf("error status of %s is %d, want 4xx or 5xx", op, e.Status))
		}
		if e.Code == "" {
			errs = append(errs, fmt.Errorf("error code of %s is empty", op))
		}
	}
	if s := f.Storm; s != nil && (s.Duration < 0 || s.RetryAfterSeconds < 0) {
		errs = append(errs, errors.New("storm duration and retryAfterSeconds must not be negative"))
	}
	if o := f.OperationFailure; o != nil && (o.Rate < 0 || o.Rate > 1) {
		errs = append(errs, errors.New("operation failure rate is outside 0..1"))
	}
	return errors.Join(errs...)
}

// clone returns a deep copy with a storm Duration turned into Until.
func (f Faults) clone(now time.Time) Faults {
	out := Faults{Latency: maps.Clone(f.Latency), Errors: maps.Clone(f.Errors)}
	if f.Storm != nil {
		s := *f.Storm
		if s.Until.IsZero() {
			s.Until = now.Add(time.Duration(s.Duration))
		}
		out.Storm = &s
	}
	if f.OperationFailure != nil {
		o := *f.OperationFailure
		out.OperationFailure = &o
	}
	return out
}

// latency is the extra delay for op.
func (f *Faults) latency(op string) time.Duration {
	return time.Duration(f.Latency[op] + f.Latency[AllOperations])
}

// errorFor returns the error fault for op, if any.
func (f *Faults) errorFor(op string) (ErrorFault, bool) {
	if e, ok := f.Errors[op]; ok {
		return e, true
	}
	e, ok := f.Errors[AllOperations]
	return e, ok
}
