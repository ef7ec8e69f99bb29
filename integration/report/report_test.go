package report

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestReportCountsAndLastLine(t *testing.T) {
	var b bytes.Buffer
	r := New("demo", &b)
	r.Step("step %d", 1)
	r.CheckLine("first", nil)
	if got := r.Check("second", errors.New("boom")); got != "FAIL" {
		t.Errorf("Check with an error = %q, want FAIL", got)
	}
	r.Table([]string{"A", "BB"}, [][]string{{"x", "y"}})
	if r.OK() {
		t.Error("OK after a failed check")
	}
	if p, f := r.Counts(); p != 1 || f != 1 {
		t.Errorf("Counts = %d, %d; want 1, 1", p, f)
	}
	r.Summary()
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; !regexp.MustCompile(`^demo: 1 checks passed, 1 failed in [0-9.]+s: SOME CHECKS FAILED$`).MatchString(last) {
		t.Errorf("last line %q", last)
	}
	for _, want := range []string{"] step 1", "ok   first", "second: boom", "A  BB"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
