package api

import (
	"context"
	"errors"
	"fmt"
)

// Code classifies an error on the wire. Codes are strings so that a code
// added by a newer version reaches an older client intact.
type Code string

// Error codes.
const (
	// CodeTryAgain: the call may succeed later (pool empty, daemon starting
	// or stopping). The plugin maps it to CNI error 11.
	CodeTryAgain Code = "TryAgain"
	// CodeNotReady: the daemon is not ready (no cloud sync yet).
	CodeNotReady Code = "NotReady"
	// CodeInvalidRequest: the request is malformed or fails validation.
	CodeInvalidRequest Code = "InvalidRequest"
	// CodeNotFound: the attachment is unknown.
	CodeNotFound Code = "NotFound"
	// CodeVersionMismatch: the peers speak different major versions.
	CodeVersionMismatch Code = "VersionMismatch"
	// CodePermissionDenied: the peer's uid is not allowed.
	CodePermissionDenied Code = "PermissionDenied"
	// CodeDeadlineExceeded: the call's deadline passed in the daemon.
	CodeDeadlineExceeded Code = "DeadlineExceeded"
	// CodeInternal: anything else.
	CodeInternal Code = "Internal"
)

// Error is an error with a machine-readable code. A Handler returns it (also
// wrapped) to choose the code the client sees; the Client returns it (wrapped)
// for every error response, so callers use errors.As or the Is... helpers.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (%s)", e.Message, e.Code)
}

// Is makes an error with CodeDeadlineExceeded match context.DeadlineExceeded,
// so that errors.Is(err, context.DeadlineExceeded) holds whichever side
// noticed the deadline first.
func (e *Error) Is(target error) bool {
	return e.Code == CodeDeadlineExceeded && target == context.DeadlineExceeded
}

// ErrUnreachable is wrapped by every client error that means the daemon
// could not be reached: no socket file, nothing listening, no permission to
// connect. Such a call did not reach the daemon.
var ErrUnreachable = errors.New("ipamd unreachable")

// ErrNoResponse is wrapped by client errors where the connection closed
// before the response arrived, e.g. because the daemon was killed or
// restarted mid-call. Unlike ErrUnreachable, the call may have reached the
// daemon and taken effect.
var ErrNoResponse = errors.New("connection closed before a response")

// CodeOf returns the code of the *Error in err's chain, or "" if there is none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsTryAgain reports whether err carries CodeTryAgain.
func IsTryAgain(err error) bool { return CodeOf(err) == CodeTryAgain }

// IsNotReady reports whether err carries CodeNotReady.
func IsNotReady(err error) bool { return CodeOf(err) == CodeNotReady }

// IsNotFound reports whether err carries CodeNotFound.
func IsNotFound(err error) bool { return CodeOf(err) == CodeNotFound }

// IsUnreachable reports whether err means that the daemon could not be
// reached at all.
func IsUnreachable(err error) bool { return errors.Is(err, ErrUnreachable) }
