package arm

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Status values of an asynchronous operation.
const (
	statusInProgress = "InProgress"
	statusSucceeded  = "Succeeded"
	statusFailed     = "Failed"
)

// keepOperations is how long a finished operation can still be polled.
const keepOperations = 10 * time.Minute

// operation is a long-running operation. It reports InProgress until doneAt
// and then commits its change (finish(true)) or, when a fault fails it,
// drops it (finish(false)).
type operation struct {
	id     string
	method string
	doneAt time.Time
	status string
	err    *apiError
	// result, when set by finish, is the body the Location URL answers
	// with 200 once the operation succeeded (a POST's result); without
	// it the Location URL answers 204.
	result any
	finish func(ok bool) // called with Server.mu held
	timer  *time.Timer
}

// startOpLocked registers a new operation that completes after
// OperationDuration, lazily on the next read or from its timer.
func (s *Server) startOpLocked(method string, now time.Time, finish func(ok bool)) *operation {
	op := &operation{
		id:     uuid.NewString(),
		method: method,
		doneAt: now.Add(s.cfg.OperationDuration),
		status: statusInProgress,
		finish: finish,
	}
	s.ops[op.id] = op
	s.inflight[op.id] = op
	op.timer = time.AfterFunc(s.cfg.OperationDuration, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.completeLocked(op)
	})
	return op
}

// advanceLocked completes every operation whose time has come, oldest
// first, so that reads see exactly the operations that report Succeeded.
func (s *Server) advanceLocked(now time.Time) {
	if s.closed {
		return
	}
	var due []*operation
	for _, op := range s.inflight {
		if !now.Before(op.doneAt) {
			due = append(due, op)
		}
	}
	slices.SortFunc(due, func(a, b *operation) int { return a.doneAt.Compare(b.doneAt) })
	for _, op := range due {
		s.completeLocked(op)
	}
	s.effectLocked(now)
	if now.Sub(s.pruned) > time.Minute {
		s.pruned = now
		for id, op := range s.ops {
			if op.status != statusInProgress && now.Sub(op.doneAt) > keepOperations {
				delete(s.ops, id)
			}
		}
	}
}

// completeLocked ends op, unless it has ended already or the server is
// closed.
func (s *Server) completeLocked(op *operation) {
	if s.closed || op.status != statusInProgress {
		return
	}
	delete(s.inflight, op.id)
	op.timer.Stop()
	s.faultsMu.Lock()
	fail := s.faults.OperationFailure
	s.faultsMu.Unlock()
	if fail != nil && fail.Rate > 0 && rand.Float64() < fail.Rate {
		code, msg := fail.Code, fail.Message
		if code == "" {
			code = CodeOperationFailedDefault
		}
		if msg == "" {
			msg = "An error occurred."
		}
		op.status = statusFailed
		op.err = newAPIError(http.StatusInternalServerError, code, "%s", msg)
		op.finish(false)
		s.log.Info("arm operation failed", "op", op.id, "code", code)
		return
	}
	op.status = statusSucceeded
	op.finish(true)
	if op.method != http.MethodPost { // a POST here only reads
		s.notifyLocked()
	}
}

// setPollHeaders advertises the poll interval: Retry-After in whole seconds
// when it is at least one second, else retry-after-ms. azcore reads
// retry-after-ms, x-ms-retry-after-ms and Retry-After, in that order.
func (s *Server) setPollHeaders(h http.Header) {
	d := s.cfg.PollInterval
	if d >= time.Second {
		h.Set("Retry-After", strconv.Itoa(int(d/time.Second)))
		return
	}
	h.Set("Retry-After-Ms", strconv.FormatInt(max(d.Milliseconds(), 1), 10))
}

// acceptLRO sets the headers of a response that starts op.
func (s *Server) acceptLRO(w http.ResponseWriter, r *http.Request, op *operation) {
	w.Header().Set("Azure-AsyncOperation", s.operationURL(r, "operations", op.id))
	if op.method == http.MethodDelete || op.method == http.MethodPost {
		w.Header().Set("Location", s.operationURL(r, "operationResults", op.id))
	}
	s.setPollHeaders(w.Header())
}

// getOperation answers a poll of the Azure-AsyncOperation URL.
func (s *Server) getOperation(w http.ResponseWriter, id string) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	op := s.ops[id]
	var status string
	var opErr *apiError
	if op != nil {
		status, opErr = op.status, op.err
	}
	s.mu.Unlock()
	if op == nil {
		newAPIError(http.StatusNotFound, CodeNotFound, "Operation %s not found.", id).write(w)
		return
	}
	body := struct {
		Status string     `json:"status"`
		Error  *errorJSON `json:"error,omitempty"`
	}{Status: status}
	if opErr != nil {
		e := opErr.toJSON()
		body.Error = &e
	}
	if status == statusInProgress {
		s.setPollHeaders(w.Header())
	}
	writeJSON(w, http.StatusOK, body)
}

// getOperationResult answers a poll of the Location URL of a DELETE or a
// POST: 202 while in progress, when done 200 with the operation's result or
// 204 when it has none.
func (s *Server) getOperationResult(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	s.advanceLocked(time.Now())
	op := s.ops[id]
	var status string
	var opErr *apiError
	var result any
	if op != nil {
		status, opErr, result = op.status, op.err, op.result
	}
	s.mu.Unlock()
	switch {
	case op == nil:
		newAPIError(http.StatusNotFound, CodeNotFound, "Operation %s not found.", id).write(w)
	case status == statusInProgress:
		w.Header().Set("Location", s.operationURL(r, "operationResults", id))
		s.setPollHeaders(w.Header())
		w.WriteHeader(http.StatusAccepted)
	case status == statusFailed:
		opErr.write(w)
	case result != nil:
		writeJSON(w, http.StatusOK, result)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
