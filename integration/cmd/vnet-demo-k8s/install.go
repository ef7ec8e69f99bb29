package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vnet-cni/vnet-cni/integration/k8s/install"
	"github.com/vnet-cni/vnet-cni/integration/k8s/node"
	"github.com/vnet-cni/vnet-cni/integration/k8s/workload"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// install applies manifests/overlays/sim with this run's ARM endpoint and
// CA and waits for the DaemonSet to roll out on both nodes.
func (d *demo) install(ctx context.Context) error {
	r, c := d.r, d.c
	overlay, write := "sim", install.SimOverlay
	if d.kubenet {
		overlay, write = "kubenet", install.KubenetOverlay
	}
	r.Step("installing vnet-cni from %s: kubectl apply -k of the %s overlay (its ipamd.json with this run's ARM endpoint, the sim's CA as a ConfigMap)", filepath.Join(d.manifests, "overlays", overlay), overlay)
	dir := filepath.Join(d.dir, "install")
	err := write(dir, d.manifests, c.Desc, func(cfg map[string]any) {
		// Release to the warm target soon after the pods go, so the
		// scale to 0 is seen within the demo.
		cfg["batchSize"], cfg["releaseDelay"], cfg["cooldown"] = 1, "3s", "2s"
		warm, _ := cfg["warmIPTarget"].(float64)
		minIPs, _ := cfg["minIPTarget"].(float64)
		d.warm = int(max(warm, minIPs))
	})
	if err != nil {
		return err
	}
	start := time.Now()
	out, err := d.kubectlOut("apply", "-k", dir)
	d.notes("kubectl apply -k <"+overlay+" overlay>", out)
	r.CheckLine("kubectl apply -k: namespace, ServiceAccount, RBAC, the VNetNode CRD, ConfigMaps, DaemonSet", err)
	if err != nil {
		return err
	}
	out, err = d.kubectlOut("-n", "vnet-cni", "rollout", "status", "daemonset/vnet-ipamd", "--timeout=3m")
	d.notes("kubectl -n vnet-cni rollout status daemonset/vnet-ipamd", out)
	if err == nil {
		err = workload.WaitFor(ctx, "the DaemonSet Ready on every node", time.Minute, func() (bool, string) {
			ds, err := c.Client.AppsV1().DaemonSets("vnet-cni").Get(ctx, "vnet-ipamd", metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			s := ds.Status
			return s.DesiredNumberScheduled == int32(len(c.Nodes)) && s.NumberReady == s.DesiredNumberScheduled,
				fmt.Sprintf("desired %d, ready %d", s.DesiredNumberScheduled, s.NumberReady)
		})
	}
	r.CheckLine(fmt.Sprintf("the vnet-ipamd DaemonSet rolled out and Ready on both nodes (%s after kubectl apply)", time.Since(start).Round(100*time.Millisecond)), err)
	if err != nil {
		return err
	}
	d.kubectl("-n", "vnet-cni", "get", "daemonset,pods", "-o", "wide")
	return nil
}

// notes prints a command's output under the step.
func (d *demo) notes(cmd, out string) {
	d.r.Note("$ %s", cmd)
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.r.Note("  %s", l)
	}
}

// vnetNodes shows `kubectl get vnn` as a table and checks that every node
// has its VNetNode, owned by its Node, counting the node's pods.
func (d *demo) vnetNodes(ctx context.Context, pods []corev1.Pod) error {
	r, c := d.r, d.c
	r.Step("the per-node objects: each vnet-ipamd writes its pool into its node's VNetNode (kubectl get vnn)")
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	var last string
	err := workload.WaitFor(ctx, "a VNetNode per node counting its pods", time.Minute, func() (bool, string) {
		out, err := d.kubectlOut("get", "vnetnodes", "-o", "json")
		if err != nil {
			return false, out
		}
		var list struct {
			Items []struct {
				Metadata struct {
					Name            string `json:"name"`
					OwnerReferences []struct {
						Kind, Name string
					} `json:"ownerReferences"`
				} `json:"metadata"`
				Status struct {
					Assigned int `json:"assigned"`
				} `json:"status"`
			} `json:"items"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return false, err.Error()
		}
		var got []string
		ok := len(list.Items) == len(c.Nodes)
		for _, it := range list.Items {
			owned := len(it.Metadata.OwnerReferences) == 1 && it.Metadata.OwnerReferences[0].Kind == "Node" && it.Metadata.OwnerReferences[0].Name == it.Metadata.Name
			ok = ok && owned && it.Status.Assigned == perNode[it.Metadata.Name]
			got = append(got, fmt.Sprintf("%s: assigned %d of %d pods, owned by its Node %v", it.Metadata.Name, it.Status.Assigned, perNode[it.Metadata.Name], owned))
		}
		last = strings.Join(got, "; ")
		return ok, last
	})
	r.CheckLine(fmt.Sprintf("a VNetNode per node, owned by its Node, counting its pods (%s)", last), err)
	out, kerr := d.kubectlOut("get", "vnn")
	header, rows := columns(out)
	if kerr != nil || header == nil {
		d.notes("kubectl get vnn", out)
		r.CheckLine("kubectl get vnn", kerr)
	} else {
		r.Note("$ kubectl get vnn")
		r.Table(header, rows)
	}
	return err
}

// columns splits kubectl's table output at the columns its header starts
// (a name begins after two spaces or more; a name may hold one space), so
// empty cells stay in place.
func columns(out string) (header []string, rows [][]string) {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 2 {
		return nil, nil
	}
	var starts []int
	h := lines[0]
	for i := range len(h) {
		if h[i] != ' ' && (i == 0 || (i >= 2 && h[i-1] == ' ' && h[i-2] == ' ')) {
			starts = append(starts, i)
		}
	}
	cut := func(l string) []string {
		var cells []string
		for j, s := range starts {
			end := len(l)
			if j+1 < len(starts) {
				end = min(starts[j+1], len(l))
			}
			if s >= len(l) {
				cells = append(cells, "")
				continue
			}
			cells = append(cells, strings.TrimSpace(l[s:end]))
		}
		return cells
	}
	header = cut(h)
	for _, l := range lines[1:] {
		rows = append(rows, cut(l))
	}
	return header, rows
}

// ipamdStatus asks a node's vnet-ipamd (the DaemonSet's pod) for its
// status through its socket on the node's /run/vnet-cni.
func ipamdStatus(ctx context.Context, n *node.Node) (api.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return api.NewClient(n.HostPath("/run/vnet-cni/ipamd.sock")).Status(ctx, api.StatusRequest{})
}
