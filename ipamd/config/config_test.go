package config

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vnet-cni/vnet-cni/ipamd/pool"
)

var cmpAddrPort = cmpopts.EquateComparable(netip.AddrPort{})

// documented is the configuration the package documents as its defaults,
// spelt out independently of Default.
var documented = Config{
	WarmIPTarget:   10,
	MinIPTarget:    0,
	MaxIPs:         30,
	IPAddressCount: 10,
	BatchSize:      10,
	Cooldown:       Duration(30 * time.Second),
	ReleaseDelay:   Duration(60 * time.Second),
	AllocateWait:   Duration(5 * time.Second),
	ResyncInterval: Duration(60 * time.Second),
	RecoveryGrace:  Duration(30 * time.Second),
	SocketPath:     "/run/vnet-cni/ipamd.sock",
	StoreDir:       "/run/vnet-cni/store",
	CNIConfDir:     "/etc/cni/net.d",
	CNIConfName:    "10-vnet-cni.conflist",
	CNIVersion:     "1.1.0",
	ReleaseSpool:   "/var/lib/vnet-cni/release-spool",
	PluginLockDir:  "/run/vnet-cni",
	MetricsAddr:    netip.MustParseAddrPort("127.0.0.1:10093"),
	LogLevel:       "info",
	Mode:           "bridge",
	NodeSetup:      "ipamd",
	Cloud: Cloud{
		Provider:    "azure",
		CallTimeout: Duration(30 * time.Second),
		Azure: Azure{
			ResourceManagerEndpoint: "https://management.azure.com",
			ResourceManagerAudience: "https://management.azure.com/",
			IMDSEndpoint:            "http://169.254.169.254",
			Credential:              "managedIdentity",
			CloudConfigFile:         "/etc/kubernetes/azure.json",
		},
		AWS: AWS{IMDSEndpoint: "http://169.254.169.254", SweepInterval: Duration(5 * time.Minute), SweepGrace: Duration(10 * time.Minute)},
	},
	Kubernetes: Kubernetes{StatusInterval: Duration(5 * time.Second)},
	Kubenet: Kubenet{
		Bridge: "vnetbr0", StateDir: "/run/vnet-cni/podcidr", MaxRoutes: 1000,
		RouteInterval: Duration(30 * time.Second), RouteSettle: Duration(10 * time.Second), LeaseName: "vnet-cni-routes", LeaseNamespace: "vnet-cni",
	},
}

func TestDefaults(t *testing.T) {
	if diff := cmp.Diff(documented, Default(), cmpAddrPort); diff != "" {
		t.Errorf("Default() differs from the documented defaults (-want +got):\n%s", diff)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
	for _, doc := range []string{`{}`, " {\n} \n", `{"cloud": {}}`, `{"cloud": {"azure": {}}}`} {
		got, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if diff := cmp.Diff(documented, got, cmpAddrPort); diff != "" {
			t.Errorf("Parse(%q) did not apply the defaults (-want +got):\n%s", doc, diff)
		}
	}
}

// TestRoundTrip writes configurations as JSON and reads them back.
func TestRoundTrip(t *testing.T) {
	custom := Default()
	custom.WarmIPTarget = 3
	custom.IPAddressCount = 0
	custom.Cooldown = Duration(1500 * time.Millisecond)
	custom.ReleaseSpool = ""
	custom.MetricsAddr = netip.MustParseAddrPort("[::1]:9000")
	custom.Cloud.Azure.ManagedIdentityClientID = "0123abcd-4567-89ab-cdef-0123456789AB"
	for name, c := range map[string]Config{"defaults": Default(), "custom": custom} {
		t.Run(name, func(t *testing.T) {
			data, err := json.MarshalIndent(c, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse(%s): %v", data, err)
			}
			if diff := cmp.Diff(c, got, cmpAddrPort); diff != "" {
				t.Errorf("round trip mismatch (-want +got):\n%s\n%s", diff, data)
			}
		})
	}
	data, err := json.Marshal(Default())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"cooldown":"30s"`, `"releaseDelay":"1m0s"`, `"metricsAddr":"127.0.0.1:10093"`, `"callTimeout":"30s"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("JSON of Default() lacks %s: %s", want, data)
		}
	}
}

func TestIPAddressCountDefault(t *testing.T) {
	tests := []struct {
		doc  string
		want int
	}{
		{`{}`, 10},
		{`{"warmIPTarget": 5}`, 5},
		{`{"warmIPTarget": 5, "ipAddressCount": 20}`, 20},
		{`{"warmIPTarget": 5, "ipAddressCount": 0}`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.doc, func(t *testing.T) {
			c, err := Parse([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if c.IPAddressCount != tc.want {
				t.Errorf("ipAddressCount = %d, want %d", c.IPAddressCount, tc.want)
			}
		})
	}
}

// With kubernetes.enabled and no maxIPs in the file, maxIPs is 0: the
// node's allocatable pods. ipAddressCount still defaults to warmIPTarget.
func TestMaxIPsFromNode(t *testing.T) {
	tests := []struct {
		doc           string
		maxIPs, count int
	}{
		{`{"kubernetes": {"enabled": true}}`, 0, 10},
		{`{"kubernetes": {"enabled": true}, "warmIPTarget": 40}`, 0, 40},
		{`{"kubernetes": {"enabled": true}, "maxIPs": 20}`, 20, 10},
		{`{"kubernetes": {"enabled": true}, "maxIPs": 0}`, 0, 10},
		{`{"kubernetes": {"enabled": false}}`, 30, 10},
	}
	for _, tc := range tests {
		t.Run(tc.doc, func(t *testing.T) {
			c, err := Parse([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if c.MaxIPs != tc.maxIPs || c.IPAddressCount != tc.count || c.PoolTargets().MaxIPs != tc.maxIPs {
				t.Errorf("maxIPs %d, ipAddressCount %d; want %d, %d", c.MaxIPs, c.IPAddressCount, tc.maxIPs, tc.count)
			}
		})
	}
}

func TestExample(t *testing.T) {
	got, err := Load(filepath.Join("testdata", "example.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := documented
	want.WarmIPTarget = 8
	want.MinIPTarget = 4
	want.MaxIPs = 40
	want.IPAddressCount = 16
	want.BatchSize = 8
	want.Cooldown = Duration(45 * time.Second)
	want.ReleaseDelay = Duration(2 * time.Minute)
	want.AllocateWait = Duration(3 * time.Second)
	want.ResyncInterval = Duration(90 * time.Second)
	want.CNIBinDir = "/opt/cni/bin"
	want.CNIVersion = "1.0.0"
	want.ReleaseSpool = ""
	want.LogLevel = "debug"
	want.Cloud.CallTimeout = Duration(20 * time.Second)
	want.Cloud.Azure.ResourceManagerEndpoint = "https://10.255.0.1:8443"
	want.Cloud.Azure.CAFile = "/etc/vnet-cni/sim-ca.pem"
	want.Cloud.Azure.Credential = "staticTokenFile"
	want.Cloud.Azure.TokenFile = "/etc/vnet-cni/token"
	if diff := cmp.Diff(want, got, cmpAddrPort); diff != "" {
		t.Errorf("example config mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.json"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: error = %v, want fs.ErrNotExist", err)
	}
	path := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(path, []byte(`{"maxIPs": 1025}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "maxIPs" || !strings.Contains(err.Error(), path) {
		t.Errorf("Load of a bad file: error = %v, want a FieldError for maxIPs naming the file", err)
	}
}

// TestParseErrors feeds bad documents and checks the exact fields named.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		// fields are the fields named by the FieldErrors, in order.
		fields []string
		// msg is a substring of the whole error.
		msg string
	}{
		{"warm target above the NIC", `{"warmIPTarget": 300, "maxIPs": 255}`, []string{"warmIPTarget"}, "warmIPTarget: 300 out of range 0..255"},
		{"negative warm target", `{"warmIPTarget": -1}`, []string{"warmIPTarget"}, "-1 out of range 0..30 (maxIPs)"},
		{"warm target above maxIPs", `{"warmIPTarget": 31, "ipAddressCount": 5}`, []string{"warmIPTarget"}, "31 out of range 0..30 (maxIPs)"},
		{"min target above maxIPs", `{"minIPTarget": 31}`, []string{"minIPTarget"}, "out of range 0..30 (maxIPs)"},
		{"maxIPs zero", `{"maxIPs": 0}`, []string{"maxIPs"}, "maxIPs: 0 out of range 1..1024"},
		{"maxIPs above the sanity bound", `{"maxIPs": 1025}`, []string{"maxIPs"}, "1025 out of range 1..1024"},
		{"ipAddressCount above maxIPs", `{"ipAddressCount": 31}`, []string{"ipAddressCount"}, "31 out of range 0..30 (maxIPs)"},
		{"ipAddressCount derived from an invalid warm target is not reported twice", `{"warmIPTarget": 40}`, []string{"warmIPTarget"}, "40 out of range"},
		{"batch size zero", `{"batchSize": 0}`, []string{"batchSize"}, "0 out of range 1..1024"},
		{"negative cooldown", `{"cooldown": "-1s"}`, []string{"cooldown"}, "-1s out of range 0s..1h0m0s"},
		{"release delay too long", `{"releaseDelay": "25h"}`, []string{"releaseDelay"}, "out of range 0s..24h0m0s"},
		{"allocate wait too long", `{"allocateWait": "31s"}`, []string{"allocateWait"}, "31s out of range 0s..30s"},
		{"resync too short", `{"resyncInterval": "500ms"}`, []string{"resyncInterval"}, "500ms out of range 1s..24h0m0s"},
		{"recovery grace too long", `{"recoveryGrace": "1h"}`, []string{"recoveryGrace"}, "1h0m0s out of range 1s..10m0s"},
		{"duration as a number", `{"cooldown": 30}`, []string{"cooldown"}, `not a duration string such as "30s"`},
		{"duration without unit", `{"cooldown": "30"}`, []string{"cooldown"}, `"30" is not a duration`},
		{"integer as a string", `{"maxIPs": "30"}`, []string{"maxIPs"}, `"30" is not an integer`},
		{"fractional integer", `{"batchSize": 1.5}`, []string{"batchSize"}, "1.5 is not an integer"},
		{"string as a number", `{"logLevel": 1}`, []string{"logLevel"}, "1 is not a string"},
		{"null", `{"warmIPTarget": null}`, []string{"warmIPTarget"}, "null is not allowed"},
		{"unknown field", `{"warmIPTargets": 3}`, []string{"warmIPTargets"}, "unknown field"},
		{"wrongly cased field", `{"warmIpTarget": 3}`, []string{"warmIpTarget"}, "unknown field"},
		{"unknown nested field", `{"cloud": {"azure": {"tenantID": "x"}}}`, []string{"cloud.azure.tenantID"}, "unknown field"},
		{"section not an object", `{"cloud": "azure"}`, []string{"cloud"}, "must be an object"},
		{"document not an object", `[1]`, []string{"(document)"}, "must be an object"},
		{"relative socket path", `{"socketPath": "ipamd.sock"}`, []string{"socketPath"}, "clean absolute path"},
		{"socket path too long", `{"socketPath": "/` + strings.Repeat("s", 107) + `"}`, []string{"socketPath"}, "at most 107"},
		{"empty store dir", `{"storeDir": ""}`, []string{"storeDir"}, "required"},
		{"unclean cni conf dir", `{"cniConfDir": "/etc/cni/../net.d"}`, []string{"cniConfDir"}, "clean absolute path"},
		{"relative cni bin dir", `{"cniBinDir": "bin"}`, []string{"cniBinDir"}, "clean absolute path"},
		{"conf name not a conflist", `{"cniConfName": "10-vnet.conf"}`, []string{"cniConfName"}, `ending in ".conflist"`},
		{"conf name with a directory", `{"cniConfName": "x/10.conflist"}`, []string{"cniConfName"}, `ending in ".conflist"`},
		{"cni version", `{"cniVersion": "0.4.0"}`, []string{"cniVersion"}, `"0.4.0" is not allowed (allowed: 1.0.0, 1.1.0)`},
		{"relative release spool", `{"releaseSpool": "spool"}`, []string{"releaseSpool"}, "clean absolute path"},
		{"release spool is the store", `{"releaseSpool": "/run/vnet-cni/store"}`, []string{"releaseSpool"}, "must differ from storeDir"},
		{"metrics on all interfaces", `{"metricsAddr": "0.0.0.0:10093"}`, []string{"metricsAddr"}, "must be a loopback address"},
		{"metrics on a node address", `{"metricsAddr": "10.0.0.4:10093"}`, []string{"metricsAddr"}, "must be a loopback address"},
		{"metrics port zero", `{"metricsAddr": "127.0.0.1:0"}`, []string{"metricsAddr"}, "port 1..65535"},
		{"metrics by host name", `{"metricsAddr": "localhost:10093"}`, []string{"metricsAddr"}, "not an ip:port"},
		{"log level", `{"logLevel": "trace"}`, []string{"logLevel"}, `"trace" is not allowed (allowed: debug, info, warn, error)`},
		{"kubenet without its cidrs", `{"mode": "kubenet"}`, []string{"kubenet.clusterCIDR", "kubenet.podCIDR"}, "required with mode kubenet"},
		{"kubenet pod cidr outside the cluster", `{"mode": "kubenet", "kubenet": {"clusterCIDR": "10.244.0.0/16", "podCIDR": "10.245.1.0/24"}}`, []string{"kubenet.podCIDR"}, "not inside kubenet.clusterCIDR"},
		{"kubenet pod cidr too small", `{"mode": "kubenet", "kubenet": {"clusterCIDR": "10.244.0.0/16", "podCIDR": "10.244.1.0/30"}}`, []string{"kubenet.podCIDR"}, "8..29"},
		{"kubenet on aws", `{"mode": "kubenet", "cloud": {"provider": "aws", "aws": {"clusterName": "c"}}, "kubenet": {"clusterCIDR": "10.244.0.0/16", "podCIDR": "10.244.1.0/24"}}`, []string{"mode"}, "has none (use routed)"},
		{"kubenet controller without kubernetes", `{"mode": "kubenet", "kubenet": {"clusterCIDR": "10.244.0.0/16", "podCIDR": "10.244.1.0/24", "controller": true}}`, []string{"kubenet.controller"}, "needs kubernetes.enabled"},
		{"kubenet bad bits", `{"mode": "kubenet", "kubenet": {"clusterCIDR": "nope", "podCIDR": "10.244.1.0/24", "bridge": "a/b", "stateDir": "/run/vnet-cni/store", "maxRoutes": 0, "routeInterval": "0s", "routeTable": "rt1", "leaseName": "A_B"}}`, []string{"kubenet.clusterCIDR", "kubenet.bridge", "kubenet.stateDir", "kubenet.maxRoutes", "kubenet.routeInterval", "kubenet.routeTable", "kubenet.leaseName"}, "is not an IPv4 CIDR"},
		{"kubenet from the node", `{"mode": "kubenet", "kubernetes": {"enabled": true}, "kubenet": {"clusterCIDR": "10.244.0.0/16", "podCIDR": "10.244.1.0/24", "maxRoutes": 3}, "snatExclusions": ["bad"]}`, []string{"snatExclusions[0]"}, "not an IPv4 CIDR"},
		{"unknown mode", `{"mode": "transparent"}`, []string{"mode"}, "(allowed: bridge, routed, kubenet)"},
		{"provider", `{"cloud": {"provider": "gcp"}}`, []string{"cloud.provider"}, "(allowed: azure, aws)"},
		{"aws without a cluster name", `{"cloud": {"provider": "aws"}}`, []string{"cloud.aws.clusterName"}, "tags the ENIs"},
		{"aws cluster name", `{"cloud": {"provider": "aws", "aws": {"clusterName": "-x"}}}`, []string{"cloud.aws.clusterName"}, "starting with a letter or digit"},
		{"aws region", `{"cloud": {"provider": "aws", "aws": {"clusterName": "c1", "region": "Europe"}}}`, []string{"cloud.aws.region"}, "such as eu-west-1"},
		{"aws endpoint over http", `{"cloud": {"provider": "aws", "aws": {"clusterName": "c1", "ec2Endpoint": "http://ec2.local"}}}`, []string{"cloud.aws.ec2Endpoint"}, "must use https"},
		{"aws sweep", `{"cloud": {"provider": "aws", "aws": {"clusterName": "c1", "sweepInterval": "1s"}}}`, []string{"cloud.aws.sweepInterval"}, "1s out of range 10s..24h0m0s"},
		{"aws sweep grace", `{"cloud": {"provider": "aws", "aws": {"clusterName": "c1", "sweepGrace": "0s"}}}`, []string{"cloud.aws.sweepGrace"}, "0s out of range 1s..24h0m0s"},
		{"aws relative ca", `{"cloud": {"provider": "aws", "aws": {"clusterName": "c1", "caFile": "ca.pem"}}}`, []string{"cloud.aws.caFile"}, "clean absolute path"},
		{"call timeout", `{"cloud": {"callTimeout": "0s"}}`, []string{"cloud.callTimeout"}, "0s out of range 1s..10m0s"},
		{"maxIPs zero without kubernetes", `{"maxIPs": 0, "warmIPTarget": 0}`, []string{"maxIPs"}, "needs kubernetes.enabled"},
		{"kubeconfig relative", `{"kubernetes": {"enabled": true, "kubeconfig": "kube.conf"}}`, []string{"kubernetes.kubeconfig"}, "clean absolute path"},
		{"node name upper case", `{"kubernetes": {"enabled": true, "nodeName": "Node-1"}}`, []string{"kubernetes.nodeName"}, `"Node-1" is not a node name`},
		{"status interval", `{"kubernetes": {"statusInterval": "100ms"}}`, []string{"kubernetes.statusInterval"}, "100ms out of range 1s..5m0s"},
		{"warm target above the sanity bound with maxIPs from the node", `{"kubernetes": {"enabled": true}, "warmIPTarget": 1025, "ipAddressCount": 1}`, []string{"warmIPTarget"}, "1025 out of range 0..1024"},
		{"arm endpoint over http", `{"cloud": {"azure": {"resourceManagerEndpoint": "http://management.azure.com"}}}`, []string{"cloud.azure.resourceManagerEndpoint"}, "must use https"},
		{"arm endpoint not a url", `{"cloud": {"azure": {"resourceManagerEndpoint": "management.azure.com"}}}`, []string{"cloud.azure.resourceManagerEndpoint"}, "absolute https URL"},
		{"empty audience", `{"cloud": {"azure": {"resourceManagerAudience": ""}}}`, []string{"cloud.azure.resourceManagerAudience"}, "absolute https URL"},
		{"imds endpoint scheme", `{"cloud": {"azure": {"imdsEndpoint": "ftp://169.254.169.254"}}}`, []string{"cloud.azure.imdsEndpoint"}, "must use http or https"},
		{"relative ca file", `{"cloud": {"azure": {"caFile": "ca.pem"}}}`, []string{"cloud.azure.caFile"}, "clean absolute path"},
		{"credential", `{"cloud": {"azure": {"credential": "clientSecret"}}}`, []string{"cloud.azure.credential"}, "(allowed: managedIdentity, cloudConfig, staticTokenFile)"},
		{"cloud config credential without the file", `{"cloud": {"azure": {"credential": "cloudConfig", "cloudConfigFile": ""}}}`, []string{"cloud.azure.cloudConfigFile"}, "required with credential cloudConfig"},
		{"relative cloud config", `{"cloud": {"azure": {"cloudConfigFile": "azure.json"}}}`, []string{"cloud.azure.cloudConfigFile"}, "clean absolute path"},
		{"client id with cloud config", `{"cloud": {"azure": {"credential": "cloudConfig", "managedIdentityClientID": "0123abcd-4567-89ab-cdef-0123456789ab"}}}`, []string{"cloud.azure.managedIdentityClientID"}, "userAssignedIdentityID selects it"},
		{"entra endpoint over http", `{"cloud": {"azure": {"credential": "cloudConfig", "activeDirectoryEndpoint": "http://login.local/"}}}`, []string{"cloud.azure.activeDirectoryEndpoint"}, "must use https"},
		{"entra endpoint without cloud config", `{"cloud": {"azure": {"activeDirectoryEndpoint": "https://login.local/"}}}`, []string{"cloud.azure.activeDirectoryEndpoint"}, "only allowed with credential cloudConfig"},
		{"static token without file", `{"cloud": {"azure": {"credential": "staticTokenFile"}}}`, []string{"cloud.azure.tokenFile"}, "required"},
		{"token file with managed identity", `{"cloud": {"azure": {"tokenFile": "/etc/token"}}}`, []string{"cloud.azure.tokenFile"}, "only allowed with credential staticTokenFile"},
		{"client id with static token", `{"cloud": {"azure": {"credential": "staticTokenFile", "tokenFile": "/t", "managedIdentityClientID": "0123abcd-4567-89ab-cdef-0123456789ab"}}}`, []string{"cloud.azure.managedIdentityClientID"}, "only allowed with credential managedIdentity"},
		{"client id not a guid", `{"cloud": {"azure": {"managedIdentityClientID": "my-identity"}}}`, []string{"cloud.azure.managedIdentityClientID"}, "is not a client ID"},
		{"several errors at once", `{"warmIPTarget": 300, "mode": "ipvlan", "bogus": 1, "cloud": {"callTimeout": "1h"}}`, []string{"bogus", "warmIPTarget", "mode", "cloud.callTimeout"}, "bogus: unknown field"},
		{"decode and validation errors together", `{"cooldown": 5, "maxIPs": 2000}`, []string{"cooldown", "maxIPs"}, "cooldown: 5 is not a duration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse(%s) succeeded", tc.doc)
			}
			if diff := cmp.Diff(tc.fields, fieldsOf(err)); diff != "" {
				t.Errorf("fields named (-want +got):\n%s\nerror: %v", diff, err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
		})
	}
}

// fieldsOf returns the Field of every *FieldError in err's tree, in order.
func fieldsOf(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if e := errors.Unwrap(err); e != nil {
			walk(e)
			return
		}
		var fe *FieldError
		if errors.As(err, &fe) {
			out = append(out, fe.Field)
		}
	}
	walk(err)
	return out
}

func TestSyntaxError(t *testing.T) {
	for _, doc := range []string{``, `{`, `{"warmIPTarget": 1,}`, `{} {}`} {
		_, err := Parse([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), "parse config") {
			t.Errorf("Parse(%q) error = %v, want a parse error", doc, err)
		}
	}
}

// TestValidateAfterOverride is what the daemon does after applying flags.
func TestValidateAfterOverride(t *testing.T) {
	c := Default()
	c.MaxIPs = 5
	err := c.Validate()
	want := []string{"warmIPTarget", "ipAddressCount"}
	if diff := cmp.Diff(want, fieldsOf(err)); diff != "" {
		t.Errorf("fields named (-want +got):\n%s\nerror: %v", diff, err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Msg != "10 out of range 0..5 (maxIPs)" {
		t.Errorf("first error = %v", fe)
	}
}

func TestPoolTargets(t *testing.T) {
	c := Default()
	c.MinIPTarget = 2
	want := pool.Targets{WarmIPTarget: 10, MinIPTarget: 2, MaxIPs: 30, BatchSize: 10, ReleaseDelay: time.Minute}
	if diff := cmp.Diff(want, c.PoolTargets()); diff != "" {
		t.Errorf("PoolTargets mismatch (-want +got):\n%s", diff)
	}
	if got := slices.Index([]string{LogDebug, LogInfo, LogWarn, LogError}, c.LogLevel); got < 0 {
		t.Errorf("default log level %q not among the allowed ones", c.LogLevel)
	}
}

func TestWithTargetsOfAndChanged(t *testing.T) {
	running := Default()
	next := Default()
	next.WarmIPTarget, next.MaxIPs, next.BatchSize, next.ReleaseDelay = 20, 50, 5, Duration(time.Second)
	if got := Changed(running.WithTargetsOf(next), next); len(got) != 0 {
		t.Errorf("only targets changed, Changed = %v, want none", got)
	}
	if diff := cmp.Diff([]string{"batchSize", "maxIPs", "releaseDelay", "warmIPTarget"}, Changed(running, next)); diff != "" {
		t.Errorf("Changed mismatch (-want +got):\n%s", diff)
	}
	next.LogLevel = LogDebug
	next.Cloud.Azure.CAFile = "/etc/ca.pem"
	if diff := cmp.Diff([]string{"cloud.azure.caFile", "logLevel"}, Changed(running.WithTargetsOf(next), next)); diff != "" {
		t.Errorf("Changed besides targets mismatch (-want +got):\n%s", diff)
	}
	if got := running.WithTargetsOf(next).PoolTargets(); got != next.PoolTargets() {
		t.Errorf("targets %+v, want %+v", got, next.PoolTargets())
	}
}

func TestAWS(t *testing.T) {
	c, err := Parse([]byte(`{"cloud": {"provider": "aws", "aws": {"clusterName": "prod-1", "region": "eu-west-1",
		"ec2Endpoint": "https://10.0.0.1:8443", "caFile": "/run/vnet-sim/ca.pem", "sweepInterval": "10m", "sweepGrace": "2m"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := AWS{ClusterName: "prod-1", Region: "eu-west-1", EC2Endpoint: "https://10.0.0.1:8443", CAFile: "/run/vnet-sim/ca.pem",
		IMDSEndpoint: "http://169.254.169.254", SweepInterval: Duration(10 * time.Minute), SweepGrace: Duration(2 * time.Minute)}
	if diff := cmp.Diff(want, c.Cloud.AWS); diff != "" {
		t.Errorf("aws (-want +got):\n%s", diff)
	}
	// The Azure section is not checked for an AWS node.
	if _, err := Parse([]byte(`{"cloud": {"provider": "aws", "aws": {"clusterName": "c"}, "azure": {"credential": "nonsense"}}}`)); err != nil {
		t.Errorf("an AWS node's azure section is checked: %v", err)
	}
}
