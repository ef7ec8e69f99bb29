package plugin

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/vnet-cni/vnet-cni/bridge/linux"
	"github.com/vnet-cni/vnet-cni/bridge/routed"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// Plugin runs the CNI verbs. The zero value acts on the caller's network
// namespace (the node's), as the runtime executes the plugin.
type Plugin struct {
	// NodeNS is the node's network namespace path; empty means the
	// caller's. Tests set it to a simulated node.
	NodeNS string
	// Stderr receives the log line when the configuration names no file.
	Stderr io.Writer
}

// Funcs returns the verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// call is one invocation: the parsed configuration and its log line.
type call struct {
	verb   string
	conf   *NetConf
	args   *skel.CmdArgs
	start  time.Time
	log    *slog.Logger
	closer io.Closer
	attrs  []any
}

func (p *Plugin) begin(verb string, args *skel.CmdArgs) (*call, error) {
	c := &call{verb: verb, args: args, start: time.Now()}
	load := loadNetConf
	if verb == "DEL" {
		load = loadDelNetConf
	}
	conf, err := load(args.StdinData)
	if err != nil {
		c.log = p.logger(nil)
		c.finish(err)
		return nil, err
	}
	c.conf = conf
	c.log = p.logger(conf)
	if conf.LogFile != "" {
		if f, ferr := os.OpenFile(conf.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); ferr == nil {
			c.closer = f
			c.log = slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: level(conf.logLevel)}))
		}
	}
	if args.ContainerID != "" {
		c.attrs = append(c.attrs, "containerID", args.ContainerID, "ifName", args.IfName)
	}
	if conf.prevResultErr != "" {
		c.attrs = append(c.attrs, "prevResultIgnored", conf.prevResultErr)
	}
	return c, nil
}

func (p *Plugin) logger(conf *NetConf) *slog.Logger {
	w := p.Stderr
	if w == nil {
		w = os.Stderr
	}
	lvl := slog.LevelInfo
	if conf != nil {
		lvl = level(conf.logLevel)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl}))
}

func level(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s))
	return l
}

// ms is d in milliseconds with microsecond precision, for log lines.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// finish writes the one log line of the call.
func (c *call) finish(err error) {
	attrs := append([]any{"verb", c.verb, "durationMs", ms(time.Since(c.start))}, c.attrs...)
	if err != nil {
		attrs = append(attrs, "result", "error", "err", err.Error())
		c.log.Error("cni "+c.verb, attrs...)
	} else {
		attrs = append(attrs, "result", "ok")
		c.log.Info("cni "+c.verb, attrs...)
	}
	if c.closer != nil {
		_ = c.closer.Close()
	}
}

// ipamdError maps a daemon error to the CNI error the runtime should see.
// A daemon that went away mid-call (killed, restarting) is "try again
// later": if it assigned an address before dying, the runtime's DEL of the
// failed ADD or its GC releases it.
func ipamdError(op string, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission), api.CodeOf(err) == api.CodePermissionDenied:
		// Not transient: retrying as the same user cannot help.
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("vnet-ipamd %s: permission denied (the plugin must run as root)", op), err.Error())
	case api.IsTryAgain(err), api.IsNotReady(err), api.IsUnreachable(err),
		errors.Is(err, api.ErrNoResponse), errors.Is(err, context.DeadlineExceeded):
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("vnet-ipamd %s: try again later", op), err.Error())
	case api.CodeOf(err) == api.CodeInvalidRequest:
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("vnet-ipamd %s: invalid request", op), err.Error())
	default:
		return types.NewError(types.ErrInternal, fmt.Sprintf("vnet-ipamd %s failed", op), err.Error())
	}
}

// Add allocates an address and builds the pod's datapath, like the bridge
// plugin's cmdAdd: load, allocate, set up, print. The datapath prepares the
// node and the pod's veth while the address is on its way; any failure
// removes what was built and releases the address.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	c, err := p.begin("ADD", args)
	if err != nil {
		return err
	}
	defer func() { c.finish(err) }()
	conf := c.conf
	k8s, err := addArgs(args, p.NodeNS)
	if err != nil {
		return err
	}
	c.attrs = append(c.attrs, "pod", string(k8s.K8S_POD_NAMESPACE)+"/"+string(k8s.K8S_POD_NAME))

	ctx, cancel := context.WithTimeout(context.Background(), datapathTimeout)
	defer cancel()
	att := p.prepare(ctx, conf, args)
	defer att.Close()
	allocated, success := false, false
	defer func() {
		if !success {
			p.undoAdd(c, att, allocated)
		}
	}()

	step := time.Now()
	a, err := allocate(conf, args, k8s)
	if err != nil {
		return ipamdError("allocate", err)
	}
	allocated = true
	c.attrs = append(c.attrs, "ip", a.IP.String(), "allocateMs", ms(time.Since(step)))

	cctx, ccancel := context.WithTimeout(context.Background(), datapathTimeout)
	defer ccancel()
	pod, err := att.Complete(cctx, linux.Address{IP: a.IP, Subnet: a.Subnet, Gateway: a.Gateway, Interface: a.Interface,
		InterfaceMAC: interfaceMAC(a.InterfaceMAC), DeviceIndex: a.DeviceIndex, PrimaryIP: a.PrimaryIP, VNetPrefixes: a.VNetCIDRs})
	s := att.Steps()
	if errors.Is(err, linux.ErrNodeSetup) {
		return types.NewError(types.ErrInternal, "set up the node's datapath", err.Error())
	}
	c.attrs = append(c.attrs, "nodeReadyMs", ms(s.NodeReady.Sub(step)), "nodeOpenMs", ms(s.NodeOpen), "ensureNodeMs", ms(s.EnsureNode))
	if errors.Is(err, routed.ErrUplinkMissing) {
		// An ENI attached a moment ago: the runtime's retry finds its link.
		return types.NewError(types.ErrTryAgainLater, "the interface of the pod's address is not in the node yet: try again later", err.Error())
	}
	if err != nil {
		return types.NewError(types.ErrInternal, "set up the pod's interface", err.Error())
	}
	c.attrs = append(c.attrs, "addPodMs", ms(s.AddPod))
	if err := types.PrintResult(buildResult(conf, pod), conf.CNIVersion); err != nil {
		return types.NewError(types.ErrInternal, "print the result", err.Error())
	}
	success = true
	return nil
}

// interfaceMAC parses the MAC of an assignment's interface (hex without
// separators); nil when absent or malformed (the primary's pods need none).
func interfaceMAC(s string) net.HardwareAddr {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 6 {
		return nil
	}
	return net.HardwareAddr(b)
}

// addArgs checks what ADD needs of the environment before an address is
// taken, and returns the Kubernetes arguments.
func addArgs(args *skel.CmdArgs, nodeNS string) (k8sArgs, error) {
	if err := validIfName(args.IfName); err != nil {
		return k8sArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_IFNAME", fmt.Sprintf("%q: %v", args.IfName, err))
	}
	if args.Netns == "" {
		return k8sArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is required for ADD", "")
	}
	if err := checkNetns(args.Netns, nodeNS); err != nil {
		return k8sArgs{}, err
	}
	return loadK8sArgs(args.Args)
}

// allocate asks vnet-ipamd for the attachment's address; ipamdTimeout
// bounds the wait.
func allocate(conf *NetConf, args *skel.CmdArgs, k8s k8sArgs) (api.Assignment, error) {
	ctx, cancel := context.WithTimeout(context.Background(), conf.ipamdTimeout)
	defer cancel()
	resp, err := api.NewClient(conf.IPAMDSocket).Allocate(ctx, api.AllocateRequest{
		ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: string(k8s.K8S_POD_NAMESPACE), PodName: string(k8s.K8S_POD_NAME),
		At: api.NewStamp(),
	})
	if err != nil {
		return api.Assignment{}, err
	}
	return resp.Assignment, nil
}

// undoAdd removes what a failed ADD built and, when it took an address,
// releases it (or spools the release for the daemon), each within
// rollbackTimeout. What it cannot undo is logged: DEL or GC finish it.
func (p *Plugin) undoAdd(c *call, att attachment, allocated bool) {
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	if err := att.Abort(ctx); err != nil {
		c.log.Error("cannot remove the datapath of a failed ADD; DEL or GC will", "err", err.Error())
	}
	if !allocated {
		return
	}
	args := c.args
	// Stamped after the allocation it undoes: it releases that one.
	at := api.NewStamp()
	if _, rerr := api.NewClient(c.conf.IPAMDSocket).Release(ctx, api.ReleaseRequest{ContainerID: args.ContainerID, IfName: args.IfName, At: at}); rerr != nil {
		if serr := api.SpoolRelease(c.conf.ReleaseSpool, args.ContainerID, args.IfName, at); serr != nil {
			c.log.Error("cannot release the address of a failed ADD; GC will", "release", rerr.Error(), "spool", serr.Error())
		}
	}
}

func buildResult(conf *NetConf, pod linux.PodResult) *current.Result {
	podIdx := 1
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: pod.HostVeth.Name, Mac: pod.HostVeth.MAC.String()},
			{Name: pod.PodIf.Name, Mac: pod.PodIf.MAC.String(), Sandbox: pod.PodIf.NetNS},
		},
		IPs: []*current.IPConfig{{
			Interface: &podIdx,
			Address:   net.IPNet{IP: pod.IP.Addr().AsSlice(), Mask: net.CIDRMask(pod.IP.Bits(), 32)},
			Gateway:   pod.Gateway.AsSlice(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: pod.Gateway.AsSlice()}},
		DNS:    conf.DNS,
	}
}

// checkNetns refuses a CNI_NETNS that does not exist, is not a network
// namespace or is the node's own (nodeNS, "" for the caller's), before any
// address is taken: set up as a pod, the node would lose its routes.
func checkNetns(path, nodeNS string) error {
	n, err := ns.GetNS(path)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_NETNS "+path, err.Error())
	}
	defer n.Close()
	if nodeNS == "" {
		nodeNS = "/proc/self/ns/net"
	}
	pod, perr := os.Stat(path)
	node, nerr := os.Stat(nodeNS)
	if perr != nil || nerr != nil {
		return types.NewError(types.ErrInternal, "compare CNI_NETNS with the node's namespace", errors.Join(perr, nerr).Error())
	}
	if os.SameFile(pod, node) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_NETNS "+path, "it is the node's own network namespace")
	}
	return nil
}

// Del tears the datapath down and releases the address. It tolerates a
// missing netns, link or assignment; when vnet-ipamd is unreachable the
// release is spooled for the daemon and DEL still succeeds. The release
// carries the DEL's stamp, taken first: should the runtime ADD the same
// attachment again before the daemon sees this release (it was spooled, or
// waited in the socket's backlog), the daemon knows it is older than that
// ADD's allocation and frees nothing.
func (p *Plugin) Del(args *skel.CmdArgs) (err error) {
	at := api.NewStamp()
	c, err := p.begin("DEL", args)
	if err != nil {
		return err
	}
	defer func() { c.finish(err) }()
	conf := c.conf
	var ip netip.Addr
	if conf.PrevResult != nil {
		if res, cerr := current.NewResultFromResult(conf.PrevResult); cerr == nil && len(res.IPs) > 0 {
			ip, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		}
	}
	node, err := p.node(conf)
	if err != nil {
		return err
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), shortIPAMDTimeout)
	defer cancel()
	step := time.Now()
	if err := node.DelPod(ctx, linux.PodRef{ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns, IP: ip}); err != nil {
		return types.NewError(types.ErrInternal, "tear down the pod's interface", err.Error())
	}
	c.attrs = append(c.attrs, "delPodMs", ms(time.Since(step)))
	step = time.Now()
	resp, err := api.NewClient(conf.IPAMDSocket).Release(ctx, api.ReleaseRequest{ContainerID: args.ContainerID, IfName: args.IfName, At: at})
	c.attrs = append(c.attrs, "releaseMs", ms(time.Since(step)))
	if err != nil {
		if api.IsUnreachable(err) || errors.Is(err, context.DeadlineExceeded) || api.IsNotReady(err) || api.IsTryAgain(err) {
			if serr := api.SpoolRelease(conf.ReleaseSpool, args.ContainerID, args.IfName, at); serr != nil {
				return types.NewError(types.ErrInternal, "vnet-ipamd is unreachable and the release cannot be recorded", serr.Error())
			}
			c.attrs = append(c.attrs, "release", "spooled")
			return nil
		}
		return ipamdError("release", err)
	}
	if resp.Known {
		c.attrs = append(c.attrs, "ip", resp.IP.String())
	}
	if resp.Superseded {
		c.attrs = append(c.attrs, "release", "superseded")
	}
	if !ip.IsValid() && resp.Known && resp.IP.IsValid() {
		// Without prevResult (cniVersion < 0.4.0, a lost cache) and with
		// the veth gone along with its netns, only ipamd knew the address:
		// drop its entries now, or the node keeps answering ARP for it.
		// ipamd held it for this attachment until now, so no other pod has it.
		if err := node.DelPod(ctx, linux.PodRef{ContainerID: args.ContainerID, IfName: args.IfName, IP: resp.IP}); err != nil {
			return types.NewError(types.ErrInternal, "tear down the pod's datapath", err.Error())
		}
	}
	return nil
}
