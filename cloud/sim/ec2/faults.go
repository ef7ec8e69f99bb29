package ec2

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// AllActions is the Faults key that applies to every action.
const AllActions = "*"

// Faults are injected into EC2 requests after authentication, before
// throttling and the API. They are also the JSON document of the admin
// endpoint /faults.
type Faults struct {
	// Latency adds a delay to requests of an action (e.g.
	// "AssignPrivateIpAddresses", or "*" for all); both apply.
	Latency map[string]Duration `json:"latency,omitempty"`
	// Errors answers requests of an action with an EC2 error at a rate. The
	// action's own entry is used before "*".
	Errors map[string]ErrorFault `json:"errors,omitempty"`
	// Storm answers every request with 503 RequestLimitExceeded while it
	// lasts.
	Storm *Storm `json:"storm,omitempty"`
}

// ErrorFault answers a fraction Rate (0..1) of the requests with Status and
// an EC2 error with Code.
type ErrorFault struct {
	Rate    float64 `json:"rate"`
	Status  int     `json:"status"`
	Code    string  `json:"code"`
	Message string  `json:"message,omitempty"`
}

// Storm is a throttling storm. Duration is turned into Until when the
// faults are set.
type Storm struct {
	Duration Duration  `json:"duration,omitzero"`
	Until    time.Time `json:"until,omitzero"`
}

// Duration is a duration in the faults document (see simadmin.Duration).
type Duration = simadmin.Duration

func (f Faults) validate() error {
	var errs []error
	for a, d := range f.Latency {
		if d < 0 {
			errs = append(errs, fmt.Errorf("latency of %s is negative", a))
		}
	}
	for a, e := range f.Errors {
		if e.Rate < 0 || e.Rate > 1 {
			errs = append(errs, fmt.Errorf("error rate of %s is outside 0..1", a))
		}
		if e.Status < 400 || e.Status > 599 {
			errs = append(errs, fmt.Errorf("error status of %s is %d, want 4xx or 5xx", a, e.Status))
		}
		if e.Code == "" {
			errs = append(errs, fmt.Errorf("error code of %s is empty", a))
		}
	}
	if s := f.Storm; s != nil && s.Duration < 0 {
		errs = append(errs, errors.New("storm duration must not be negative"))
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
	return out
}

func (f *Faults) latency(action string) time.Duration {
	return time.Duration(f.Latency[action] + f.Latency[AllActions])
}

func (f *Faults) errorFor(action string) (ErrorFault, bool) {
	if e, ok := f.Errors[action]; ok {
		return e, true
	}
	e, ok := f.Errors[AllActions]
	return e, ok
}
