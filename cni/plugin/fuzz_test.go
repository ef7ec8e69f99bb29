package plugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// FuzzLoadNetConf feeds arbitrary stdin to the configuration parser: it
// must never panic, must refuse with CNI error 6 (undecodable) or 7 (invalid
// value) and accept only configurations that hold the validated invariants.
func FuzzLoadNetConf(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.0.0","name":"vnet","type":"vnet-cni"}`,
		`{"cniVersion":"1.1.0","name":"vnet","type":"vnet-cni","mode":"bridge","bridge":"azure0","ipamdSocket":"/run/vnet-cni/ipamd.sock","mtu":1500,"snatExclusions":["10.0.0.0/8"],"logLevel":"debug","ipamdTimeout":"3s","releaseSpool":"/var/lib/x","lockDir":"/run/x","logFile":"/var/log/x"}`,
		`{"name":"vnet","mtu":70000}`,
		`{"name":"vnet","bridge":"0123456789abcdef"}`,
		`{"name":"vnet","snatExclusions":["::/0"]}`,
		`{"name":"vnet","ipamdTimeout":"-1s"}`,
		`{"name":"vnet","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/16"}]}}`,
		`{"name":"","mode":"routed"}`,
		`[]`, `null`, `{`, ``, `"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := loadNetConf(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error is not a CNI error: %T %v", err, err)
			}
			if te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error code %d, want 6 or 7: %v", te.Code, err)
			}
			if te.Msg == "" {
				t.Fatal("error without a message")
			}
			return
		}
		switch {
		case conf.Name == "":
			t.Fatal("accepted a configuration without a name")
		case conf.Mode != api.ModeBridge:
			t.Fatalf("accepted mode %q", conf.Mode)
		case validIfName(conf.Bridge) != nil:
			t.Fatalf("accepted bridge %q", conf.Bridge)
		case !strings.HasPrefix(conf.IPAMDSocket, "/"):
			t.Fatalf("accepted socket %q", conf.IPAMDSocket)
		case conf.MTU != 0 && (conf.MTU < 576 || conf.MTU > 9000):
			t.Fatalf("accepted mtu %d", conf.MTU)
		case conf.ipamdTimeout <= 0:
			t.Fatalf("derived timeout %s", conf.ipamdTimeout)
		case len(conf.snatExclusions) != len(conf.SNATExclusions):
			t.Fatalf("derived %d exclusions from %d", len(conf.snatExclusions), len(conf.SNATExclusions))
		}
		for _, p := range conf.snatExclusions {
			if !p.Addr().Is4() || p != p.Masked() {
				t.Fatalf("derived exclusion %s", p)
			}
		}
	})
}

// FuzzCNIEnv fuzzes what the plugin parses from its environment: CNI_ARGS
// and CNI_IFNAME. No panic; a bad CNI_ARGS is CNI error 4; an accepted
// interface name fits IFNAMSIZ and has no separator.
func FuzzCNIEnv(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=abc", "eth0")
	f.Add("K8S_POD_NAME=a=b", "net1")
	f.Add("FOO=bar", "0123456789abcdef")
	f.Add(";;;=", "..")
	f.Add("K8S_POD_NAME", "a/b")
	f.Add("IgnoreUnknown=maybe;X=1", "eth 0")
	f.Fuzz(func(t *testing.T, args, ifName string) {
		k, err := loadK8sArgs(args)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("CNI_ARGS %q: error %v, want CNI error 4", args, err)
			}
		} else if strings.ContainsRune(string(k.K8S_POD_NAME), ';') {
			t.Fatalf("CNI_ARGS %q: pod name %q contains the separator", args, k.K8S_POD_NAME)
		}
		if validIfName(ifName) == nil {
			if len(ifName) == 0 || len(ifName) > maxIfNameLen || strings.ContainsAny(ifName, "/: \t\n") || ifName == "." || ifName == ".." {
				t.Fatalf("accepted interface name %q", ifName)
			}
		}
	})
}
