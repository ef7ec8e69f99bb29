package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// badCall is one execution of the real bin/vnet-cni, as a runtime makes
// it: environment and stdin, from inside the node.
type badCall struct {
	env   map[string]string
	stdin []byte
	uid   uint32 // 0: root
}

// badOutcome is what the runtime sees.
type badOutcome struct {
	exitCode int
	err      *types.Error // decoded from stdout on failure
	stdout   string
	stderr   string
}

func badRun(t *testing.T, n *cluster.Node, bin string, c badCall) badOutcome {
	t.Helper()
	var out badOutcome
	var stdout, stderr bytes.Buffer
	if c.uid != 0 {
		bin = execCopyForOtherUID(t, bin)
	}
	cmd := exec.Command(bin)
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(c.stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if c.uid != 0 {
		cmd.Dir = filepath.Dir(bin)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.uid, Gid: c.uid}}
	}
	err := n.InNode(cmd.Run)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		out.exitCode = ee.ExitCode()
	case err != nil:
		t.Fatalf("exec %s: %v", bin, err)
	}
	out.stdout, out.stderr = stdout.String(), stderr.String()
	if out.exitCode != 0 {
		var e types.Error
		if jerr := json.Unmarshal(stdout.Bytes(), &e); jerr == nil && e.Code != 0 {
			out.err = &e
		}
	}
	return out
}

// badSnapshot is what must not change when a call is refused: the
// daemon's assignments and the node's pod veths.
type badSnapshot struct {
	Assigned []string // "ip containerID/ifName"
	Veths    []string
}

func badSnap(t *testing.T, n *cluster.Node) badSnapshot {
	t.Helper()
	var s badSnapshot
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := n.Client().List(ctx, api.ListRequest{})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, a := range list.Addresses {
		if a.State == "assigned" {
			s.Assigned = append(s.Assigned, fmt.Sprintf("%s %s/%s", a.IP, a.ContainerID, a.IfName))
		}
	}
	nl := nstest.Netlink(t, n.NSPath)
	links, err := nl.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Type() == "veth" {
			s.Veths = append(s.Veths, l.Attrs().Name)
		}
	}
	slices.Sort(s.Assigned)
	slices.Sort(s.Veths)
	return s
}

// badConf is the node's vnet-cni configuration as a runtime hands it to
// the plugin (the conflist's first plugin with the list's name and version).
func badConf(t *testing.T, n *cluster.Node, version string, extra map[string]any) []byte {
	t.Helper()
	data, err := os.ReadFile(n.ConflistPath())
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	conf := list.Plugins[0]
	conf["name"] = list.Name
	conf["cniVersion"] = version
	for k, v := range extra {
		if v == nil {
			delete(conf, k)
		} else {
			conf[k] = v
		}
	}
	out, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBadInputPlugin is the plugin half of the bad-input catalogue (the
// table in docs/reliability.md): every bad call to the real plugin gets the
// right CNI error code and a clear message, and changes nothing on the
// node: the daemon's assignments and the node's veths are as before.
func TestBadInputPlugin(t *testing.T) {
	ctx := context.Background()
	e := newE2EEnv(t, 1, nil)
	e.start(t)
	prefix := e.desc.Prefix
	n := e.c.Nodes[0]
	bin, err := filepath.Abs(filepath.Join("..", "bin", "vnet-cni"))
	if err != nil {
		t.Fatal(err)
	}

	// A running pod, the target of the duplicate ADD and what a wrong GC
	// would release.
	good, err := n.NewPod("default", "good")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Add(ctx, good); err != nil {
		t.Fatalf("ADD good: %v", err)
	}
	// A fresh sandbox for the ADDs that must be refused.
	fresh, err := n.NewPod("default", "fresh")
	if err != nil {
		t.Fatal(err)
	}
	// A sandbox whose eth0 already exists (a bridge, not ours).
	taken, err := n.NewPod("default", "taken")
	if err != nil {
		t.Fatal(err)
	}
	if err := nsnet.Do(taken.NSPath, func() error {
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
	}); err != nil {
		t.Fatal(err)
	}
	notNetns := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(notNetns, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// ipamdSocket paths that cannot be vnet-ipamd's socket.
	sockFile := filepath.Join(t.TempDir(), "ipamd.sock")
	if err := os.WriteFile(sockFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sockDir := t.TempDir()
	sockLong := "/run/" + strings.Repeat("s", 120) + ".sock"
	manyExclusions := manyCIDRs(3000)

	nodeRoutes := routesOf(t, n.NSPath)
	add := func(p *cluster.Pod) map[string]string {
		return map[string]string{
			"CNI_COMMAND": "ADD", "CNI_CONTAINERID": p.ContainerID, "CNI_NETNS": p.NSPath, "CNI_IFNAME": "eth0",
			"CNI_PATH": filepath.Dir(bin), "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + p.Name,
		}
	}
	with := func(env map[string]string, kv ...string) map[string]string {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "<unset>" {
				delete(env, kv[i])
			} else {
				env[kv[i]] = kv[i+1]
			}
		}
		return env
	}
	conf := func(extra map[string]any) []byte { return badConf(t, n, "1.0.0", extra) }
	gcConf := func(valid any) []byte {
		return badConf(t, n, "1.1.0", map[string]any{"cni.dev/valid-attachments": valid})
	}
	gcEnv := func() map[string]string {
		return map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": filepath.Dir(bin)}
	}

	tests := []struct {
		name string
		call badCall
		// wantCode is the CNI error code; 0 means the call succeeds.
		wantCode uint
		// wantMsg must appear in the error's msg or details.
		wantMsg string
		// changes: the call may change the node (the duplicate ADD may
		// not, but it is compared with its own expectation).
		check func(t *testing.T, out badOutcome)
	}{
		{name: "missing CNI_COMMAND", call: badCall{env: with(add(fresh), "CNI_COMMAND", "<unset>"), stdin: conf(nil)},
			check: func(t *testing.T, out badOutcome) {
				if !strings.Contains(out.stderr, "CNI protocol versions supported") {
					t.Errorf("no version text on stderr: %q", out.stderr)
				}
			}},
		{name: "unknown CNI_COMMAND", call: badCall{env: with(add(fresh), "CNI_COMMAND", "MOVE"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "unknown CNI_COMMAND"},
		{name: "missing CNI_CONTAINERID", call: badCall{env: with(add(fresh), "CNI_CONTAINERID", "<unset>"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "CNI_CONTAINERID"},
		{name: "invalid CNI_CONTAINERID", call: badCall{env: with(add(fresh), "CNI_CONTAINERID", "../../etc"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "container"},
		{name: "missing CNI_NETNS", call: badCall{env: with(add(fresh), "CNI_NETNS", "<unset>"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "CNI_NETNS"},
		{name: "CNI_NETNS does not exist", call: badCall{env: with(add(fresh), "CNI_NETNS", "/run/netns/"+prefix+"-missing"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "invalid CNI_NETNS"},
		{name: "CNI_NETNS is not a netns", call: badCall{env: with(add(fresh), "CNI_NETNS", notNetns), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "invalid CNI_NETNS"},
		{name: "CNI_NETNS is the node's own namespace", call: badCall{env: with(add(fresh), "CNI_NETNS", n.NSPath), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "node's own network namespace",
			check: func(t *testing.T, _ badOutcome) {
				if diff := cmp.Diff(nodeRoutes, routesOf(t, n.NSPath)); diff != "" {
					t.Errorf("the node's routes changed (-before +after):\n%s", diff)
				}
			}},
		{name: "missing CNI_IFNAME", call: badCall{env: with(add(fresh), "CNI_IFNAME", "<unset>"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "CNI_IFNAME"},
		{name: "CNI_IFNAME too long", call: badCall{env: with(add(fresh), "CNI_IFNAME", "eth0123456789abc"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "interface name"},
		{name: "CNI_IFNAME with a slash", call: badCall{env: with(add(fresh), "CNI_IFNAME", "a/b"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "interface name"},
		{name: "malformed CNI_ARGS", call: badCall{env: with(add(fresh), "CNI_ARGS", "K8S_POD_NAME"), stdin: conf(nil)},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "CNI_ARGS"},
		{name: "bad JSON", call: badCall{env: add(fresh), stdin: []byte(`{"cniVersion":"1.0.0","name":`)},
			wantCode: types.ErrDecodingFailure, wantMsg: "unmarshal"},
		{name: "wrong JSON type", call: badCall{env: add(fresh), stdin: conf(map[string]any{"mtu": "1500"})},
			wantCode: types.ErrDecodingFailure, wantMsg: "cannot decode"},
		{name: "unknown cniVersion", call: badCall{env: add(fresh), stdin: conf(map[string]any{"cniVersion": "9.9.9"})},
			wantCode: types.ErrIncompatibleCNIVersion, wantMsg: "incompatible CNI versions"},
		{name: "missing network name", call: badCall{env: add(fresh), stdin: conf(map[string]any{"name": nil})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "name"},
		{name: "oversized stdin", call: badCall{env: add(fresh), stdin: conf(map[string]any{"padding": strings.Repeat("x", 2<<20)})},
			wantCode: types.ErrDecodingFailure, wantMsg: "too large"},
		{name: "mtu out of range", call: badCall{env: add(fresh), stdin: conf(map[string]any{"mtu": 100})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mtu"},
		{name: "ipamdTimeout out of range", call: badCall{env: add(fresh), stdin: conf(map[string]any{"ipamdTimeout": "1h"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdTimeout"},
		{name: "bridge name too long", call: badCall{env: add(fresh), stdin: conf(map[string]any{"bridge": "azure0123456789ab"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "bridge"},
		{name: "unsupported mode", call: badCall{env: add(fresh), stdin: conf(map[string]any{"mode": "transparent"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mode"},
		{name: "relative ipamdSocket", call: badCall{env: add(fresh), stdin: conf(map[string]any{"ipamdSocket": "ipamd.sock"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdSocket"},
		{name: "ipamdSocket is a regular file", call: badCall{env: add(fresh), stdin: conf(map[string]any{"ipamdSocket": sockFile})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdSocket"},
		{name: "ipamdSocket is a directory", call: badCall{env: add(fresh), stdin: conf(map[string]any{"ipamdSocket": sockDir})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdSocket"},
		{name: "ipamdSocket under a regular file", call: badCall{env: add(fresh), stdin: conf(map[string]any{"ipamdSocket": sockFile + "/ipamd.sock"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdSocket"},
		{name: "ipamdSocket too long for sun_path", call: badCall{env: add(fresh), stdin: conf(map[string]any{"ipamdSocket": sockLong})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdSocket"},
		{name: "DEL with ipamdSocket a regular file", call: badCall{env: with(add(fresh), "CNI_COMMAND", "DEL"), stdin: conf(map[string]any{"ipamdSocket": sockFile})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipamdSocket"},
		{name: "3,000 snatExclusions", call: badCall{env: add(fresh), stdin: conf(map[string]any{"snatExclusions": manyExclusions})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "snatExclusions 3000 entries, at most 32"},
		{name: "bridge equal to master", call: badCall{env: add(fresh), stdin: conf(map[string]any{"bridge": "eth0", "master": "eth0"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "bridge"},
		{name: "bad snatExclusions", call: badCall{env: add(fresh), stdin: conf(map[string]any{"snatExclusions": []string{"10.0.0.0/33"}})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "snatExclusions"},
		{name: "bad logLevel", call: badCall{env: add(fresh), stdin: conf(map[string]any{"logLevel": "trace"})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "logLevel"},
		{name: "ADD when the interface already exists in the pod", call: badCall{env: add(taken), stdin: conf(nil)},
			wantCode: types.ErrInternal, wantMsg: "eth0"},
		{name: "DEL of an unknown attachment", call: badCall{env: with(add(fresh), "CNI_COMMAND", "DEL"), stdin: conf(nil)}},
		{name: "GC with a malformed list (not a list)", call: badCall{env: gcEnv(), stdin: gcConf("everything")},
			wantCode: types.ErrDecodingFailure, wantMsg: "valid-attachments"},
		{name: "GC with a malformed list (bad container id)", call: badCall{env: gcEnv(), stdin: gcConf([]map[string]string{{"containerID": "a b", "ifname": "eth0"}})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "container id"},
		{name: "GC with a malformed list (no interface)", call: badCall{env: gcEnv(), stdin: gcConf([]map[string]string{{"containerID": good.ContainerID}})},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "interface name"},
		{name: "socket client that is not root", call: badCall{env: add(fresh), stdin: conf(nil), uid: 65534},
			wantCode: types.ErrInternal, wantMsg: "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := badSnap(t, n)
			out := badRun(t, n, bin, tt.call)
			switch {
			case tt.wantCode == 0 && out.exitCode != 0:
				t.Fatalf("exit %d, stdout %s", out.exitCode, out.stdout)
			case tt.wantCode != 0 && out.err == nil:
				t.Fatalf("exit %d without a CNI error; stdout %q stderr %q", out.exitCode, out.stdout, out.stderr)
			case tt.wantCode != 0 && out.err.Code != tt.wantCode:
				t.Fatalf("CNI error %d (%s: %s), want %d", out.err.Code, out.err.Msg, out.err.Details, tt.wantCode)
			case tt.wantCode != 0 && !strings.Contains(strings.ToLower(out.err.Msg+" "+out.err.Details), strings.ToLower(tt.wantMsg)):
				t.Fatalf("message %q (details %q) does not mention %q", out.err.Msg, out.err.Details, tt.wantMsg)
			}
			if out.err != nil {
				t.Logf("code %d: %s (%s)", out.err.Code, out.err.Msg, out.err.Details)
			}
			if tt.check != nil {
				tt.check(t, out)
			}
			if diff := cmp.Diff(before, badSnap(t, n)); diff != "" {
				t.Errorf("the node changed (-before +after):\n%s", diff)
			}
		})
	}

	t.Run("duplicate ADD", func(t *testing.T) {
		before := badSnap(t, n)
		ip := good.IP
		if _, err := n.Add(ctx, good); err != nil {
			t.Fatalf("second ADD of the same attachment: %v", err)
		}
		if good.IP != ip {
			t.Errorf("second ADD gave %s, the first %s", good.IP, ip)
		}
		if diff := cmp.Diff(before, badSnap(t, n)); diff != "" {
			t.Errorf("the node changed (-before +after):\n%s", diff)
		}
	})
	// A runtime's cache can hold a prevResult that no longer decodes: DEL
	// must still succeed and remove the veth and the assignment, or every
	// retry fails the same way and both stay behind.
	t.Run("DEL with an undecodable prevResult", func(t *testing.T) {
		victim, err := n.NewPod("default", "badprev")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Add(ctx, victim); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		hostVeth := linux.HostVethName(victim.ContainerID, "eth0")
		mine := func(s badSnapshot) []string {
			var out []string
			for _, e := range s.Assigned {
				if strings.Contains(e, victim.ContainerID) {
					out = append(out, e)
				}
			}
			if slices.Contains(s.Veths, hostVeth) {
				out = append(out, hostVeth)
			}
			return out
		}
		if got := mine(badSnap(t, n)); len(got) != 2 {
			t.Fatalf("before DEL, the snapshot holds %v of the pod, want its assignment and its veth", got)
		}
		env := with(add(victim), "CNI_COMMAND", "DEL")
		out := badRun(t, n, bin, badCall{env: env, stdin: conf(map[string]any{
			"prevResult": map[string]any{"cniVersion": "1.0.0", "ips": "not a list"},
		})})
		if out.exitCode != 0 {
			t.Fatalf("DEL exit %d: %s", out.exitCode, out.stdout)
		}
		if left := mine(badSnap(t, n)); len(left) > 0 {
			t.Errorf("left behind after DEL: %v", left)
		}
	})
	t.Run("the existing eth0 survived the refused ADD", func(t *testing.T) {
		err := nsnet.Do(taken.NSPath, func() error {
			l, err := netlink.LinkByName("eth0")
			if err == nil && l.Type() != "bridge" {
				err = fmt.Errorf("eth0 is a %s", l.Type())
			}
			return err
		})
		if err != nil {
			t.Error(err)
		}
	})
}

// TestBadInputDaemon is the daemon half of the catalogue: vnet-ipamd with a
// bad configuration file exits with status 1 and a message naming the
// field, before it creates its socket or its store.
func TestBadInputDaemon(t *testing.T) {
	bin, err := filepath.Abs(filepath.Join("..", "bin", "vnet-ipamd"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("vnet-ipamd not built: %v", err)
	}
	dir := t.TempDir()
	base := config.Default()
	base.SocketPath = filepath.Join(dir, "run", "ipamd.sock")
	base.StoreDir = filepath.Join(dir, "store")
	base.CNIConfDir = filepath.Join(dir, "net.d")
	base.ReleaseSpool = filepath.Join(dir, "spool")
	base.PluginLockDir = filepath.Join(dir, "lock")
	base.MetricsAddr = netip.MustParseAddrPort("127.0.0.1:10993")
	valid, err := json.Marshal(base)
	if err != nil {
		t.Fatal(err)
	}
	set := func(path string, v any) []byte {
		var doc map[string]any
		if err := json.Unmarshal(valid, &doc); err != nil {
			t.Fatal(err)
		}
		m := doc
		keys := strings.Split(path, ".")
		for _, k := range keys[:len(keys)-1] {
			m = m[k].(map[string]any)
		}
		m[keys[len(keys)-1]] = v
		out, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	tests := []struct {
		name    string
		doc     []byte
		wantMsg string
	}{
		{"not JSON", []byte("warmIPTarget: 5"), "parse config"},
		{"unknown field", set("warmIpTarget", 5), "warmIpTarget: unknown field"},
		{"warmIPTarget out of range", set("warmIPTarget", 300), "warmIPTarget: 300 out of range"},
		{"maxIPs zero", set("maxIPs", 0), "maxIPs: 0 out of range 1..1024"},
		{"batchSize negative", set("batchSize", -1), "batchSize: -1 out of range"},
		{"cooldown too long", set("cooldown", "2h"), "cooldown: 2h0m0s out of range"},
		{"resyncInterval not a duration", set("resyncInterval", 60), "resyncInterval"},
		{"metricsAddr not loopback", set("metricsAddr", "0.0.0.0:10093"), "metricsAddr"},
		{"socketPath relative", set("socketPath", "run/ipamd.sock"), "socketPath"},
		{"socketPath too long", set("socketPath", "/"+strings.Repeat("s", 120)), "socketPath"},
		{"cniVersion unknown", set("cniVersion", "0.4.0"), "cniVersion"},
		{"unknown credential", set("cloud.azure.credential", "password"), "cloud.azure.credential"},
		{"arm endpoint over http", set("cloud.azure.resourceManagerEndpoint", "http://management.azure.com"), "cloud.azure.resourceManagerEndpoint"},
		{"callTimeout too short", set("cloud.callTimeout", "10ms"), "cloud.callTimeout"},
		{"null value", set("logLevel", nil), "logLevel: null is not allowed"},
		{"snatExclusions not a CIDR", set("snatExclusions", []string{"10.0.0.0/33"}), `snatExclusions[0]: "10.0.0.0/33" is not an IPv4 CIDR`},
		{"too many snatExclusions", set("snatExclusions", manyCIDRs(3000)), "snatExclusions: 3000 entries, at most 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipamd.json")
			if err := os.WriteFile(path, tt.doc, 0o600); err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd := exec.Command(bin, "--config", path, "--node-name", "bad")
			cmd.Stderr = &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("vnet-ipamd did not exit with a bad configuration (killed: %v)", <-done)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1; stderr %q", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantMsg) {
				t.Errorf("stderr %q does not name %q", stderr.String(), tt.wantMsg)
			}
			t.Logf("%s", strings.TrimSpace(stderr.String()))
			for _, p := range []string{base.SocketPath, base.StoreDir, base.CNIConfDir} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s was created", p)
				}
			}
		})
	}
}

// routesOf lists the IPv4 routes of the namespace at nsPath, one string each.
func routesOf(t *testing.T, nsPath string) []string {
	t.Helper()
	routes, err := nstest.Netlink(t, nsPath).RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.String())
	}
	return out
}

// manyCIDRs returns n distinct IPv4 /24s.
func manyCIDRs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("172.%d.%d.0/24", 16+i/256, i%256)
	}
	return out
}
