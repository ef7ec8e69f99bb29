package arm

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// apiError is an ARM error response: an HTTP status and the body
// {"error":{"code":..., "message":..., "details":[...]}}.
type apiError struct {
	status  int
	code    string
	message string
	details []apiError
	// retryAfter, when positive, is sent as Retry-After (whole seconds, at
	// least one).
	retryAfter time.Duration
	// challenge, when set, is sent as WWW-Authenticate.
	challenge string
}

func newAPIError(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// errorJSON is the wire form of an ARM error.
type errorJSON struct {
	Code    string      `json:"code"`
	Message string      `json:"message"`
	Details []errorJSON `json:"details"`
}

func (e *apiError) toJSON() errorJSON {
	out := errorJSON{Code: e.code, Message: e.message, Details: []errorJSON{}}
	for i := range e.details {
		out.Details = append(out.Details, e.details[i].toJSON())
	}
	return out
}

// write sends the error as the response.
func (e *apiError) write(w http.ResponseWriter) {
	if e.challenge != "" {
		w.Header().Set("WWW-Authenticate", e.challenge)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ceilSeconds(e.retryAfter)))
	}
	writeJSON(w, e.status, struct {
		Error errorJSON `json:"error"`
	}{e.toJSON()})
}

// ceilSeconds rounds d up to whole seconds, at least one.
func ceilSeconds(d time.Duration) int {
	s := int((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// writeJSON sends v, which may be an SDK model with its own MarshalJSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "marshal response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func errNotFound(id string) *apiError {
	return newAPIError(http.StatusNotFound, CodeNotFound, "Resource %s not found.", id)
}

func errResourceNotFound(typ, name, rg string) *apiError {
	return newAPIError(http.StatusNotFound, CodeResourceNotFound,
		"The Resource '%s/%s' under resource group '%s' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix", typ, name, rg)
}

func errBadRequestFormat(err error) *apiError {
	return newAPIError(http.StatusBadRequest, CodeInvalidRequestFormat, "Cannot parse the request: %v", err)
}

func errPreconditionFailed(have, want string) *apiError {
	return newAPIError(http.StatusPreconditionFailed, CodePreconditionFailed,
		"Precondition failed: the resource's ETag %s does not match If-Match %s.", have, want)
}

// errAnotherOperation is what Azure's network resource provider answers to a
// write on a resource that another operation is still updating.
func errAnotherOperation(opID, resourceID string, wait time.Duration) *apiError {
	secs := ceilSeconds(wait)
	return &apiError{
		status:  http.StatusTooManyRequests,
		code:    CodeRetryable,
		message: "A retryable error occurred.",
		details: []apiError{{
			code: CodeAnotherOperation,
			message: fmt.Sprintf("Operation PutNetworkResourceOperation (%s) is updating resource %s. The call can be retried in %d seconds.",
				opID, resourceID, secs),
		}},
		retryAfter: time.Duration(secs) * time.Second,
	}
}
