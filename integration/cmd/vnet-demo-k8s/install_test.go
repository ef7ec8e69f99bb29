package main

import (
	"fmt"
	"testing"
)

// TestColumns splits kubectl's table at its header's columns, a name with
// one space and empty cells included.
func TestColumns(t *testing.T) {
	out := "NAME    FREE   LAST ERROR   READY\n" +
		"node0   5                   true\n" +
		"node1   12     throttled    false\n"
	header, rows := columns(out)
	if got := fmt.Sprintf("%q %q", header, rows); got != `["NAME" "FREE" "LAST ERROR" "READY"] [["node0" "5" "" "true"] ["node1" "12" "throttled" "false"]]` {
		t.Errorf("columns: %s", got)
	}
	if h, _ := columns("No resources found\n"); h != nil {
		t.Errorf("one line: header %q, want none", h)
	}
}
