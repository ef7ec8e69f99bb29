package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// report prints progress lines, tables and check results, and counts the
// checks.
type report struct {
	out   io.Writer
	start time.Time

	mu       sync.Mutex // guards the counters
	passed   int
	failed   int
	failures []string
}

func newReport(out io.Writer) *report { return &report{out: out, start: time.Now()} }

// step prints a progress line with the time since the start.
func (r *report) step(format string, args ...any) {
	fmt.Fprintf(r.out, "\n[%5.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

// note prints an indented line under the current step.
func (r *report) note(format string, args ...any) {
	fmt.Fprintf(r.out, "         %s\n", fmt.Sprintf(format, args...))
}

// check records a check and returns its result cell: "ok" or "FAIL".
func (r *report) check(what string, err error) string {
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

// checkLine records a check and prints it as one line.
func (r *report) checkLine(what string, err error) {
	res := r.check(what, err)
	if err != nil {
		fmt.Fprintf(r.out, "         %-4s %s: %v\n", res, what, err)
		return
	}
	fmt.Fprintf(r.out, "         %-4s %s\n", res, what)
}

// table prints rows under a header, indented, with aligned columns.
func (r *report) table(header []string, rows [][]string) {
	tw := tabwriter.NewWriter(r.out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "         %s\n", strings.Join(header, "\t"))
	for _, row := range rows {
		fmt.Fprintf(tw, "         %s\n", strings.Join(row, "\t"))
	}
	_ = tw.Flush()
}

// summary prints the failures and the final line.
func (r *report) summary() {
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
	fmt.Fprintf(r.out, "\nvnet-demo: %d checks passed, %d failed in %.1fs: %s\n",
		r.passed, r.failed, time.Since(r.start).Seconds(), verdict)
}

func (r *report) ok() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed == 0
}
