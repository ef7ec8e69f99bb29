// Package controlplane runs a Kubernetes control plane for integration
// tests: etcd (Debian's etcd-server), kube-apiserver, kube-controller-manager
// and kube-scheduler, on one address (loopback by default), with
// certificates, keys and kubeconfigs it makes itself, RBAC and the Node
// authorizer on, TLS everywhere a client connects (etcd's client port with
// client certificates; the components on their secure ports only). Every
// file lives in one temporary directory; Stop ends the components in the
// reverse order of their start (kube-apiserver before etcd) and removes the
// directory, and Start does the same when it fails.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/vnet-cni/vnet-cni/integration/k8s/binaries"
	"github.com/vnet-cni/vnet-cni/integration/k8s/pki"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
)

// Config says where the binaries are and how the control plane is laid out.
type Config struct {
	// Bin holds kube-apiserver, kube-controller-manager and kube-scheduler.
	Bin binaries.Set
	// Etcd is the etcd binary; "etcd" from $PATH if empty.
	Etcd string
	// TempDir is where the control plane's directory is made; the
	// system's temporary directory if empty.
	TempDir string
	// NetNS is the path of a network namespace the components run and
	// listen in, and the harness talks to them in; the caller's if empty.
	NetNS string
	// Addr is the address every component listens on; 127.0.0.1 if unset.
	// kube-apiserver advertises it in the kubernetes Service's endpoints,
	// which refuse a loopback address: give a non-loopback address in
	// NetNS for a control plane that pods and kubelets reach.
	Addr netip.Addr
	// ServiceCIDR is the ClusterIP range; 10.96.0.0/16 if unset.
	ServiceCIDR netip.Prefix
	// ClusterCIDR, when valid, has kube-controller-manager allocate every
	// Node a /24 of it as its spec.podCIDRs (--allocate-node-cidrs), as
	// kubenet mode needs; it programs no cloud route
	// (--configure-cloud-routes=false: vnet-ipamd does). Must be IPv4 and
	// at most a /23.
	ClusterCIDR netip.Prefix
	// ReadyTimeout bounds the wait for each component; 2 minutes if 0.
	ReadyTimeout time.Duration
	// Log receives progress; slog.Default() if nil.
	Log *slog.Logger
}

// Component names, in start order.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Dir holds the certificates, keys, kubeconfigs, etcd's data and the
	// components' logs (logs/<component>.log); removed by Stop.
	Dir string
	// Server is kube-apiserver's URL.
	Server string
	// AdminKubeconfig is a kubeconfig for a system:masters user.
	AdminKubeconfig string
	// CAPEM is the cluster CA's certificate, which signed kube-apiserver's
	// serving certificate and which kube-apiserver trusts for clients.
	CAPEM []byte
	// ServiceCIDR is the ClusterIP range.
	ServiceCIDR netip.Prefix

	netns    string
	log      *slog.Logger
	cluster  *pki.CA
	adminTLS *tls.Config
	ports    map[string]int // secure port of each component, etcd's client port

	mu      sync.Mutex
	procs   []*proc // in start order
	stopped bool    // no component may start any more

	stopOnce sync.Once
	stopErr  error
	unwatch  func() bool
}

// Start brings the control plane up and returns once kube-apiserver is
// ready and kube-controller-manager and kube-scheduler are healthy. It runs
// until Stop, or until ctx is done: then it stops itself as Stop does.
func Start(ctx context.Context, cfg Config) (_ *ControlPlane, err error) {
	if cfg.Etcd == "" {
		cfg.Etcd = "etcd"
	}
	if !cfg.Addr.IsValid() {
		cfg.Addr = netip.MustParseAddr("127.0.0.1")
	}
	if !cfg.ServiceCIDR.IsValid() {
		cfg.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	if c := cfg.ClusterCIDR; c.IsValid() && (!c.Addr().Is4() || c.Bits() > 23) {
		return nil, fmt.Errorf("control plane: cluster CIDR %s: want an IPv4 prefix of /23 or wider", c)
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	dir, err := os.MkdirTemp(cfg.TempDir, "vnet-k8s-")
	if err != nil {
		return nil, fmt.Errorf("control plane dir: %w", err)
	}
	cp := &ControlPlane{Dir: dir, ServiceCIDR: cfg.ServiceCIDR, netns: cfg.NetNS, log: cfg.Log, ports: map[string]int{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, cp.Stop())
		}
	}()
	cp.unwatch = context.AfterFunc(ctx, func() {
		cp.log.Info("context done, stopping the control plane", "cause", context.Cause(ctx))
		_ = cp.Stop()
	})
	for _, d := range []string{"pki", "logs", "etcd"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("control plane dir: %w", err)
		}
	}
	for _, c := range []string{Etcd, "etcd-peer", APIServer, ControllerManager, Scheduler} {
		p, err := freePort(cfg.NetNS, cfg.Addr)
		if err != nil {
			return nil, err
		}
		cp.ports[c] = p
	}
	cp.Server = "https://" + hostPort(cfg.Addr, cp.ports[APIServer])

	files, err := cp.writePKI(cfg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := cp.startEtcd(ctx, cfg, files); err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(ctx, cfg, files); err != nil {
		return nil, err
	}
	if err := cp.startControllerManager(ctx, cfg, files); err != nil {
		return nil, err
	}
	if err := cp.startScheduler(ctx, cfg, files); err != nil {
		return nil, err
	}
	cp.log.Info("control plane up", "server", cp.Server, "dir", dir, "took", time.Since(start).Round(time.Millisecond))
	return cp, nil
}

// files are the paths Start writes and the components read.
type files struct {
	caCert, caKey           string
	etcdCA                  string
	etcdCert, etcdKey       string
	etcdClient, etcdClientK string
	apiCert, apiKey         string
	kubeletCli, kubeletCliK string
	saPub, saKey            string
	frontCA                 string
	frontCert, frontKey     string
	kcmKubeconfig           string
	schedKubeconfig         string
}

// writePKI makes two CAs (etcd's, and the cluster's that signs every other
// certificate and client), the serving and client certificates, the
// service-account key pair and the kubeconfigs.
func (cp *ControlPlane) writePKI(cfg Config) (files, error) {
	p := func(name string) string { return filepath.Join(cp.Dir, "pki", name) }
	f := files{
		caCert: p("ca.crt"), caKey: p("ca.key"),
		etcdCA:   p("etcd-ca.crt"),
		etcdCert: p("etcd-server.crt"), etcdKey: p("etcd-server.key"),
		etcdClient: p("apiserver-etcd-client.crt"), etcdClientK: p("apiserver-etcd-client.key"),
		apiCert: p("apiserver.crt"), apiKey: p("apiserver.key"),
		kubeletCli: p("apiserver-kubelet-client.crt"), kubeletCliK: p("apiserver-kubelet-client.key"),
		saPub: p("sa.pub"), saKey: p("sa.key"),
		frontCA: p("front-proxy-ca.crt"), frontCert: p("front-proxy-client.crt"), frontKey: p("front-proxy-client.key"),
		kcmKubeconfig:   filepath.Join(cp.Dir, "controller-manager.kubeconfig"),
		schedKubeconfig: filepath.Join(cp.Dir, "scheduler.kubeconfig"),
	}
	etcdCA, err := pki.NewCA("vnet-cni test etcd CA")
	if err != nil {
		return f, err
	}
	ca, err := pki.NewCA("vnet-cni test cluster CA")
	if err != nil {
		return f, err
	}
	// The aggregation layer's: kube-apiserver proxies to extension API
	// servers with a client certificate of this CA, and the components
	// read it from the extension-apiserver-authentication ConfigMap.
	frontCA, err := pki.NewCA("vnet-cni test front-proxy CA")
	if err != nil {
		return f, err
	}
	if err := os.WriteFile(f.frontCA, frontCA.CertPEM(), 0o644); err != nil {
		return f, fmt.Errorf("write front-proxy ca: %w", err)
	}
	cp.cluster = ca
	cp.CAPEM = ca.CertPEM()
	if err := pki.WritePair(f.caCert, f.caKey, ca.Cert, ca.Key); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.etcdCA, etcdCA.CertPEM(), 0o644); err != nil {
		return f, fmt.Errorf("write etcd ca: %w", err)
	}
	kubernetesIP, err := firstIP(cfg.ServiceCIDR)
	if err != nil {
		return f, err
	}
	type leaf struct {
		ca         *pki.CA
		l          pki.Leaf
		cert, key  string
		kubeconfig string
	}
	leaves := []leaf{
		{ca: etcdCA, l: pki.Leaf{CommonName: "etcd", Server: true, Client: true, DNSNames: []string{"localhost"}, IPs: []netip.Addr{cfg.Addr}}, cert: f.etcdCert, key: f.etcdKey},
		{ca: etcdCA, l: pki.Leaf{CommonName: "kube-apiserver-etcd-client", Client: true}, cert: f.etcdClient, key: f.etcdClientK},
		{ca: ca, l: pki.Leaf{
			CommonName: "kube-apiserver", Server: true,
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPs:      []netip.Addr{cfg.Addr, kubernetesIP},
		}, cert: f.apiCert, key: f.apiKey},
		{ca: ca, l: pki.Leaf{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true}, cert: f.kubeletCli, key: f.kubeletCliK},
		{ca: frontCA, l: pki.Leaf{CommonName: "front-proxy-client", Client: true}, cert: f.frontCert, key: f.frontKey},
		{ca: ca, l: pki.Leaf{CommonName: "system:kube-controller-manager", Client: true}, kubeconfig: f.kcmKubeconfig},
		{ca: ca, l: pki.Leaf{CommonName: "system:kube-scheduler", Client: true}, kubeconfig: f.schedKubeconfig},
		{ca: ca, l: pki.Leaf{CommonName: "vnet-cni-admin", Organization: []string{"system:masters"}, Client: true}, kubeconfig: filepath.Join(cp.Dir, "admin.kubeconfig")},
	}
	for _, lf := range leaves {
		kp, err := lf.ca.Sign(lf.l)
		if err != nil {
			return f, err
		}
		if lf.kubeconfig == "" {
			if err := pki.WritePair(lf.cert, lf.key, kp.Cert, kp.Key); err != nil {
				return f, err
			}
			continue
		}
		if err := cp.WriteKubeconfig(lf.kubeconfig, lf.l.CommonName, kp); err != nil {
			return f, err
		}
		if lf.l.CommonName == "vnet-cni-admin" {
			cp.AdminKubeconfig = lf.kubeconfig
			pool := x509.NewCertPool()
			pool.AddCert(ca.Cert)
			cp.adminTLS = &tls.Config{
				RootCAs:      pool,
				Certificates: []tls.Certificate{{Certificate: [][]byte{kp.Cert.Raw}, PrivateKey: kp.Key, Leaf: kp.Cert}},
				MinVersion:   tls.VersionTLS12,
			}
		}
	}
	sa, err := pki.NewKey()
	if err != nil {
		return f, err
	}
	pub, err := pki.PublicKeyPEM(sa)
	if err != nil {
		return f, err
	}
	key, err := pki.KeyPEM(sa)
	if err != nil {
		return f, err
	}
	if err := os.WriteFile(f.saPub, pub, 0o644); err != nil {
		return f, fmt.Errorf("write service-account key: %w", err)
	}
	if err := os.WriteFile(f.saKey, key, 0o600); err != nil {
		return f, fmt.Errorf("write service-account key: %w", err)
	}
	return f, nil
}

// SignClient returns a client certificate of the cluster CA for user in
// groups (a kubelet's system:node:<name> in system:nodes, say).
func (cp *ControlPlane) SignClient(user string, groups ...string) (*pki.KeyPair, error) {
	return cp.cluster.Sign(pki.Leaf{CommonName: user, Organization: groups, Client: true})
}

// WriteKubeconfig writes a kubeconfig for kube-apiserver that
// authenticates as user with the client certificate kp.
func (cp *ControlPlane) WriteKubeconfig(path, user string, kp *pki.KeyPair) error {
	key, err := kp.KeyPEM()
	if err != nil {
		return err
	}
	c := clientcmdapi.NewConfig()
	c.Clusters["vnet-cni"] = &clientcmdapi.Cluster{Server: cp.Server, CertificateAuthorityData: cp.CAPEM}
	c.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: kp.CertPEM(), ClientKeyData: key}
	c.Contexts["vnet-cni"] = &clientcmdapi.Context{Cluster: "vnet-cni", AuthInfo: user}
	c.CurrentContext = "vnet-cni"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// RESTConfig returns a client configuration for the admin user.
func (cp *ControlPlane) RESTConfig() (*rest.Config, error) {
	c, err := clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	if cp.netns != "" {
		c.Dial = nsnet.DialContextIn(cp.netns)
	}
	return c, nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context, cfg Config, f files) error {
	client := "https://" + hostPort(cfg.Addr, cp.ports[Etcd])
	peer := "http://" + hostPort(cfg.Addr, cp.ports["etcd-peer"])
	args := []string{
		"--name=default",
		"--data-dir=" + filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=default=" + peer,
		"--initial-cluster-state=new",
		"--cert-file=" + f.etcdCert,
		"--key-file=" + f.etcdKey,
		"--trusted-ca-file=" + f.etcdCA,
		"--client-cert-auth=true",
		"--logger=zap",
		"--log-outputs=stderr",
	}
	etcdCA, err := os.ReadFile(f.etcdCA)
	if err != nil {
		return fmt.Errorf("read etcd ca: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(etcdCA)
	cert, err := tls.LoadX509KeyPair(f.etcdClient, f.etcdClientK)
	if err != nil {
		return fmt.Errorf("etcd client certificate: %w", err)
	}
	tc := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return cp.startAndWait(ctx, cfg, Etcd, cfg.Etcd, args, client+"/health", tc, func(body string) bool {
		return strings.Contains(body, `"health":"true"`)
	})
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, cfg Config, f files) error {
	args := []string{
		"--etcd-servers=https://" + hostPort(cfg.Addr, cp.ports[Etcd]),
		"--etcd-cafile=" + f.etcdCA,
		"--etcd-certfile=" + f.etcdClient,
		"--etcd-keyfile=" + f.etcdClientK,
		"--bind-address=" + cfg.Addr.String(),
		"--advertise-address=" + cfg.Addr.String(),
		"--secure-port=" + strconv.Itoa(cp.ports[APIServer]),
		"--cert-dir=" + filepath.Join(cp.Dir, "pki"),
		"--tls-cert-file=" + f.apiCert,
		"--tls-private-key-file=" + f.apiKey,
		"--client-ca-file=" + f.caCert,
		"--kubelet-client-certificate=" + f.kubeletCli,
		"--kubelet-client-key=" + f.kubeletCliK,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--service-cluster-ip-range=" + cfg.ServiceCIDR.String(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f.saPub,
		"--service-account-signing-key-file=" + f.saKey,
		"--requestheader-client-ca-file=" + f.frontCA,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + f.frontCert,
		"--proxy-client-key-file=" + f.frontKey,
		"--profiling=false",
	}
	return cp.startAndWait(ctx, cfg, APIServer, cfg.Bin.Path(APIServer), args, cp.Server+"/readyz", cp.adminTLS, func(body string) bool {
		return body == "ok"
	})
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, cfg Config, f files) error {
	args := []string{
		"--kubeconfig=" + f.kcmKubeconfig,
		"--authentication-kubeconfig=" + f.kcmKubeconfig,
		"--authorization-kubeconfig=" + f.kcmKubeconfig,
		"--bind-address=" + cfg.Addr.String(),
		"--secure-port=" + strconv.Itoa(cp.ports[ControllerManager]),
		"--cert-dir=" + filepath.Join(cp.Dir, "pki", "controller-manager"),
		"--leader-elect=true",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + f.saKey,
		"--root-ca-file=" + f.caCert,
		"--cluster-signing-cert-file=" + f.caCert,
		"--cluster-signing-key-file=" + f.caKey,
		"--service-cluster-ip-range=" + cfg.ServiceCIDR.String(),
		"--controllers=*",
		"--profiling=false",
	}
	if cfg.ClusterCIDR.IsValid() {
		args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+cfg.ClusterCIDR.Masked().String(),
			"--node-cidr-mask-size=24", "--configure-cloud-routes=false")
	}
	return cp.startAndWait(ctx, cfg, ControllerManager, cfg.Bin.Path(ControllerManager), args,
		"https://"+hostPort(cfg.Addr, cp.ports[ControllerManager])+"/healthz", insecureTLS(), func(body string) bool { return body == "ok" })
}

func (cp *ControlPlane) startScheduler(ctx context.Context, cfg Config, f files) error {
	args := []string{
		"--kubeconfig=" + f.schedKubeconfig,
		"--authentication-kubeconfig=" + f.schedKubeconfig,
		"--authorization-kubeconfig=" + f.schedKubeconfig,
		"--bind-address=" + cfg.Addr.String(),
		"--secure-port=" + strconv.Itoa(cp.ports[Scheduler]),
		"--cert-dir=" + filepath.Join(cp.Dir, "pki", "scheduler"),
		"--leader-elect=true",
		"--profiling=false",
	}
	return cp.startAndWait(ctx, cfg, Scheduler, cfg.Bin.Path(Scheduler), args,
		"https://"+hostPort(cfg.Addr, cp.ports[Scheduler])+"/healthz", insecureTLS(), func(body string) bool { return body == "ok" })
}

// insecureTLS is for the controller-manager's and the scheduler's health
// endpoints, served with a certificate they make themselves.
func insecureTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // a self-signed health endpoint on the harness's own address
}

// startAndWait starts one component and polls url until ok accepts the
// body of a 200 answer. It fails at once if the component exits, and after
// cfg.ReadyTimeout; the error carries the end of the component's log.
func (cp *ControlPlane) startAndWait(ctx context.Context, cfg Config, name, path string, args []string, url string, tc *tls.Config, ok func(string) bool) error {
	cp.mu.Lock()
	if cp.stopped {
		cp.mu.Unlock()
		return errors.New("control plane stopped")
	}
	p, err := startProc(cp.netns, name, path, args, filepath.Join(cp.Dir, "logs", name+".log"))
	if err == nil {
		cp.procs = append(cp.procs, p)
	}
	cp.mu.Unlock()
	if err != nil {
		return err
	}
	start := time.Now()
	hc := cp.httpClient(tc, 5*time.Second)
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	var last string
	for {
		if done, err := p.exited(); done {
			if err == nil {
				err = errors.New("exit status 0")
			}
			return fmt.Errorf("%s exited while starting: %w; its log ends:\n%s", name, err, p.tail(40))
		}
		if body, err := get(ctx, hc, url); err != nil {
			last = err.Error()
		} else if ok(body) {
			cp.log.Info("component ready", "component", name, "pid", p.cmd.Process.Pid, "took", time.Since(start).Round(time.Millisecond))
			return nil
		} else {
			last = body
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s (%w), last answer %q; its log ends:\n%s",
				name, time.Since(start).Round(time.Second), context.Cause(ctx), last, p.tail(40))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		return "", fmt.Errorf("request %s: %w", url, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("get %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// Get returns the body of a 200 answer of kube-apiserver to path (say
// "/readyz?verbose"), as the admin user.
func (cp *ControlPlane) Get(ctx context.Context, path string) (string, error) {
	hc := cp.httpClient(cp.adminTLS, 10*time.Second)
	defer hc.CloseIdleConnections()
	return get(ctx, hc, cp.Server+path)
}

// httpClient returns a client that connects from the control plane's
// network namespace.
func (cp *ControlPlane) httpClient(tc *tls.Config, timeout time.Duration) *http.Client {
	tr := &http.Transport{TLSClientConfig: tc}
	if cp.netns != "" {
		tr.DialContext = nsnet.DialContextIn(cp.netns)
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// Command returns a command whose Run, Output and CombinedOutput (not
// Start) run it inside the control plane's network namespace: kubectl
// against Server, say.
func (cp *ControlPlane) Command(ctx context.Context, path string, args ...string) *Cmd {
	return &Cmd{Cmd: exec.CommandContext(ctx, path, args...), netns: cp.netns}
}

// Cmd is an exec.Cmd whose Run, Output and CombinedOutput fork in a
// network namespace.
type Cmd struct {
	*exec.Cmd
	netns string
}

// Run runs the command in the namespace.
func (c *Cmd) Run() error { return inNetNS(c.netns, c.Cmd.Run) }

// Output runs the command in the namespace and returns its standard
// output.
func (c *Cmd) Output() ([]byte, error) {
	var out []byte
	err := inNetNS(c.netns, func() error {
		var err error
		out, err = c.Cmd.Output()
		return err
	})
	return out, err
}

// CombinedOutput runs the command in the namespace and returns its
// standard output and standard error.
func (c *Cmd) CombinedOutput() ([]byte, error) {
	var out []byte
	err := inNetNS(c.netns, func() error {
		var err error
		out, err = c.Cmd.CombinedOutput()
		return err
	})
	return out, err
}

// Running returns the components still running, in start order.
func (cp *ControlPlane) Running() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var names []string
	for _, p := range cp.procs {
		if done, _ := p.exited(); !done {
			names = append(names, p.name)
		}
	}
	return names
}

// PIDs returns the process ID of every component started.
func (cp *ControlPlane) PIDs() map[string]int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	pids := map[string]int{}
	for _, p := range cp.procs {
		pids[p.name] = p.cmd.Process.Pid
	}
	return pids
}

// LogTail returns the last n lines of a component's log (until Stop).
func (cp *ControlPlane) LogTail(component string, n int) string {
	return tailFile(filepath.Join(cp.Dir, "logs", component+".log"), n)
}

// Stop ends the components in the reverse order of their start
// (kube-scheduler, kube-controller-manager, kube-apiserver, then etcd),
// each with SIGTERM and after 10 s SIGKILL, and removes the directory.
// It is safe to call more than once and from several goroutines; every
// call returns the first call's result.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		if cp.unwatch != nil {
			cp.unwatch()
		}
		cp.mu.Lock()
		cp.stopped = true
		procs := cp.procs
		cp.mu.Unlock()
		var errs []error
		for i := len(procs) - 1; i >= 0; i-- {
			if err := procs[i].stop(10 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(cp.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", cp.Dir, err))
		}
		cp.stopErr = errors.Join(errs...)
		cp.log.Info("control plane stopped", "dir", cp.Dir)
	})
	return cp.stopErr
}

// freePort returns a TCP port free on addr at the time of the call.
func freePort(netns string, addr netip.Addr) (int, error) {
	var port int
	err := inNetNS(netns, func() error {
		l, err := net.Listen("tcp", hostPort(addr, 0))
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	if err != nil {
		return 0, fmt.Errorf("free port on %s: %w", addr, err)
	}
	return port, nil
}

func hostPort(addr netip.Addr, port int) string {
	return netip.AddrPortFrom(addr, uint16(port)).String()
}

// firstIP is the first address of the service range, the ClusterIP of the
// kubernetes Service.
func firstIP(p netip.Prefix) (netip.Addr, error) {
	a := p.Masked().Addr().Next()
	if !p.Contains(a) {
		return netip.Addr{}, fmt.Errorf("service range %s has no first address", p)
	}
	return a, nil
}
