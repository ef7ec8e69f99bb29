// Package report prints what the demos do for a person reading a
// terminal: progress steps with the time since the start, short tables,
// checks marked ok or FAIL, and a last line with the counts.
package report

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Report counts checks and prints steps, notes, tables and the summary.
// It is safe for concurrent use.
type Report struct {
	name  string
	out   io.Writer
	start time.Time

	mu       sync.Mutex // guards the counters and writes
	passed   int
	failed   int
	failures []string
}

// New returns a report that writes to out; name starts the last line.
func New(name string, out io.Writer) *Report {
	return &Report{name: name, out: out, start: time.Now()}
}

// Step prints a progress line with the time since the start.
func (r *Report) Step(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.out, "\n[%5.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

// Note prints an indented line under the current step.
func (r *Report) Note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.out, "         %s\n", fmt.Sprintf(format, args...))
}

// Check records a check and returns its result cell: "ok" or "FAIL".
func (r *Report) Check(what string, err error) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.passed++
		return "ok"
	}
	r.failed++
	r.failures = append(r.failures, fmt.Sprintf("%s: %v", what, err))
	return "FAIL"
}

// CheckLine records a check and prints it as one line.
func (r *Report) CheckLine(what string, err error) {
	res := r.Check(what, err)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		fmt.Fprintf(r.out, "         %-4s %s: %v\n", res, what, err)
		return
	}
	fmt.Fprintf(r.out, "         %-4s %s\n", res, what)
}

// Table prints rows under a header, indented, with aligned columns.
func (r *Report) Table(header []string, rows [][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tw := tabwriter.NewWriter(r.out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "         %s\n", strings.Join(header, "\t"))
	for _, row := range rows {
		fmt.Fprintf(tw, "         %s\n", strings.Join(row, "\t"))
	}
	_ = tw.Flush()
}

// Summary prints the failures and the last line: "<name>: N checks
// passed, M failed in Ts: all checks passed" (or "SOME CHECKS FAILED").
func (r *Report) Summary() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failures) > 0 {
		fmt.Fprintln(r.out, "\nfailed checks:")
		for _, f := range r.failures {
			fmt.Fprintf(r.out, "  - %s\n", f)
		}
	}
	verdict := "all checks passed"
	if r.failed > 0 {
		verdict = "SOME CHECKS FAILED"
	}
	fmt.Fprintf(r.out, "\n%s: %d checks passed, %d failed in %.1fs: %s\n", r.name, r.passed, r.failed, time.Since(r.start).Seconds(), verdict)
}

// OK says whether every check passed.
func (r *Report) OK() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed == 0
}

// Counts returns the passed and failed checks so far.
func (r *Report) Counts() (passed, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passed, r.failed
}
