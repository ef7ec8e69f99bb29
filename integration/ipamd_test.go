package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// TestDaemonBinary checks the daemon as an operator sees it: the status
// command, the conflist it wrote, metrics and health on loopback inside the
// node, and a clean SIGTERM.
func TestDaemonBinary(t *testing.T) {
	ctx := context.Background()
	e := newE2EEnv(t, 1, func(_ string, cfg *config.Config) { cfg.WarmIPTarget, cfg.IPAddressCount, cfg.BatchSize = 4, 6, 2 })
	e.start(t)
	c := e.c
	n := c.Nodes[0]
	pod, err := n.NewPod("web", "frontend-0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Add(ctx, pod); err != nil {
		t.Fatal(err)
	}

	// The conflist kubelet reads: vnet-cni chained with portmap.
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type        string `json:"type"`
			IPAMDSocket string `json:"ipamdSocket"`
		} `json:"plugins"`
	}
	data, err := os.ReadFile(n.ConflistPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Plugins) != 2 || conf.Plugins[0].Type != "vnet-cni" || conf.Plugins[1].Type != "portmap" || conf.Plugins[0].IPAMDSocket != n.Config.SocketPath {
		t.Errorf("conflist %s", data)
	}

	// vnet-ipamd status: a readable table with the pod's assignment.
	out, err := exec.Command("../bin/vnet-ipamd", "status", "--socket", n.Config.SocketPath).CombinedOutput()
	if err != nil {
		t.Fatalf("vnet-ipamd status: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"ready", "yes", n.PrimaryIP, "1 assigned", pod.IP.String(), "web/frontend-0", "assigned"} {
		if !strings.Contains(text, want) {
			t.Errorf("status output lacks %q:\n%s", want, text)
		}
	}
	out, err = exec.Command("../bin/vnet-ipamd", "status", "--socket", n.Config.SocketPath, "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		Status struct {
			Ready bool `json:"ready"`
			Pool  struct{ Free, Assigned int }
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &js); err != nil || !js.Status.Ready || js.Status.Pool.Assigned != 1 {
		t.Errorf("status --json: %v %s", err, out)
	}

	// Metrics and health: loopback inside the node only.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsnet.DialContextIn(n.NSPath)}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + n.Config.MetricsAddr.String() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	_, metrics := get("/metrics")
	st, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	free := metricValue(t, metrics, `vnetcni_ipamd_addresses{state="free"}`)
	if int(free) != st.Pool.Free {
		t.Errorf("metric free = %v, status free = %d", free, st.Pool.Free)
	}
	if v := metricValue(t, metrics, `vnetcni_ipamd_addresses{state="assigned"}`); v != 1 {
		t.Errorf("metric assigned = %v, want 1", v)
	}
	if v := metricValue(t, metrics, `vnetcni_ipamd_cloud_calls_total{operation="add_ips",result="ok"}`); v < 1 {
		t.Errorf("no successful add_ips call counted")
	}
	if v := metricValue(t, metrics, `vnetcni_ipamd_allocations_total{result="ok"}`); v != 1 {
		t.Errorf("allocations ok = %v, want 1", v)
	}
	if v := metricValue(t, metrics, `vnetcni_ipamd_ready`); v != 1 {
		t.Errorf("ready = %v", v)
	}
	if _, err := http.Get("http://" + n.Config.MetricsAddr.String() + "/metrics"); err == nil {
		t.Error("metrics reachable from the host namespace; they must be on the node's loopback only")
	}

	// SIGHUP: the daemon re-reads the file's pool targets and grows the
	// pool through the cloud; a changed field other than the targets is
	// logged as needing a restart, and a broken file changes nothing.
	n.Config.WarmIPTarget, n.Config.BatchSize = 12, 4
	n.Config.LogLevel = config.LogDebug
	if err := n.WriteConfig(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(n.PID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err = n.Status(ctx)
		if err != nil {
			t.Fatalf("status after SIGHUP: %v", err)
		}
		if st.Pool.Free >= 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %+v 15 s after SIGHUP with warmIPTarget 12", st.Pool)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.storeMatchesNIC(t, n)
	if err := os.WriteFile(n.ConfigPath, []byte(`{"warmIPTarget": -3}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(n.PID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			logData, _ := os.ReadFile(n.LogPath)
			if strings.Contains(string(logData), want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %q:\n%s", want, logData)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitLog(`"fields":["logLevel"]`)
	waitLog("keeping the running configuration")
	if !n.Running() {
		t.Fatal("vnet-ipamd ended after SIGHUP")
	}
	if st, err := n.Status(ctx); err != nil || st.Pool.Free < 12 {
		t.Errorf("after a broken reload: %+v, %v; want the pool kept", st.Pool, err)
	}

	// SIGTERM: the daemon stops cleanly and removes its socket.
	if err := n.StopIPAMD(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Config.SocketPath); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
	logData, _ := os.ReadFile(n.LogPath)
	if !strings.Contains(string(logData), "vnet-ipamd stopped") {
		t.Errorf("no clean stop in the log:\n%s", logData)
	}
}

func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		t.Errorf("metric %s not found", series)
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Errorf("metric %s: %v", series, err)
	}
	return v
}
