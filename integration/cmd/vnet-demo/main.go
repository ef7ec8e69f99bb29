// Command vnet-demo shows the whole of vnet-cni on the simulated Azure VNet
// (bridge mode; --mode routed or --mode kubenet) or, with --cloud aws, the
// simulated EC2 (routed mode, ENIs), driven as a Kubernetes node drives it
// (`make demo`, `make demo MODE=kubenet`, `make demo CLOUD=aws`, as root):
//
//   - vnet-sim up --nodes 2 (the ARM API and IMDS, or the EC2 API and
//     IMDSv2, and the fabric) as a child process;
//   - vnet-ipamd in each node namespace, with its own configuration file,
//     managed identity (instance role) through IMDS at 169.254.169.254;
//   - 3 pods per node, ADD through libcni with the conflist vnet-ipamd
//     wrote (vnet-cni chained with Debian's portmap), one with a hostPort;
//
// then it proves and shows each pod's address, the NIC ipConfigurations
// (the ENIs' private addresses) as the cloud API reports them, pod-to-pod
// across nodes, pod-to-node, pod-to-internet through SNAT, the hostPort,
// and after DEL the addresses cooling down and back in the pool. In kubenet
// mode the pods take addresses of their node's pod CIDR on the local bridge
// vnetbr0 instead, and it shows the NICs without secondary addresses, IP
// forwarding, the route table and the NICs' effective routes, and the heal
// of a route deleted and of IP forwarding turned off by hand. It tears
// everything down (also on Ctrl-C or a failed check) and exits 0 only if
// every check passed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/integration/cluster"
	"github.com/vnet-cni/vnet-cni/integration/probe"
	"github.com/vnet-cni/vnet-cni/integration/report"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

const (
	nodes    = 2
	podPort  = 80
	nodePort = 10250
	hostPort = 8080
)

func main() {
	binDir := flag.String("bin", "bin", "directory holding vnet-sim, vnet-ipamd and vnet-cni")
	cooldown := flag.Duration("cooldown", 3*time.Second, "vnet-ipamd's cooldown of released addresses")
	cloud := flag.String("cloud", string(sim.CloudAzure), "the simulated cloud: azure (bridge mode) or aws (routed mode over ENIs)")
	instanceType := flag.String("instance-type", "t3.small", "aws: the instances' type (t3.small: 3 ENIs of 4 addresses, so the warm pool already needs a second ENI)")
	mode := flag.String("mode", "", "the datapath mode: bridge, routed or kubenet on azure (default bridge); routed on aws (the default)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vnet-demo: needs root (it creates network namespaces); run `sudo make demo`")
		os.Exit(1)
	}
	if c := sim.Cloud(*cloud); c != sim.CloudAzure && c != sim.CloudAWS {
		fmt.Fprintf(os.Stderr, "vnet-demo: --cloud %q: want azure or aws\n", *cloud)
		os.Exit(2)
	}
	m, err := resolveMode(sim.Cloud(*cloud), *mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vnet-demo:", err)
		os.Exit(2)
	}
	os.Exit(run(&demo{binDir: *binDir, cooldown: *cooldown, cloud: sim.Cloud(*cloud), mode: m, instanceType: *instanceType}))
}

// resolveMode checks --mode against the cloud and returns the mode the
// demo runs: "" is the cloud's default (bridge on azure, routed on aws).
func resolveMode(c sim.Cloud, mode string) (string, error) {
	switch {
	case mode == "" && c == sim.CloudAWS:
		return config.ModeRouted, nil
	case mode == "":
		return config.ModeBridge, nil
	case c == sim.CloudAWS && mode == config.ModeKubenet:
		return "", errors.New("--mode kubenet: kubenet mode programs an Azure route table; the simulated EC2 runs routed mode only (use --cloud azure)")
	case c == sim.CloudAWS && mode != config.ModeRouted:
		return "", fmt.Errorf("--mode %q: the simulated EC2 runs routed mode only", mode)
	case mode != config.ModeBridge && mode != config.ModeRouted && mode != config.ModeKubenet:
		return "", fmt.Errorf("--mode %q: want bridge, routed or kubenet", mode)
	}
	return mode, nil
}

// run runs the demo and returns the exit status.
func run(d *demo) int {
	r := report.New("vnet-demo", os.Stdout)
	d.r = r
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var interrupted atomic.Bool
	sigs := make(chan os.Signal, 2)
	// Keep catching signals through the teardown: a second Ctrl-C must not
	// leave namespaces and daemons behind.
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			if interrupted.Swap(true) {
				fmt.Println("\nvnet-demo: still cleaning up, please wait")
				continue
			}
			fmt.Printf("\nvnet-demo: %s: stopping, then cleaning up\n", s)
			cancel()
		}
	}()

	switch {
	case d.aws():
		fmt.Printf("vnet-demo: vnet-cni on a simulated AWS VPC (%s instances, routed mode), pods driven through libcni as containerd does\n", d.instanceType)
	case d.mode != config.ModeBridge:
		fmt.Printf("vnet-demo: vnet-cni on a simulated Azure VNet (%s mode), pods driven through libcni as containerd does\n", d.mode)
	default:
		fmt.Println("vnet-demo: vnet-cni on a simulated Azure VNet, pods driven through libcni as containerd does")
	}
	err := d.run(ctx)
	if err != nil {
		if interrupted.Load() {
			err = fmt.Errorf("interrupted: %w", err)
		}
		r.Step("stopped: %v", err)
		r.Check("the demo ran to its end", err)
	}
	d.teardown()
	r.Summary()
	switch {
	case interrupted.Load():
		return 130
	case !r.OK():
		return 1
	}
	return 0
}

// demo is one run.
type demo struct {
	r            *report.Report
	binDir       string
	cooldown     time.Duration
	cloud        sim.Cloud
	mode         string
	instanceType string

	dir     string
	sim     *simProcess
	c       *cluster.Cluster
	srv     probe.Servers
	pods    []*cluster.Pod
	web     *cluster.Pod
	podLogs string
}

// aws says whether the demo runs on the simulated EC2.
func (d *demo) aws() bool { return d.cloud == sim.CloudAWS }

// kubenet says whether the daemons run in kubenet mode.
func (d *demo) kubenet() bool { return d.mode == config.ModeKubenet }

func (d *demo) run(ctx context.Context) error {
	r := d.r
	dir, err := os.MkdirTemp("", "vnet-demo-")
	if err != nil {
		return err
	}
	d.dir = dir
	bin, err := filepath.Abs(d.binDir)
	if err != nil {
		return err
	}

	// 1. The cloud.
	var rows [][]string
	if d.aws() {
		r.Step("starting the simulated cloud: vnet-sim up --cloud aws --instance-type %s --nodes %d", d.instanceType, nodes)
	} else {
		r.Step("starting the simulated cloud: vnet-sim up --nodes %d", nodes)
	}
	d.sim, err = startSim(ctx, bin, filepath.Join(dir, "sim"), d.cloud, d.instanceType, nodes, filepath.Join(dir, "vnet-sim.log"))
	if err != nil {
		return fmt.Errorf("start vnet-sim: %w", err)
	}
	desc := d.sim.desc
	if d.aws() {
		r.Note("EC2 API %s (SigV4, its own CA), IMDSv2 at 169.254.169.254 inside every node", desc.EC2Endpoint)
		r.Note("VPC %s %s, subnet %s %s, router %s; internet host %s",
			desc.VPCID, strings.Join(desc.VPCCIDRs, ","), desc.SubnetID, desc.SubnetCIDR, desc.Gateway, desc.InternetHost)
		for _, n := range desc.Nodes {
			rows = append(rows, []string{n.Name, filepath.Base(n.Netns), n.InstanceID, n.InstanceType, n.ENIID, n.MAC, n.PrimaryIP})
		}
		r.Table([]string{"INSTANCE", "NETNS", "ID", "TYPE", "PRIMARY ENI", "MAC", "PRIMARY IP"}, rows)
	} else {
		r.Note("ARM API %s (its own CA), IMDS at 169.254.169.254 inside every node", desc.ARMEndpoint)
		r.Note("VNet %s, subnet %s %s, gateway %s; internet host %s",
			strings.Join(desc.VNetPrefixes, ","), desc.Subnet, desc.SubnetPrefix, desc.Gateway, desc.InternetHost)
		for _, n := range desc.Nodes {
			rows = append(rows, []string{n.Name, filepath.Base(n.Netns), n.NIC, n.MAC, n.PrimaryIP})
		}
		r.Table([]string{"VM", "NETNS", "NIC", "MAC", "PRIMARY IP"}, rows)
	}

	// 2. The daemons.
	switch {
	case d.aws():
		r.Step("starting vnet-ipamd in every node namespace (own config file, routed mode, the instance role via IMDSv2)")
	case d.kubenet():
		r.Step("starting vnet-ipamd in every node namespace (own config file, kubenet mode: node i's pod CIDR is the i-th /24 of %s, managed identity via IMDS)", kubenetCIDR)
	case d.mode == config.ModeRouted:
		r.Step("starting vnet-ipamd in every node namespace (own config file, routed mode, managed identity via IMDS)")
	default:
		r.Step("starting vnet-ipamd in every node namespace (own config file, managed identity via IMDS)")
	}
	d.podLogs = filepath.Join(dir, "plugins.log")
	pluginLog, err := os.Create(d.podLogs)
	if err != nil {
		return err
	}
	defer pluginLog.Close()
	opts := cluster.Options{
		Dir: filepath.Join(dir, "cluster"), BinDir: bin, PluginStderr: pluginLog,
		IPAMD: func(_ string, c *config.Config) {
			c.Cooldown = config.Duration(d.cooldown)
			if !d.aws() && d.mode == config.ModeRouted {
				c.Mode = config.ModeRouted
			}
		},
	}
	if d.kubenet() {
		opts.KubenetCIDR = kubenetCIDR
	}
	d.c, err = cluster.New(desc, opts)
	if err != nil {
		return err
	}
	if err := d.c.Start(ctx); err != nil {
		return err
	}
	rows = nil
	for _, n := range d.c.Nodes {
		st, err := n.Status(ctx)
		r.Check("vnet-ipamd ready on "+n.Name, errors.Join(err, readyErr(st)))
		list, lerr := n.Conflist()
		chain := "?"
		if lerr == nil {
			var types []string
			for _, p := range list.Plugins {
				types = append(types, p.Network.Type)
			}
			chain = strings.Join(types, " -> ") + " (cniVersion " + list.CNIVersion + ")"
		}
		rows = append(rows, []string{n.Name, yesNo(st.Ready), poolText(st.Pool), chain})
	}
	r.Table([]string{"NODE", "READY", "POOL", "CONFLIST WRITTEN BY VNET-IPAMD"}, rows)
	if d.kubenet() {
		if err := d.showKubenetNodes(ctx); err != nil {
			return err
		}
	}

	// 3. The pods.
	if d.aws() {
		r.Step("creating %d pods per node: ADD through libcni with that conflist (web gets hostPort %d; a %s's primary ENI holds %d, the last pod's address is on a second ENI)",
			d.podsPerNode(), hostPort, d.instanceType, d.podsPerNode()-1)
	} else {
		r.Step("creating %d pods per node: ADD through libcni with that conflist (web gets hostPort %d)", d.podsPerNode(), hostPort)
	}
	if err := d.addPods(ctx); err != nil {
		return err
	}

	// 4. The cloud's view.
	switch {
	case d.kubenet():
		if err := d.showKubenetCloud(ctx); err != nil {
			return err
		}
	case d.aws():
		r.Step("the instances' ENIs and their private addresses as EC2 reports them (DescribeNetworkInterfaces)")
		if err := d.showENIs(ctx); err != nil {
			return err
		}
	default:
		r.Step("the NIC ipConfigurations as the cloud API reports them (armnetwork InterfacesClient.Get)")
		if err := d.showNICs(ctx); err != nil {
			return err
		}
	}

	// 5. Traffic.
	if err := d.startServers(); err != nil {
		return err
	}
	shows := []func(context.Context){d.podToPod, d.podToNode, d.podToInternet, d.hostPort, d.selfHeal}
	if d.kubenet() {
		shows = []func(context.Context){d.podToPodSameNode, d.podToPod, d.podToNode, d.podToInternet, d.hostPort, d.selfHeal, d.routeHeal}
	}
	for _, show := range shows {
		show(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	// 6. DEL, cooldown, back in the pool.
	return d.deleteAll(ctx)
}

func readyErr(st api.StatusResponse) error {
	if !st.Ready {
		return fmt.Errorf("not ready: %s", st.Reason)
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func poolText(p api.PoolCounts) string {
	return fmt.Sprintf("%d free, %d assigned, %d cooling", p.Free, p.Assigned, p.Cooling)
}

// podNames are the pods of each node. On AWS a node has one more: a
// t3.small's primary ENI holds 3 pod addresses, so the 4th is on a second
// ENI, and its traffic shows the routed mode's policy routing.
func (d *demo) podNames() [nodes][]string {
	if d.aws() {
		return [nodes][]string{{"web", "api-0", "api-1", "api-4"}, {"api-2", "api-3", "client", "api-5"}}
	}
	return [nodes][]string{{"web", "api-0", "api-1"}, {"api-2", "api-3", "client"}}
}

func (d *demo) podsPerNode() int { return len(d.podNames()[0]) }

func podAddr(p *cluster.Pod) netip.AddrPort { return netip.AddrPortFrom(p.IP, podPort) }

func (d *demo) addPods(ctx context.Context) error {
	r := d.r
	subnetText := d.sim.desc.SubnetPrefix
	if d.aws() {
		subnetText = d.sim.desc.SubnetCIDR
	}
	subnet, err := netip.ParsePrefix(subnetText)
	if err != nil {
		return err
	}
	names := d.podNames()
	seen := map[netip.Addr]string{}
	var rows [][]string
	for i, n := range d.c.Nodes {
		for _, name := range names[i] {
			if err := ctx.Err(); err != nil {
				return err
			}
			p, err := n.NewPod("demo", name)
			if err != nil {
				return err
			}
			var ports []cluster.PortMapping
			note := ""
			if name == "web" {
				ports = []cluster.PortMapping{{HostPort: hostPort, ContainerPort: podPort, Protocol: "tcp"}}
				note = fmt.Sprintf("hostPort %d -> %d", hostPort, podPort)
				d.web = p
			}
			start := time.Now()
			res, err := n.Add(ctx, p, ports...)
			took := time.Since(start)
			if err == nil && d.kubenet() {
				err = inPodCIDR(n, p.IP)
				if err == nil && seen[p.IP] != "" {
					err = fmt.Errorf("%s was already given to %s", p.IP, seen[p.IP])
				}
			} else if err == nil {
				switch {
				case !subnet.Contains(p.IP) || p.IP.String() == n.PrimaryIP:
					err = fmt.Errorf("%s is not a secondary address of subnet %s", p.IP, subnet)
				case seen[p.IP] != "":
					err = fmt.Errorf("%s was already given to %s", p.IP, seen[p.IP])
				}
			}
			cell := r.Check("ADD "+name, err)
			if err != nil {
				rows = append(rows, []string{name, n.Name, "-", "-", "-", cell + ": " + err.Error()})
				continue
			}
			seen[p.IP] = name
			d.pods = append(d.pods, p)
			gw := "-"
			if len(res.IPs) > 0 && res.IPs[0].Gateway != nil {
				gw = res.IPs[0].Gateway.String()
			}
			rows = append(rows, []string{name, n.Name, res.IPs[0].Address.String(), gw,
				fmt.Sprintf("%d ms", took.Milliseconds()), strings.TrimSpace(cell + "  " + note)})
		}
	}
	r.Table([]string{"POD", "NODE", "ADDRESS", "GATEWAY", "ADD", "RESULT"}, rows)
	if len(d.pods) != nodes*d.podsPerNode() || d.web == nil {
		return errors.New("not every pod started")
	}
	return nil
}

func (d *demo) showNICs(ctx context.Context) error {
	r := d.r
	nics, err := d.sim.nicsClient()
	if err != nil {
		return err
	}
	holder := map[string]string{}
	for _, p := range d.pods {
		holder[p.IP.String()] = "pod " + p.Name
	}
	var rows [][]string
	onNIC := map[string]string{} // ip -> node
	for _, n := range d.c.Nodes {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := nics.Get(cctx, d.sim.desc.ResourceGroup, n.NIC, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("read NIC %s: %w", n.NIC, err)
		}
		states := map[string]string{}
		if l, err := n.Client().List(ctx, api.ListRequest{}); err == nil {
			for _, a := range l.Addresses {
				states[a.IP.String()] = a.State
			}
		}
		for _, cfg := range nicConfigs(resp.Interface) {
			held := holder[cfg.ip]
			switch {
			case cfg.primary:
				held = n.Name + " (the VM itself)"
			case held == "":
				held = "warm pool (" + states[cfg.ip] + ")"
			}
			primary := ""
			if cfg.primary {
				primary = "yes"
			}
			onNIC[cfg.ip] = n.Name
			rows = append(rows, []string{n.NIC, cfg.name, cfg.ip, primary, held})
		}
	}
	r.Table([]string{"NIC", "IPCONFIGURATION", "PRIVATE IP", "PRIMARY", "HELD BY"}, rows)
	bad := 0
	for _, p := range d.pods {
		var err error
		if got := onNIC[p.IP.String()]; got != p.Node.Name {
			err = fmt.Errorf("%s is on the NIC of %q, want %s", p.IP, got, p.Node.Name)
			bad++
		}
		r.Check(fmt.Sprintf("%s's address %s is an ipConfiguration of %s", p.Name, p.IP, p.Node.NIC), err)
	}
	if bad == 0 {
		r.Note("ok   every pod address is an ipConfiguration of its own node's NIC")
	} else {
		r.Note("FAIL %d pod addresses are not on their node's NIC", bad)
	}
	return nil
}

type nicConfig struct {
	name, ip string
	primary  bool
}

func nicConfigs(nic armnetwork.Interface) []nicConfig {
	var out []nicConfig
	if nic.Properties == nil {
		return nil
	}
	for _, c := range nic.Properties.IPConfigurations {
		if c == nil || c.Properties == nil || c.Properties.PrivateIPAddress == nil {
			continue
		}
		nc := nicConfig{ip: *c.Properties.PrivateIPAddress}
		if c.Name != nil {
			nc.name = *c.Name
		}
		if c.Properties.Primary != nil {
			nc.primary = *c.Properties.Primary
		}
		out = append(out, nc)
	}
	return out
}

func (d *demo) startServers() error {
	for _, p := range d.pods {
		if _, err := d.srv.Listen(p.NSPath, p.Name, podAddr(p)); err != nil {
			return err
		}
	}
	for _, n := range d.c.Nodes {
		if _, err := d.srv.Listen(n.NSPath, n.Name, netip.AddrPortFrom(netip.MustParseAddr(n.PrimaryIP), nodePort)); err != nil {
			return err
		}
	}
	inet := netip.AddrPortFrom(netip.MustParseAddr(d.sim.desc.InternetHost), 80)
	_, err := d.srv.Listen(d.sim.desc.InternetNetns, "internet", inet)
	return err
}

// podToPod connects every pod to one pod on the other node: the peer sees
// the pod's own address (no NAT inside the VNet).
func (d *demo) podToPod(ctx context.Context) {
	r := d.r
	r.Step("pod-to-pod across nodes (TCP; the server reports the source address it saw)")
	var rows [][]string
	for i, p := range d.pods {
		q := d.pods[(i+d.podsPerNode())%len(d.pods)]
		a, err := expect(ctx, p.NSPath, podAddr(q), q.Name, p.IP)
		rows = append(rows, []string{
			fmt.Sprintf("%s (%s, %s)", p.Name, p.Node.Name, p.IP),
			fmt.Sprintf("%s (%s, %s)", q.Name, q.Node.Name, podAddr(q)),
			seenText(a), result(r, p.Name+" -> "+q.Name, err, "no NAT"),
		})
	}
	r.Table([]string{"FROM", "TO", "SOURCE SEEN", "RESULT"}, rows)
}

// podToNode connects every pod to both nodes' primary addresses.
func (d *demo) podToNode(ctx context.Context) {
	r := d.r
	r.Step("pod-to-node: every pod to both nodes' primary IP, port %d", nodePort)
	header := []string{"POD"}
	for _, n := range d.c.Nodes {
		header = append(header, fmt.Sprintf("-> %s %s", n.Name, n.PrimaryIP))
	}
	var rows [][]string
	for _, p := range d.pods {
		row := []string{fmt.Sprintf("%s (%s)", p.Name, p.Node.Name)}
		for _, n := range d.c.Nodes {
			a, err := expect(ctx, p.NSPath, netip.AddrPortFrom(netip.MustParseAddr(n.PrimaryIP), nodePort), n.Name, p.IP)
			row = append(row, result(r, p.Name+" -> "+n.Name, err, "saw "+a.Seen.String()))
		}
		rows = append(rows, row)
	}
	r.Table(header, rows)
}

// podToInternet connects every pod to the internet host, which must see
// the node's primary: Azure lets only a NIC's primary address out.
func (d *demo) podToInternet(ctx context.Context) {
	r := d.r
	inet := netip.AddrPortFrom(netip.MustParseAddr(d.sim.desc.InternetHost), 80)
	if d.aws() {
		r.Step("pod-to-internet %s through SNAT (only an instance's primary address may leave the VPC)", inet)
	} else {
		r.Step("pod-to-internet %s through SNAT (only a NIC's primary address may leave the VNet)", inet)
	}
	var rows [][]string
	for _, p := range d.pods {
		primary := netip.MustParseAddr(p.Node.PrimaryIP)
		a, err := expect(ctx, p.NSPath, inet, "internet", primary)
		rows = append(rows, []string{fmt.Sprintf("%s (%s)", p.Name, p.IP), p.Node.Name, seenText(a),
			result(r, p.Name+" -> internet", err, "SNAT to "+p.Node.Name+"'s primary")})
	}
	r.Table([]string{"POD", "NODE", "INTERNET SAW", "RESULT"}, rows)
}

// hostPort connects to web's hostPort on node0 from the other node and
// from a pod there; portmap DNATs it to web.
func (d *demo) hostPort(ctx context.Context) {
	r := d.r
	n0 := d.web.Node
	dst := netip.AddrPortFrom(netip.MustParseAddr(n0.PrimaryIP), hostPort)
	r.Step("hostPort: %s on %s, mapped by portmap to %s", dst, n0.Name, podAddr(d.web))
	var rows [][]string
	for _, n := range d.c.Nodes {
		if n == n0 {
			continue
		}
		client := d.pods[len(d.pods)-1]
		for _, p := range d.pods {
			if p.Name == "client" {
				client = p
			}
		}
		for _, from := range []struct {
			name, ns string
			src      netip.Addr
		}{{n.Name, n.NSPath, netip.MustParseAddr(n.PrimaryIP)}, {client.Name + " (pod on " + n.Name + ")", client.NSPath, client.IP}} {
			// portmap's "snat" masquerades connections from the pod's own
			// prefix, which here is the whole subnet.
			a, err := expect(ctx, from.ns, dst, d.web.Name, from.src, netip.MustParseAddr(n0.PrimaryIP))
			rows = append(rows, []string{from.name, dst.String(), a.Name, seenText(a), result(r, from.name+" -> hostPort", err, "")})
		}
	}
	r.Table([]string{"FROM", "TO", "ANSWERED BY", "SOURCE SEEN", "RESULT"}, rows)
	if d.kubenet() {
		r.Note("portmap (\"snat\": true) masquerades hostPort connections from the pod's own prefix, here")
		r.Note("%s's pod CIDR, so web may see %s's address instead of the client's", n0.Name, n0.Name)
	} else {
		r.Note("portmap (\"snat\": true) masquerades hostPort connections from the pod's own prefix, here the")
		r.Note("whole subnet, so web may see %s's address instead of the client's", n0.Name)
	}
}

func seenText(a probe.Answer) string {
	if !a.Seen.IsValid() {
		return "-"
	}
	return a.Seen.String()
}

func result(r *report.Report, what string, err error, okNote string) string {
	cell := r.Check(what, err)
	if err != nil {
		return cell + ": " + err.Error()
	}
	return strings.TrimSpace(cell + "  " + okNote)
}

// deleteAll runs DEL for every pod, shows the addresses cooling, waits for
// the cooldown and shows them back in the pool.
func (d *demo) deleteAll(ctx context.Context) error {
	r := d.r
	r.Step("deleting every pod: DEL through libcni, then the runtime removes the namespace")
	var rows [][]string
	deleted := time.Now()
	for _, p := range d.pods {
		var ports []cluster.PortMapping
		if p == d.web {
			ports = []cluster.PortMapping{{HostPort: hostPort, ContainerPort: podPort, Protocol: "tcp"}}
		}
		start := time.Now()
		err := p.Node.Del(ctx, p, ports...)
		took := time.Since(start)
		if err == nil {
			err = p.Remove()
		}
		rows = append(rows, []string{p.Name, p.Node.Name, p.IP.String(), fmt.Sprintf("%d ms", took.Milliseconds()), result(r, "DEL "+p.Name, err, "")})
	}
	r.Table([]string{"POD", "NODE", "ADDRESS", "DEL", "RESULT"}, rows)
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := probe.Dial(ctx, d.c.Nodes[1].NSPath, netip.AddrPortFrom(netip.MustParseAddr(d.web.Node.PrimaryIP), hostPort)); err == nil {
		r.CheckLine("the hostPort is gone after DEL", errors.New("it still answers"))
	} else {
		r.CheckLine("the hostPort is gone after DEL", nil)
	}
	if d.kubenet() {
		for _, n := range d.c.Nodes {
			ports, err := bridgePorts(n, n.Config.Kubenet.Bridge)
			if err == nil && len(ports) > 0 {
				err = fmt.Errorf("ports left: %v", ports)
			}
			r.CheckLine(fmt.Sprintf("%s's %s has no pod port left after DEL", n.Name, n.Config.Kubenet.Bridge), err)
		}
	}

	r.Step("the released addresses cool down for %s before vnet-ipamd hands them out again", d.cooldown)
	d.showStates(ctx, "cooling")
	r.Note("waiting for the cooldown ...")
	deadline := time.Now().Add(d.cooldown + 10*time.Second)
	for !d.allInState(ctx, "free") && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	back := time.Since(deleted)
	r.Step("back in the warm pool %.1fs after DEL", back.Seconds())
	d.showStates(ctx, "free")
	var early error
	if back < d.cooldown {
		early = fmt.Errorf("free again after %s, before the cooldown of %s", back, d.cooldown)
	}
	r.CheckLine("no address was free again before its cooldown", early)
	var rows2 [][]string
	for _, n := range d.c.Nodes {
		st, err := n.Status(ctx)
		if err != nil {
			return err
		}
		rows2 = append(rows2, []string{n.Name, poolText(st.Pool)})
	}
	r.Table([]string{"NODE", "POOL"}, rows2)
	return nil
}

// states returns the daemons' state of every pod address.
func (d *demo) states(ctx context.Context) map[netip.Addr]api.AddressRecord {
	out := map[netip.Addr]api.AddressRecord{}
	for _, n := range d.c.Nodes {
		l, err := n.Client().List(ctx, api.ListRequest{})
		if err != nil {
			continue
		}
		for _, a := range l.Addresses {
			out[a.IP] = a
		}
	}
	return out
}

func (d *demo) allInState(ctx context.Context, want string) bool {
	st := d.states(ctx)
	for _, p := range d.pods {
		if st[p.IP].State != want {
			return false
		}
	}
	return true
}

// showStates prints the state of every former pod address and checks it.
func (d *demo) showStates(ctx context.Context, want string) {
	st := d.states(ctx)
	var rows [][]string
	now := time.Now()
	for _, p := range d.pods {
		a := st[p.IP]
		var err error
		if a.State != want {
			err = fmt.Errorf("%s is %q, want %q", p.IP, a.State, want)
		}
		since := "-"
		if !a.Since.IsZero() {
			since = now.Sub(a.Since).Round(100 * time.Millisecond).String()
		}
		rows = append(rows, []string{p.IP.String(), p.Node.Name, "was " + p.Name, a.State, since, result(d.r, p.IP.String()+" "+want, err, "")})
	}
	d.r.Table([]string{"ADDRESS", "NODE", "OWNER", "STATE", "FOR", "RESULT"}, rows)
}

// teardown stops the daemons, removes the pods' namespaces, stops vnet-sim
// and checks that nothing is left; on failure it first prints the logs.
func (d *demo) teardown() {
	r := d.r
	r.Step("tearing down: vnet-ipamd (SIGTERM), pod namespaces, vnet-sim (SIGTERM)")
	d.srv.Close()
	if !r.OK() {
		d.printLogs()
	}
	var errs []error
	if d.c != nil {
		errs = append(errs, d.c.Close())
		for _, n := range d.c.Nodes {
			if n.Running() {
				errs = append(errs, fmt.Errorf("vnet-ipamd of %s still runs", n.Name))
			}
		}
	}
	if d.sim != nil {
		errs = append(errs, d.sim.stop())
		if left := d.sim.leftovers(); len(left) > 0 {
			errs = append(errs, fmt.Errorf("namespaces left: %v", left))
		}
	}
	if d.dir != "" {
		errs = append(errs, os.RemoveAll(d.dir))
	}
	r.CheckLine("nothing left behind (namespaces, daemons, vnet-sim, files)", errors.Join(errs...))
}

// printLogs prints the tail of every log of the run.
func (d *demo) printLogs() {
	files := []string{filepath.Join(d.dir, "vnet-sim.log"), d.podLogs}
	if d.c != nil {
		for _, n := range d.c.Nodes {
			files = append(files, n.LogPath)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Printf("\n--- %s (last %d lines)\n%s\n", filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f), len(lines), strings.Join(lines, "\n"))
	}
}
