// Command vnet-ipamd is vnet-cni's node daemon: it keeps a warm pool of
// secondary private IPs on the node's NIC, persists every allocation and
// serves addresses to the CNI plugin over a unix socket.
//
//	vnet-ipamd [--config FILE] [--node-name NAME]   run the daemon
//	vnet-ipamd status [--socket PATH] [--json]     print the pool and the assignments
//	vnet-ipamd prepare [--config FILE] [--cni-bin-dir DIR]   install the plugin, set the kernel settings (a DaemonSet's init step)
//
// SIGHUP makes a running daemon re-read the pool targets from its
// configuration file; other fields need a restart. SIGTERM stops it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/cloud/aws"
	"github.com/vnet-cni/vnet-cni/cloud/azure"
	"github.com/vnet-cni/vnet-cni/cloud/azure/routetable"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/config"
	"github.com/vnet-cni/vnet-cni/ipamd/daemon"
	"github.com/vnet-cni/vnet-cni/ipamd/kube"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

const defaultConfig = "/etc/vnet-cni/ipamd.json"

func main() {
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "status":
		err = status(os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "prepare":
		err = prepare(os.Args[2:])
	default:
		err = run(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vnet-ipamd: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("vnet-ipamd", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "Kubernetes node name (default $NODE_NAME, then the host name)")
	// Only tests point this elsewhere: the end-to-end suite simulates a
	// reboot of a node namespace, whose kernel boot id cannot change.
	bootIDFile := fs.String("boot-id-file", kernelBootID, "file holding the boot id (for tests that simulate a reboot)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	// From here a SIGHUP reloads the pool targets instead of ending the
	// daemon; one that arrives before the daemon runs waits in the channel.
	hup, stopHangup := notifyHangup()
	defer stopHangup()
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if *nodeName == "" {
		*nodeName, _ = os.Hostname()
	}
	bootID, err := readBootID(*bootIDFile)
	if err != nil {
		return err
	}

	// A damaged store is salvaged, not refused: the daemon rebuilds what
	// was lost from the pods' veths (the witness; New refuses to start when
	// it cannot read them) and quarantines what it cannot vouch for.
	st, err := store.Open(cfg.StoreDir, store.Options{Salvage: true})
	if err != nil {
		return err
	}
	defer st.Close()
	switch rec := st.Stats().Recovery; {
	case rec.Damage != "":
		log.Warn("the address store was damaged: opened with what was intact, the damaged files are kept",
			"store", cfg.StoreDir, "damage", rec.Damage, "movedAside", rec.MovedAside, "salvaged", rec.Salvaged)
	case rec.TruncatedBytes > 0:
		log.Warn("the store's journal ended in a record a crash interrupted; it was never acknowledged and is cleared",
			"store", cfg.StoreDir, "clearedBytes", rec.TruncatedBytes, "replayed", rec.Replayed)
	default:
		log.Info("opened the address store", "store", cfg.StoreDir, "replayed", rec.Replayed, "empty", rec.Empty)
	}
	if cfg.CNIBinDir != "" {
		wrote, err := installPlugin(cfg.CNIBinDir)
		if err != nil {
			return err
		}
		log.Info("CNI plugin installed", "dir", cfg.CNIBinDir, "changed", wrote)
	}
	connect, err := cloudConnect(cfg.Cloud, log)
	if err != nil {
		return err
	}
	var datapath daemon.Datapath
	switch {
	case cfg.NodeSetup != config.NodeSetupIPAMD:
	case cfg.Mode == config.ModeRouted:
		datapath = &routedDatapath{lockDir: cfg.PluginLockDir, allowMetadata: cfg.AllowPodMetadata, snatExclusions: cfg.SNATPrefixes()}
	case cfg.Mode == config.ModeKubenet:
		datapath = &kubenetDatapath{lockDir: cfg.PluginLockDir, bridge: cfg.Kubenet.Bridge, allowMetadata: cfg.AllowPodMetadata, snatExclusions: cfg.SNATPrefixes()}
	default:
		datapath = &bridgeDatapath{lockDir: cfg.PluginLockDir, allowMetadata: cfg.AllowPodMetadata, snatExclusions: cfg.SNATPrefixes()}
	}
	if cfg.Kubernetes.NodeName != "" {
		*nodeName = cfg.Kubernetes.NodeName
	}
	var kn *kubenetNode
	if cfg.Mode == config.ModeKubenet {
		kn = &kubenetNode{cfg: cfg, node: *nodeName, log: log, fresh: func(ctx context.Context) bool {
			// The store holds nothing and no pod veth or bridge of
			// vnet-cni exists: a new node (or a new boot).
			if len(st.List()) > 0 {
				return false
			}
			w, err := nodeWitness{}.Read(ctx, nil)
			return err == nil && !w.Present && len(w.Attachments) == 0
		}}
		connect = kn.connect(connect)
	}
	// With maxIPs from the node, the daemon starts with the fallback until
	// the node is known.
	targets, targetsFrom, _ := kube.Compose(cfg.PoolTargets(), 0, config.DefaultMaxIPs, kube.Overrides{})
	d, err := daemon.New(st, connect, daemon.Options{
		Targets:        targets,
		TargetsFrom:    targetsFrom,
		InitialBatch:   cfg.IPAddressCount,
		Cooldown:       cfg.Cooldown.D(),
		SweepInterval:  cfg.Cloud.AWS.SweepInterval.D(),
		AllocateWait:   cfg.AllocateWait.D(),
		ResyncInterval: cfg.ResyncInterval.D(),
		NodeName:       *nodeName,
		BootID:         bootID,
		ReleaseSpool:   cfg.ReleaseSpool,
		Witness:        nodeWitness{},
		RecoveryGrace:  cfg.RecoveryGrace.D(),
		Conflist: daemon.Conflist{Path: filepath.Join(cfg.CNIConfDir, cfg.CNIConfName),
			Build: func(inst cloud.Instance) []byte {
				if len(cfg.SNATExclusions) == 0 && len(inst.NetworkPrefixes) > api.MaxSNATExclusions {
					log.Error("the VNet has more address prefixes than the SNAT exclusions can hold; ADD fails until snatExclusions is set",
						"prefixes", len(inst.NetworkPrefixes), "max", api.MaxSNATExclusions)
				}
				return conflist(cfg, inst.NetworkPrefixes)
			}},
		Datapath: datapath,
		Logger:   log,
	})
	if err != nil {
		return err
	}
	setTargets := targetSetter(d.SetTargets)
	var agent *kube.Agent
	if cfg.Kubernetes.Enabled {
		if agent, err = kubeAgent(cfg, *nodeName, d, log); err != nil {
			return err
		}
		setTargets = agent.SetBase
	}
	workerCtx, stopWorker := context.WithCancel(context.Background())
	defer stopWorker()
	if kn != nil {
		// Set before the worker connects, which is when they are used.
		kn.agent, kn.hold, kn.registry, kn.runCtx = agent, d, d.Metrics().Registry(), workerCtx
		if cfg.Kubenet.ControllerEnabled(cfg.Kubernetes.Enabled) {
			kn.onReconciler = func(rec *routetable.Reconciler) {
				startRouteController(workerCtx, cfg, *nodeName, rec, d.Metrics().Registry(), log)
			}
		}
	}
	srv, err := server.New(cfg.SocketPath, d, server.WithLogger(log))
	if err != nil {
		return err
	}
	metricsLn, err := net.Listen("tcp", cfg.MetricsAddr.String())
	if err != nil {
		return errors.Join(fmt.Errorf("metrics listener: %w", err), srv.Shutdown(context.Background()))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.Metrics().Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s, _ := d.Status(r.Context(), api.StatusRequest{})
		if !s.Ready {
			http.Error(w, "not ready: "+s.Reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	metrics := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	workerDone := make(chan error, 1)
	go func() { workerDone <- d.Run(workerCtx) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(context.Background()) }()
	go func() { _ = metrics.Serve(metricsLn) }()
	go reloadOnHangup(ctx, hup, *cfgPath, cfg, setTargets, log)
	agentDone := make(chan error, 1)
	if agent != nil {
		// Never waited for by ADD, DEL or /healthz: the daemon works
		// without the API server.
		go func() { agentDone <- agent.Run(workerCtx) }()
	} else {
		agentDone <- nil
	}
	log.Info("vnet-ipamd started", "node", *nodeName, "socket", cfg.SocketPath, "metrics", cfg.MetricsAddr.String(), "store", cfg.StoreDir)

	select {
	case <-ctx.Done():
	case err := <-serveDone:
		log.Error("rpc server stopped", "err", err)
	}
	log.Info("vnet-ipamd shutting down: finishing in-flight calls")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	stopWorker()
	err = errors.Join(err, <-workerDone, <-agentDone, metrics.Shutdown(shutCtx))
	// One snapshot instead of a journal to replay at the next start.
	if cerr := st.Compact(); cerr != nil {
		log.Warn("compact the store at shutdown", "err", cerr)
	}
	if errors.Is(err, server.ErrClosed) {
		err = nil
	}
	log.Info("vnet-ipamd stopped")
	return err
}

// kubeAgent returns the Kubernetes agent of the configuration's
// kubernetes section: client-go from the kubeconfig, or in-cluster.
func kubeAgent(cfg config.Config, nodeName string, d *daemon.Daemon, log *slog.Logger) (*kube.Agent, error) {
	klog.SetSlogLogger(log.With("component", "client-go"))
	rc, err := restConfig(cfg)
	if err != nil {
		return nil, err
	}
	opts := kube.Options{
		NodeName:       nodeName,
		REST:           rc,
		Base:           cfg.PoolTargets(),
		FallbackMaxIPs: config.DefaultMaxIPs,
		StatusInterval: cfg.Kubernetes.StatusInterval.D(),
		Logger:         log,
	}
	if cfg.Mode == config.ModeKubenet && cfg.Kubenet.PodCIDR == "" {
		// The connection waits for the Node's pod CIDR: take it as soon
		// as kube-controller-manager writes it.
		opts.OnPodCIDR = d.Reconnect
	}
	return kube.New(d, opts)
}

// restConfig is the API server's client configuration: the kubeconfig, or
// in-cluster (the pod's ServiceAccount).
func restConfig(cfg config.Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubernetes.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubernetes.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	return rc, nil
}

// cloudConnect returns the connection to the configured cloud's provider.
func cloudConnect(c config.Cloud, log *slog.Logger) (daemon.Connect, error) {
	if c.Provider == config.ProviderAWS {
		awsCfg := aws.Config{
			ClusterName:  c.AWS.ClusterName,
			Region:       c.AWS.Region,
			EC2Endpoint:  c.AWS.EC2Endpoint,
			CAFile:       c.AWS.CAFile,
			IMDSEndpoint: c.AWS.IMDSEndpoint,
			CallTimeout:  c.CallTimeout.D(),
			SweepGrace:   c.AWS.SweepGrace.D(),
			Logger:       log,
		}
		return func(ctx context.Context) (daemon.Cloud, error) { return aws.New(ctx, awsCfg) }, nil
	}
	base := azure.Config{
		ResourceManagerEndpoint: c.Azure.ResourceManagerEndpoint,
		Audience:                c.Azure.ResourceManagerAudience,
		CAFile:                  c.Azure.CAFile,
		IMDSEndpoint:            c.Azure.IMDSEndpoint,
		CallTimeout:             c.CallTimeout.D(),
		Logger:                  log,
	}
	// The cloud config is read at every attempt to connect, so that a
	// template's azure.json fixed by an operator takes effect without a
	// restart.
	return func(ctx context.Context) (daemon.Cloud, error) {
		azCfg, err := azureConfig(c.Azure, base, log)
		if err != nil {
			return nil, err
		}
		return azure.New(ctx, azCfg)
	}, nil
}

// azureConfig completes base with the credential and, when the
// cloud-provider configuration file is there, what it says.
func azureConfig(a config.Azure, base azure.Config, log *slog.Logger) (azure.Config, error) {
	cfg := base
	var cc azure.CloudConfig
	present := false
	if a.CloudConfigFile != "" {
		var err error
		cc, err = azure.LoadCloudConfig(a.CloudConfigFile)
		switch {
		case err == nil:
			present = true
		case errors.Is(err, fs.ErrNotExist) && a.CloudConfigFile == config.DefaultCloudConfigFile && a.Credential != config.CredentialCloudConfig:
		default:
			return azure.Config{}, &cloud.Error{Kind: cloud.Fatal, Op: "read cloud config", Err: err}
		}
	}
	if present {
		cfg.Expect = cc.Expected()
		cfg.Expect.Source = a.CloudConfigFile
		if env, err := cc.CloudConfiguration(); err == nil && cfg.ResourceManagerEndpoint == config.DefaultResourceManagerEndpoint {
			if svc, ok := env.Services[azcloud.ResourceManager]; ok {
				cfg.ResourceManagerEndpoint, cfg.Audience = svc.Endpoint, svc.Audience
			}
		}
		log.Info("read the cloud config", "path", a.CloudConfigFile, "subscription", cc.SubscriptionID,
			"resourceGroup", cc.ResourceGroup, "vnet", cc.VNetName, "subnet", cc.SubnetName)
	}
	switch a.Credential {
	case config.CredentialStaticTokenFile:
		cred, err := azure.NewTokenFileCredential(a.TokenFile)
		if err != nil {
			return azure.Config{}, err
		}
		cfg.Credential = cred
	case config.CredentialCloudConfig:
		client, err := azure.NewHTTPClient(a.CAFile)
		if err != nil {
			return azure.Config{}, err
		}
		cred, err := azure.CloudConfigCredential(cc, a.ActiveDirectoryEndpoint, client)
		if err != nil {
			return azure.Config{}, &cloud.Error{Kind: cloud.Fatal, Op: "cloud config credential", Err: fmt.Errorf("%s: %w", a.CloudConfigFile, err)}
		}
		cfg.Credential = cred
	default:
		cred, err := azure.ManagedIdentityCredential(a.ManagedIdentityClientID)
		if err != nil {
			return azure.Config{}, err
		}
		cfg.Credential = cred
	}
	return cfg, nil
}

// kernelBootID changes with every boot; a change tells the daemon that every
// pod's datapath is gone.
const kernelBootID = "/proc/sys/kernel/random/boot_id"

// readBootID reads the boot id. Without the kernel's file (not Linux) reboot
// detection is off; a file given with --boot-id-file must be readable.
func readBootID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if path == kernelBootID {
			return "", nil
		}
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
