package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestCopyPlugin: a fresh copy, an identical one left alone, a changed
// source replaced, no temporary file left behind, mode 0755.
func TestCopyPlugin(t *testing.T) {
	src := filepath.Join(t.TempDir(), pluginName)
	binDir := t.TempDir()
	dst := filepath.Join(binDir, pluginName)
	for i, step := range []struct {
		content   string
		wantWrite bool
	}{{"v1", true}, {"v1", false}, {"v2", true}} {
		if err := os.WriteFile(src, []byte(step.content), 0o700); err != nil {
			t.Fatal(err)
		}
		wrote, err := copyPlugin(src, dst)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if wrote != step.wantWrite {
			t.Errorf("step %d: wrote %v, want %v", i, wrote, step.wantWrite)
		}
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, []byte(step.content)) {
			t.Errorf("step %d: installed %q, %v", i, got, err)
		}
		if st, err := os.Stat(dst); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("step %d: mode %v, %v", i, st.Mode(), err)
		}
		ents, _ := os.ReadDir(binDir)
		if len(ents) != 1 {
			t.Errorf("step %d: bin dir holds %d entries", i, len(ents))
		}
	}
	if err := os.Chmod(dst, 0o644); err != nil {
		t.Fatal(err)
	}
	if wrote, err := copyPlugin(src, dst); err != nil || !wrote {
		t.Errorf("a wrong mode not repaired: wrote %v, %v", wrote, err)
	}
	if _, err := copyPlugin(filepath.Join(t.TempDir(), "missing"), dst); err == nil {
		t.Error("a missing source accepted")
	}
}

// TestPrepareSysctls: the init step sets what the mode's EnsureNode
// checks, nothing when the plugin keeps the datapath.
func TestPrepareSysctls(t *testing.T) {
	keys := func(c config.Config) []string {
		var ks []string
		for _, s := range prepareSysctls(c) {
			ks = append(ks, s.Key)
		}
		return ks
	}
	bridge := config.Default()
	routedCfg := config.Default()
	routedCfg.Mode = config.ModeRouted
	plugin := config.Default()
	plugin.NodeSetup = config.NodeSetupPlugin
	for name, c := range map[string]struct {
		cfg  config.Config
		want []string
	}{
		"bridge": {bridge, []string{"net/bridge/bridge-nf-call-iptables", "net/ipv4/ip_forward"}},
		"routed": {routedCfg, []string{"net/ipv4/ip_forward"}},
		"plugin": {plugin, nil},
	} {
		if diff := cmp.Diff(c.want, keys(c.cfg)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
}
