package integration

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/vnet-cni/vnet-cni"

// forbidden reports why the product binary main may not link pkg, or "".
type forbidden func(pkg string) string

func hasPrefixPath(pkg, prefix string) bool {
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

// productRule: no binary that ships links testing, the simulator, the
// integration harness or the test helpers.
func productRule(pkg string) string {
	switch {
	case hasPrefixPath(pkg, "testing"):
		return "testing"
	case hasPrefixPath(pkg, module+"/cloud/sim"):
		return "the simulator"
	case hasPrefixPath(pkg, module+"/integration"):
		return "the integration harness"
	case hasPrefixPath(pkg, module+"/internal/nstest"):
		return "the test helpers"
	}
	return ""
}

// pluginRule: the plugin, exec'd per pod, links no cloud SDK, no Kubernetes
// client and none of the daemon's side (server, daemon, store, config).
func pluginRule(pkg string) string {
	if why := productRule(pkg); why != "" {
		return why
	}
	for _, p := range []string{"github.com/Azure", "github.com/aws", "k8s.io", "sigs.k8s.io"} {
		if hasPrefixPath(pkg, p) {
			return "a cloud SDK or Kubernetes client (" + p + ")"
		}
	}
	for _, p := range []string{"cloud", "ipamd/server", "ipamd/daemon", "ipamd/store", "ipamd/config"} {
		if hasPrefixPath(pkg, module+"/"+p) {
			return "vnet-ipamd's side (" + p + ")"
		}
	}
	return ""
}

// toolRule: the demo, the benchmark and the soak may link the simulator and
// the harness, but they are programs: no testing, no test helpers.
func toolRule(pkg string) string {
	switch {
	case hasPrefixPath(pkg, "testing"):
		return "testing"
	case hasPrefixPath(pkg, module+"/internal/nstest"):
		return "the test helpers"
	}
	return ""
}

// TestProductDependencies checks the whole dependency graph of the shipped
// binaries, which the depguard rules of .golangci.yml (one import at a time)
// cannot see: a transitive import of testing or the simulator fails here.
// vnet-sim is the simulator itself and exempt. No root needed.
func TestProductDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	for _, tc := range []struct {
		main string
		rule forbidden
	}{
		{"./cni/cmd/vnet-cni", pluginRule},
		{"./ipamd/cmd/vnet-ipamd", productRule},
		{"./integration/cmd/vnet-demo", toolRule},
		{"./integration/cmd/vnet-bench", toolRule},
		{"./integration/cmd/vnet-soak", toolRule},
		{"./integration/cmd/vnet-k8s-bins", toolRule},
	} {
		t.Run(tc.main, func(t *testing.T) {
			deps := goListDeps(t, tc.main)
			if len(deps) < 10 {
				t.Fatalf("go list -deps %s: only %d packages: %q", tc.main, len(deps), deps)
			}
			for _, pkg := range deps {
				if why := tc.rule(pkg); why != "" {
					t.Errorf("%s links %s: %s", tc.main, pkg, why)
				}
			}
		})
	}
}

// TestDependencyRules makes sure the rules catch what they must.
func TestDependencyRules(t *testing.T) {
	for _, tc := range []struct {
		pkg            string
		plugin, daemon bool // forbidden
	}{
		{"testing", true, true},
		{"testing/fstest", true, true},
		{"testingx", false, false},
		{module + "/cloud/sim/simca", true, true},
		{module + "/integration/cluster", true, true},
		{module + "/internal/nstest", true, true},
		{module + "/internal/nsnet", false, false},
		{module + "/ipamd/api", false, false},
		{module + "/ipamd/server", true, false},
		{module + "/ipamd/daemon", true, false},
		{module + "/ipamd/store", true, false},
		{module + "/cloud/azure", true, false},
		{"github.com/Azure/azure-sdk-for-go/sdk/azcore", true, false},
		{"github.com/aws/aws-sdk-go-v2/service/ec2", true, false},
		{"k8s.io/client-go/kubernetes", true, false},
		{"github.com/vishvananda/netlink", false, false},
	} {
		if got := pluginRule(tc.pkg) != ""; got != tc.plugin {
			t.Errorf("plugin forbids %s: %v, want %v", tc.pkg, got, tc.plugin)
		}
		if got := productRule(tc.pkg) != ""; got != tc.daemon {
			t.Errorf("daemon forbids %s: %v, want %v", tc.pkg, got, tc.daemon)
		}
		if got, want := toolRule(tc.pkg) != "", strings.HasPrefix(tc.pkg, "testing/") || tc.pkg == "testing" || tc.pkg == module+"/internal/nstest"; got != want {
			t.Errorf("tools forbid %s: %v, want %v", tc.pkg, got, want)
		}
	}
}

// goListDeps lists every package main links (the build of the binary, not
// of its tests, with cgo off as make build has it), from the module root.
func goListDeps(t *testing.T, main string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", main)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", main, err, stderr)
	}
	return strings.Fields(string(out))
}
