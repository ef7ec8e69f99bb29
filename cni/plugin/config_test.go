package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

func TestLoadNetConfDefaults(t *testing.T) {
	c, err := loadNetConf([]byte(`{"cniVersion":"1.1.0","name":"vnet","type":"vnet-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "bridge" || c.Bridge != "azure0" || c.IPAMDSocket != "/run/vnet-cni/ipamd.sock" ||
		c.ipamdTimeout != 10*time.Second || c.logLevel != "info" || c.ReleaseSpool != "/var/lib/vnet-cni/release-spool" || c.LockDir != "/run/vnet-cni" {
		t.Errorf("defaults not applied: %+v", c)
	}
	c, err = loadNetConf([]byte(`{"cniVersion":"1.1.0","name":"vnet","type":"vnet-cni","mode":"kubenet"}`))
	if err != nil || c.Mode != "kubenet" || c.Bridge != "vnetbr0" {
		t.Errorf("kubenet defaults: %+v, %v; want the bridge vnetbr0", c, err)
	}
	c, err = loadNetConf([]byte(`{"cniVersion":"1.1.0","name":"vnet","type":"vnet-cni","snatExclusions":["10.0.0.0/8","192.168.1.7/16"],"ipamdTimeout":"3s","mtu":1400}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.snatExclusions) != 2 || c.snatExclusions[1].String() != "192.168.0.0/16" || c.ipamdTimeout != 3*time.Second || c.MTU != 1400 {
		t.Errorf("derived values wrong: %+v", c)
	}
}

// TestConflistEntryRoundTrip writes vnet-cni's entry the way vnet-ipamd does
// (api.PluginEntry, inside an api.Conflist) and reads it the way the plugin
// does: every key of the contract arrives, none is shadowed by a key of the
// CNI library's NetConf, and the runtime's name and cniVersion come along.
func TestConflistEntryRoundTrip(t *testing.T) {
	want := api.PluginConf{
		Mode:           api.ModeBridge,
		Bridge:         "br-test",
		Master:         "eth1",
		IPAMDSocket:    "/run/test/ipamd.sock",
		MTU:            1400,
		SNATExclusions: []string{"10.0.0.0/8"},
		LogFile:        "/var/log/vnet-cni.log",
		LogLevel:       "debug",
		IPAMDTimeout:   "3s",
		ReleaseSpool:   "/var/lib/test/spool",
		LockDir:        "/run/test",
		VNetCIDRs:      []string{"10.240.0.0/12"},
		ManagedNode:    true,
		AllowMetadata:  true,
	}
	// A zero field would pass unnoticed if its key were lost.
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("test value leaves PluginConf.%s zero", v.Type().Field(i).Name)
		}
	}
	list, err := json.Marshal(api.Conflist{CNIVersion: "1.1.0", Name: api.NetworkName,
		Plugins: []any{api.PluginEntry{Type: api.PluginType, PluginConf: want}}})
	if err != nil {
		t.Fatal(err)
	}
	// The runtime hands the plugin its entry with the list's name and
	// cniVersion added, as libcni does.
	var doc struct {
		CNIVersion string                       `json:"cniVersion"`
		Name       string                       `json:"name"`
		Plugins    []map[string]json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(list, &doc); err != nil {
		t.Fatal(err)
	}
	entry := doc.Plugins[0]
	entry["cniVersion"], _ = json.Marshal(doc.CNIVersion)
	entry["name"], _ = json.Marshal(doc.Name)
	stdin, err := json.Marshal(entry)
	if err != nil {
		t.Fatal(err)
	}
	c, err := loadNetConf(stdin)
	if err != nil {
		t.Fatalf("loadNetConf(%s): %v", stdin, err)
	}
	if d := cmp.Diff(want, c.PluginConf); d != "" {
		t.Errorf("entry after the round trip (-written +read):\n%s", d)
	}
	if c.Type != api.PluginType || c.Name != api.NetworkName || c.CNIVersion != "1.1.0" {
		t.Errorf("generic keys: type %q name %q cniVersion %q", c.Type, c.Name, c.CNIVersion)
	}
}

func TestLoadNetConfErrors(t *testing.T) {
	base := `"cniVersion":"1.1.0","type":"vnet-cni"`
	for _, tc := range []struct {
		name  string
		conf  string
		code  uint
		field string
	}{
		{"not json", `{`, types.ErrDecodingFailure, "decode"},
		{"wrong type", `{` + base + `,"name":"n","mtu":"big"}`, types.ErrDecodingFailure, "decode"},
		{"no name", `{` + base + `}`, types.ErrInvalidNetworkConfig, "name"},
		{"mode", `{` + base + `,"name":"n","mode":"overlay"}`, types.ErrInvalidNetworkConfig, "mode"},
		{"bridge too long", `{` + base + `,"name":"n","bridge":"averyveryverylongname"}`, types.ErrInvalidNetworkConfig, "bridge"},
		{"bridge with slash", `{` + base + `,"name":"n","bridge":"a/b"}`, types.ErrInvalidNetworkConfig, "bridge"},
		{"master", `{` + base + `,"name":"n","master":"x y"}`, types.ErrInvalidNetworkConfig, "master"},
		{"kubenet with a master", `{` + base + `,"name":"n","mode":"kubenet","master":"eth0"}`, types.ErrInvalidNetworkConfig, "takes no interface over"},
		{"kubenet bridge", `{` + base + `,"name":"n","mode":"kubenet","bridge":"averyveryverylongname"}`, types.ErrInvalidNetworkConfig, "bridge"},
		{"socket relative", `{` + base + `,"name":"n","ipamdSocket":"ipamd.sock"}`, types.ErrInvalidNetworkConfig, "ipamdSocket"},
		{"mtu low", `{` + base + `,"name":"n","mtu":100}`, types.ErrInvalidNetworkConfig, "mtu"},
		{"mtu high", `{` + base + `,"name":"n","mtu":65000}`, types.ErrInvalidNetworkConfig, "mtu"},
		{"snat not cidr", `{` + base + `,"name":"n","snatExclusions":["10.0.0.1"]}`, types.ErrInvalidNetworkConfig, "snatExclusions"},
		{"snat ipv6", `{` + base + `,"name":"n","snatExclusions":["fd00::/8"]}`, types.ErrInvalidNetworkConfig, "snatExclusions"},
		{"timeout", `{` + base + `,"name":"n","ipamdTimeout":"forever"}`, types.ErrInvalidNetworkConfig, "ipamdTimeout"},
		{"timeout range", `{` + base + `,"name":"n","ipamdTimeout":"1h"}`, types.ErrInvalidNetworkConfig, "ipamdTimeout"},
		{"log level", `{` + base + `,"name":"n","logLevel":"loud"}`, types.ErrInvalidNetworkConfig, "logLevel"},
		{"log file relative", `{` + base + `,"name":"n","logFile":"x.log"}`, types.ErrInvalidNetworkConfig, "logFile"},
		{"oversized", `{` + base + `,"name":"` + strings.Repeat("x", maxStdin) + `"}`, types.ErrDecodingFailure, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadNetConf([]byte(tc.conf))
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not a CNI error", err)
			}
			if e.Code != tc.code {
				t.Errorf("code = %d, want %d (%v)", e.Code, tc.code, e)
			}
			if !strings.Contains(e.Msg+" "+e.Details, tc.field) {
				t.Errorf("error %q does not name %q", e.Msg+" "+e.Details, tc.field)
			}
		})
	}
}

func TestLoadK8sArgs(t *testing.T) {
	k, err := loadK8sArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc")
	if err != nil {
		t.Fatal(err)
	}
	if k.K8S_POD_NAMESPACE != "default" || k.K8S_POD_NAME != "web-0" {
		t.Errorf("args %+v", k)
	}
	if _, err := loadK8sArgs("K8S_POD_NAME"); err == nil {
		t.Error("malformed CNI_ARGS accepted")
	}
}

// TestLoadNetConfBadPrevResult: CHECK (and every verb but DEL) refuses an
// undecodable prevResult with 6; DEL drops it and says why.
func TestLoadNetConfBadPrevResult(t *testing.T) {
	conf := []byte(`{"cniVersion":"1.0.0","name":"n","type":"vnet-cni","prevResult":{"cniVersion":"1.0.0","ips":"not a list"}}`)
	_, err := loadNetConf(conf)
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrDecodingFailure {
		t.Fatalf("loadNetConf: %v, want CNI error %d", err, types.ErrDecodingFailure)
	}
	c, err := loadDelNetConf(conf)
	if err != nil {
		t.Fatalf("loadDelNetConf: %v", err)
	}
	if c.PrevResult != nil || c.RawPrevResult != nil || c.prevResultErr == "" {
		t.Errorf("DEL kept the prevResult (%v, %v) or gave no reason (%q)", c.PrevResult, c.RawPrevResult, c.prevResultErr)
	}
	good := []byte(`{"cniVersion":"1.0.0","name":"n","type":"vnet-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.240.0.9/24"}]}}`)
	if c, err := loadDelNetConf(good); err != nil || c.PrevResult == nil || c.prevResultErr != "" {
		t.Errorf("a good prevResult: conf %+v, err %v", c, err)
	}
}

// TestLoadNetConfSocketAndLimits: an ipamdSocket that can never be the
// daemon's socket and lists longer than the datapath can carry are error 7
// naming the field (and the limit), before anything is asked of the daemon.
func TestLoadNetConfSocketAndLimits(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "ipamd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cidrs := func(n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"10.%d.0.0/16"`, i)
		}
		return "[" + b.String() + "]"
	}
	conf := func(kv string) []byte {
		return []byte(`{"cniVersion":"1.1.0","type":"vnet-cni","name":"n",` + kv + `}`)
	}
	for _, tc := range []struct {
		name string
		kv   string
		want string // "" accepted, else in the error's msg and details
	}{
		{"socket", `"ipamdSocket":"` + sock + `"`, ""},
		{"socket not there yet", `"ipamdSocket":"` + filepath.Join(dir, "later.sock") + `"`, ""},
		{"socket a regular file", `"ipamdSocket":"` + file + `"`, "ipamdSocket: " + strconv.Quote(file) + " is a regular file"},
		{"socket a directory", `"ipamdSocket":"` + dir + `"`, "is a directory"},
		{"socket under a file", `"ipamdSocket":"` + file + `/ipamd.sock"`, "a part of the path is a file"},
		{"socket too long", `"ipamdSocket":"/` + strings.Repeat("s", 107) + `"`, "108 bytes long, at most 107"},
		{"socket longest", `"ipamdSocket":"/` + strings.Repeat("s", 106) + `"`, ""},
		{"exclusions at the limit", `"snatExclusions":` + cidrs(api.MaxSNATExclusions), ""},
		{"exclusions over the limit", `"snatExclusions":` + cidrs(api.MaxSNATExclusions+1), fmt.Sprintf("snatExclusions: %d entries, at most %d", api.MaxSNATExclusions+1, api.MaxSNATExclusions)},
		{"3,000 exclusions", `"snatExclusions":` + cidrs(3000), "snatExclusions: 3000 entries, at most 32"},
		{"vnet over the limit", `"vnetCIDRs":` + cidrs(api.MaxSNATExclusions+1), "vnetCIDRs: 33 entries, at most 32 without snatExclusions"},
		{"vnet over the limit with exclusions", `"vnetCIDRs":` + cidrs(api.MaxSNATExclusions+1) + `,"snatExclusions":["10.0.0.0/8"]`, ""},
		{"bridge is the master", `"bridge":"eth0","master":"eth0"`, "bridge: \"eth0\" is also the master"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadNetConf(conf(tc.kv))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error %v, want CNI error 7", err)
			}
			if got := e.Msg + ": " + e.Details; !strings.Contains(got, tc.want) {
				t.Errorf("error %q does not say %q", got, tc.want)
			}
		})
	}
}
