package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vnet-cni/vnet-cni/bridge/kubenet"
	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/kube"
	"github.com/vnet-cni/vnet-cni/ipamd/noderoute"
	"github.com/vnet-cni/vnet-cni/ipamd/podcidr"
	"github.com/vnet-cni/vnet-cni/ipamd/routecontroller"
)

// kubenetNode is kubenet mode's part of the daemon: the pool's addresses
// come from the node's pod CIDR (podcidr), and once the daemon is
// connected the node's own route and its NIC's IP forwarding are kept
// (noderoute), holding the node's pods back until the route is effective.
type kubenetNode struct {
	cfg      config.Config
	node     string
	log      *slog.Logger
	registry prometheus.Registerer
	// agent is the Kubernetes agent (nil without kubernetes.enabled): the
	// pod CIDR comes from its Node, the route state goes into the Node's
	// condition.
	agent *kube.Agent
	// hold is the daemon, set before Run.
	hold noderoute.Holder
	// runCtx bounds the route agent, started at the first connect.
	runCtx context.Context
	// fresh reports a node where nothing can hold a pod address (see
	// podcidr.Config.Fresh).
	fresh func(ctx context.Context) bool

	mu      sync.Mutex
	started bool
	routes  *noderoute.Agent
	// reconciler is the route table's, for the leader-elected controller.
	reconciler *routetable.Reconciler
	// onReconciler is called once with the reconciler.
	onReconciler func(*routetable.Reconciler)
}

// connect wraps the Azure provider's connection: the daemon's cloud is the
// pod CIDR over the provider.
func (k *kubenetNode) connect(inner daemon.Connect) daemon.Connect {
	return func(ctx context.Context) (daemon.Cloud, error) {
		c, err := inner(ctx)
		if err != nil {
			return nil, err
		}
		p, ok := c.(*azure.Provider)
		if !ok {
			return nil, &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: fmt.Errorf("kubenet mode needs the Azure provider, not %T", c)}
		}
		podCIDR, err := k.podCIDR()
		if err != nil {
			return nil, err
		}
		pc, err := podcidr.New(podcidr.Config{Inner: p, PodCIDR: podCIDR, ClusterCIDR: k.cfg.Kubenet.ClusterPrefix(),
			StateDir: k.cfg.Kubenet.StateDir, Fresh: k.fresh != nil && k.fresh(ctx), Logger: k.log})
		if err != nil {
			return nil, &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: err}
		}
		if err := k.startRoutes(ctx, p, podCIDR); err != nil {
			return nil, err
		}
		return pc, nil
	}
}

// podCIDR is the configuration's pod CIDR, else the Node's.
func (k *kubenetNode) podCIDR() (netip.Prefix, error) {
	if k.cfg.Kubenet.PodCIDR != "" {
		p, err := netip.ParsePrefix(k.cfg.Kubenet.PodCIDR)
		return p.Masked(), err
	}
	if k.agent == nil {
		return netip.Prefix{}, &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: errors.New("no pod CIDR: set kubenet.podCIDR or kubernetes.enabled")}
	}
	return k.agent.PodCIDR(k.cfg.Kubenet.ClusterPrefix())
}

// startRoutes starts the node's route agent once: the route table (the
// configured one, else the subnet's), the node's address (its NIC's
// primary), and the daemon as the hold.
func (k *kubenetNode) startRoutes(ctx context.Context, p *azure.Provider, podCIDR netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.started {
		return nil
	}
	ref, err := k.routeTable(ctx, p)
	if err != nil {
		return err
	}
	client, err := p.RouteTablesClientFor(ref.SubscriptionID)
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: err}
	}
	rec, err := routetable.New(routetable.Config{Client: client, ResourceGroup: ref.ResourceGroup, Table: ref.Name,
		ClusterCIDR: k.cfg.Kubenet.ClusterPrefix(), MaxRoutes: k.cfg.Kubenet.MaxRoutes, Logger: k.log})
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: err}
	}
	inst, err := p.Instance(ctx)
	if err != nil {
		return err
	}
	nic, _ := inst.Primary()
	opts := noderoute.Options{Node: k.node, PodCIDR: podCIDR, NodeIP: nic.PrimaryIP, Cloud: p, Routes: rec,
		Hold: k.hold, Interval: k.cfg.Kubenet.RouteInterval.D(), Settle: settle(k.cfg.Kubenet.RouteSettle.D()), Registry: k.registry, Logger: k.log}
	if k.agent != nil {
		opts.Reporter = k.agent
	}
	agent, err := noderoute.New(opts)
	if err != nil {
		return &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: err}
	}
	k.routes, k.reconciler, k.started = agent, rec, true
	go func() { _ = agent.Run(k.runCtx) }()
	k.log.Info("kubenet: keeping the node's route", "node", k.node, "podCIDR", podCIDR.String(), "nextHop", nic.PrimaryIP.String(),
		"routeTable", ref.ID, "maxRoutes", k.cfg.Kubenet.MaxRoutes)
	if k.onReconciler != nil {
		k.onReconciler(rec)
	}
	return nil
}

// settle is noderoute's Settle for the configuration's routeSettle (whose
// 0 means none, noderoute's the default).
func settle(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// routeTable is the configured route table, else the subnet's.
func (k *kubenetNode) routeTable(ctx context.Context, p *azure.Provider) (azure.RouteTableRef, error) {
	if id := k.cfg.Kubenet.RouteTable; id != "" {
		ref, err := azure.ParseRouteTableID(id)
		if err != nil {
			return ref, &cloud.Error{Kind: cloud.Fatal, Op: "kubenet", Err: fmt.Errorf("kubenet.routeTable: %w", err)}
		}
		return ref, nil
	}
	return p.RouteTable(ctx)
}

// kubenetDatapath is kubenet mode's node datapath as the daemon keeps it:
// the local bridge on the pod CIDR's gateway, the guard and SNAT, in Sync
// mode (every live pod's bridge port and guard element repaired).
type kubenetDatapath struct {
	lockDir        string
	bridge         string
	allowMetadata  bool
	snatExclusions []netip.Prefix
	node           *kubenet.Node
}

var _ daemon.Datapath = (*kubenetDatapath)(nil)

// Ensure sets up or repairs the node for the instance: its one interface is
// the pod CIDR (podcidr), whose gateway is the bridge's address.
func (k *kubenetDatapath) Ensure(ctx context.Context, inst cloud.Instance) (int, error) {
	ifc, ok := inst.Primary()
	if !ok || !ifc.Subnet.IsValid() || !ifc.Gateway.IsValid() {
		return 0, errors.New("kubenet: the instance has no pod CIDR yet")
	}
	if k.node == nil {
		n, err := kubenet.Open("", kubenet.Options{LockDir: k.lockDir})
		if err != nil {
			return 0, err
		}
		k.node = n
	}
	info, err := k.node.EnsureNode(ctx, kubenet.NodeConfig{
		Bridge: k.bridge, Gateway: netip.PrefixFrom(ifc.Gateway, ifc.Subnet.Bits()),
		VNetPrefixes: inst.NetworkPrefixes, SNATExclusions: k.snatExclusions, PrimaryIP: ifc.PrimaryIP,
		AllowMetadata: k.allowMetadata, Sync: true,
	})
	if err != nil {
		err = errors.Join(err, k.node.Close())
		k.node = nil
		return 0, err
	}
	return info.Changes, nil
}

// Watch reports changes to the links and the tables.
func (k *kubenetDatapath) Watch(ctx context.Context) (<-chan struct{}, error) {
	n, err := kubenet.Open("", kubenet.Options{LockDir: k.lockDir})
	if err != nil {
		return nil, err
	}
	ch, err := n.Watch(ctx)
	return ch, errors.Join(err, n.Close())
}

// startRouteController runs this daemon's candidate for the route
// controller's Lease until ctx is done: the leader removes the routes of
// Nodes that are gone and fixes every Node's route.
func startRouteController(ctx context.Context, cfg config.Config, node string, rec *routetable.Reconciler, reg prometheus.Registerer, log *slog.Logger) {
	rc, err := restConfig(cfg)
	if err != nil {
		log.Error("kubenet: the route controller cannot start", "err", err)
		return
	}
	c, err := routecontroller.New(routecontroller.Options{
		REST: rc, Reconciler: rec, NodeName: node,
		LeaseName: cfg.Kubenet.LeaseName, LeaseNamespace: cfg.Kubenet.LeaseNamespace,
		Interval: cfg.Kubenet.RouteInterval.D(), Registry: reg, Logger: log.With("component", "route-controller"),
	})
	if err != nil {
		log.Error("kubenet: the route controller cannot start", "err", err)
		return
	}
	go func() {
		if err := c.Run(ctx); err != nil {
			log.Error("kubenet: the route controller stopped", "err", err)
		}
	}()
}
