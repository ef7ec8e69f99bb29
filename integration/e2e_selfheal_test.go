package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// nftIn runs nft inside a node's namespace, as an operator on the node would.
func nftIn(t *testing.T, n *cluster.Node, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", nsName(n.NSPath), "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s in %s: %v\n%s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out)
}

func nsName(nsPath string) string { return nsPath[strings.LastIndex(nsPath, "/")+1:] }

// reachAll checks that every pod answers from the other pods and the
// internet host answers every pod (through SNAT) within timeout.
func reachAll(pods []*cluster.Pod, internet netip.AddrPort, timeout time.Duration) error {
	return nsnet.Eventually(timeout, func() error {
		var errs []error
		for _, p := range pods {
			for _, q := range pods {
				if p == q {
					continue
				}
				if name, _, err := e2eDial(p.NSPath, netip.AddrPortFrom(q.IP, 80)); err != nil || name != q.Name {
					errs = append(errs, fmt.Errorf("%s -> %s: %q %w", p.Name, q.Name, name, err))
				}
			}
			if name, src, err := e2eDial(p.NSPath, internet); err != nil || src != e2eAddr(p.Node.PrimaryIP) {
				errs = append(errs, fmt.Errorf("%s -> internet: %q seeing %s, %w", p.Name, name, src, err))
			}
		}
		return errors.Join(errs...)
	})
}

// TestE2ESelfHeal damages a node's datapath and its conflist by hand while
// pods run, with no ADD or DEL afterwards: vnet-ipamd repairs each within
// seconds and the pods keep (or get back) their connectivity.
func TestE2ESelfHeal(t *testing.T) {
	e := newE2EEnv(t, 2, nil)
	e.start(t)
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	pods := []*cluster.Pod{e2eAddPod(t, n0, "a"), e2eAddPod(t, n0, "b"), e2eAddPod(t, n1, "c")}
	for _, p := range pods {
		e2eServe(t, p.NSPath, p.Name, netip.AddrPortFrom(p.IP, 80))
	}
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	if err := reachAll(pods, internet, 5*time.Second); err != nil {
		t.Fatalf("before any damage: %v", err)
	}
	// Pods coming and going are no repair.
	if log, err := os.ReadFile(n0.LogPath); err != nil || strings.Contains(string(log), "repaired the node's datapath") {
		t.Errorf("node0 repaired its datapath before anything damaged it (or its log is unreadable: %v)", err)
	}
	healthy := nftIn(t, n0, "list", "ruleset")
	for _, want := range []string{"table bridge vnet-cni", "table ip vnet-cni", "table bridge vnet-cni-guard"} {
		if !strings.Contains(healthy, want) {
			t.Fatalf("node0's ruleset lacks %q:\n%s", want, healthy)
		}
	}
	// The ruleset's tables in a fixed order (a rebuilt table is listed
	// last), to compare rulesets.
	strip := func(s string) string {
		tables := strings.Split("\n"+strings.TrimSpace(s), "\ntable ")
		slices.Sort(tables)
		return strings.Join(tables, "\ntable ")
	}
	healed := func(what string) {
		t.Helper()
		err := nsnet.Eventually(10*time.Second, func() error {
			if got := nftIn(t, n0, "list", "ruleset"); strip(got) != strip(healthy) {
				return fmt.Errorf("ruleset differs:\n%s", got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after %s: the tables were not repaired: %v", what, err)
		}
		if err := reachAll(pods, internet, 5*time.Second); err != nil {
			t.Fatalf("after %s: %v", what, err)
		}
	}

	cases := []struct {
		name string
		do   func()
	}{
		{"nft flush ruleset", func() { nftIn(t, n0, "flush", "ruleset") }},
		{"deleting the guard table", func() { nftIn(t, n0, "delete", "table", "bridge", "vnet-cni-guard") }},
		{"flushing the bridge table's prerouting chain", func() { nftIn(t, n0, "flush", "chain", "bridge", "vnet-cni", "prerouting") }},
		{"flushing the bridge table's forward chain", func() { nftIn(t, n0, "flush", "chain", "bridge", "vnet-cni", "forward") }},
		{"deleting the snat table", func() { nftIn(t, n0, "delete", "table", "ip", "vnet-cni") }},
	}
	for _, c := range cases {
		c.do()
		start := time.Now()
		healed(c.name)
		t.Logf("repaired after %s in %v", c.name, time.Since(start).Round(time.Millisecond))
	}
	// The bridge: the NIC taken out of it (the node is cut off from the
	// fabric until the daemon puts it back).
	nl := nodeLinks(t, n0)
	bridgeCases := []struct {
		name string
		do   func() error
	}{
		{"eth0 taken out of azure0", func() error {
			eth0, err := nl.LinkByName("eth0")
			if err != nil {
				return err
			}
			return nl.LinkSetNoMaster(eth0)
		}},
	}
	for _, c := range bridgeCases {
		if err := c.do(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		start := time.Now()
		if err := reachAll(pods, internet, 10*time.Second); err != nil {
			t.Fatalf("after %s: %v", c.name, err)
		}
		t.Logf("repaired after %s in %v", c.name, time.Since(start).Round(time.Millisecond))
	}
	// Hairpin on the NIC's port (a NodePort DNAT-ed to another node's pod
	// needs it; see bridge/azure0), turned off by hand.
	eth0, err := nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetHairpin(eth0, false); err != nil {
		t.Fatalf("hairpin off: %v", err)
	}
	start := time.Now()
	err = nsnet.Eventually(10*time.Second, func() error {
		pi, err := nl.LinkGetProtinfo(eth0)
		if err != nil {
			return err
		}
		if !pi.Hairpin {
			return errors.New("hairpin on eth0 is off")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after hairpin off on eth0: not repaired: %v", err)
	}
	t.Logf("repaired after hairpin off on eth0 in %v", time.Since(start).Round(time.Millisecond))
	log, err := os.ReadFile(n0.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Count(string(log), "repaired the node's datapath"), len(cases)+len(bridgeCases)+1; got < want {
		t.Errorf("node0's log reports %d repairs, want at least %d", got, want)
	}

	// The conflist: deleted, then edited; written again each time.
	want, err := os.ReadFile(n0.ConflistPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, damage := range []func() error{
		func() error { return os.Remove(n0.ConflistPath()) },
		func() error { return os.WriteFile(n0.ConflistPath(), []byte(`{"cniVersion":"1.1.0"}`), 0o644) },
	} {
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		err := nsnet.Eventually(10*time.Second, func() error {
			got, err := os.ReadFile(n0.ConflistPath())
			if err != nil {
				return err
			}
			if string(got) != string(want) {
				return fmt.Errorf("conflist is %q", got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("the conflist was not written again: %v", err)
		}
	}
	// Pods still start on the repaired node.
	d := e2eAddPod(t, n0, "d")
	e2eServe(t, d.NSPath, d.Name, netip.AddrPortFrom(d.IP, 80))
	if err := reachAll(append(pods, d), internet, 5*time.Second); err != nil {
		t.Fatalf("with a new pod: %v", err)
	}
}

// metadataGet asks the instance metadata service from inside nsPath.
func metadataGet(nsPath string) (int, error) {
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DialContext: nsnet.DialContextIn(nsPath)},
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet,
		"http://169.254.169.254/metadata/instance?api-version=2021-02-01", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Metadata", "true")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// TestE2EPodMetadata: a pod cannot reach the instance metadata service (a
// real request from inside the pod), the node can; a node configured with
// allowPodMetadata lets its pods through.
func TestE2EPodMetadata(t *testing.T) {
	e := newE2EEnv(t, 2, func(node string, c *config.Config) {
		c.AllowPodMetadata = strings.HasSuffix(node, "1")
	})
	e.start(t)
	n0, n1 := e.c.Nodes[0], e.c.Nodes[1]
	if !strings.HasSuffix(n1.Name, "1") || strings.HasSuffix(n0.Name, "1") {
		t.Fatalf("node names %s, %s: the test tells them apart by their last digit", n0.Name, n1.Name)
	}
	for _, n := range e.c.Nodes {
		if code, err := metadataGet(n.NSPath); err != nil || code != http.StatusOK {
			t.Errorf("%s itself -> metadata: %d %v, want 200", n.Name, code, err)
		}
	}
	blocked, allowed := e2eAddPod(t, n0, "blocked"), e2eAddPod(t, n1, "allowed")
	if code, err := metadataGet(blocked.NSPath); err == nil {
		t.Errorf("pod on %s -> metadata: answered %d, want no answer", n0.Name, code)
	}
	if code, err := metadataGet(allowed.NSPath); err != nil || code != http.StatusOK {
		t.Errorf("pod on %s (allowPodMetadata) -> metadata: %d %v, want 200", n1.Name, code, err)
	}
	// The rest of the pod's traffic is unaffected.
	internet := e2eServe(t, e.desc.InternetNetns, "internet", netip.AddrPortFrom(e2eAddr(e.desc.InternetHost), 80))
	e2eExpect(t, "blocked -> internet", blocked.NSPath, internet, "internet", e2eAddr(n0.PrimaryIP))
}
