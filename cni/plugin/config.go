// Package plugin implements the vnet-cni CNI plugin's verbs: ADD, DEL,
// CHECK, GC and STATUS (VERSION is answered by skel). An address comes from
// vnet-ipamd over its unix socket; the datapath is built by package azure0
// (bridge mode), package routed (routed mode) or package kubenet (kubenet mode), as the conflist's mode says.
package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vnet-cni/vnet-cni/bridge/azure0"
	"github.com/vnet-cni/vnet-cni/bridge/kubenet"
	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// NetConf is the plugin's entry in a conflist: the CNI library's generic
// keys, vnet-cni's own keys (the contract with vnet-ipamd, which writes them)
// and the values derived from them.
type NetConf struct {
	types.NetConf
	api.PluginConf

	// Derived values, set by loadNetConf.
	snatExclusions []netip.Prefix
	vnetCIDRs      []netip.Prefix
	ipamdTimeout   time.Duration
	logLevel       string
	// prevResultErr says why DEL dropped an undecodable prevResult.
	prevResultErr string
}

// Defaults of the configuration that only the plugin uses; the shared ones
// are in package api, the bridge's name in package azure0.
const (
	defaultIPAMDTimeout = 10 * time.Second
	shortIPAMDTimeout   = 2 * time.Second
	maxIfNameLen        = 15
)

// maxStdin bounds the configuration a runtime may hand the plugin.
const maxStdin = 1 << 20

// loadNetConf parses and validates the configuration once. Undecodable
// input is CNI error 6, an invalid value error 7 naming the field.
func loadNetConf(data []byte) (*NetConf, error) { return parseNetConf(data, false) }

// loadDelNetConf is loadNetConf for DEL, which must be able to succeed
// whatever the runtime cached: an undecodable prevResult is dropped (DEL
// then finds the address from the veth's alias or from vnet-ipamd) and
// reported in the call's log line, instead of failing every retry with 6
// and leaving the veth and the address behind.
func loadDelNetConf(data []byte) (*NetConf, error) { return parseNetConf(data, true) }

func parseNetConf(data []byte, dropBadPrev bool) (*NetConf, error) {
	if len(data) > maxStdin {
		return nil, types.NewError(types.ErrDecodingFailure, "configuration too large",
			fmt.Sprintf("%d bytes, at most %d", len(data), maxStdin))
	}
	conf := &NetConf{PluginConf: api.PluginConf{
		Mode:         api.ModeBridge,
		IPAMDSocket:  api.DefaultSocketPath,
		ReleaseSpool: api.DefaultReleaseSpool,
		LockDir:      api.DefaultLockDir,
	}}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode the network configuration", err.Error())
	}
	// The runtime passes prevResult (CHECK, DEL) as raw JSON; decode it in
	// the configuration's cniVersion.
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		if !dropBadPrev {
			return nil, types.NewError(types.ErrDecodingFailure, "cannot decode prevResult", err.Error())
		}
		conf.RawPrevResult, conf.PrevResult = nil, nil
		conf.prevResultErr = err.Error()
	}
	if err := conf.validate(); err != nil {
		return nil, err
	}
	return conf, nil
}

func invalid(field, format string, args ...any) error {
	return types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration: "+field,
		fmt.Sprintf(format, args...))
}

func (c *NetConf) validate() error {
	if c.Name == "" {
		return invalid("name", "missing")
	}
	switch c.Mode {
	case api.ModeBridge, api.ModeRouted:
		if c.Bridge == "" {
			c.Bridge = azure0.DefaultBridgeName
		}
	case api.ModeKubenet:
		if c.Bridge == "" {
			c.Bridge = kubenet.DefaultBridgeName
		}
		if c.Master != "" {
			return invalid("master", "%q: kubenet mode's bridge is local and takes no interface over", c.Master)
		}
	default:
		return invalid("mode", "%q is not supported; supported: %q, %q, %q", c.Mode, api.ModeBridge, api.ModeRouted, api.ModeKubenet)
	}
	if err := validIfName(c.Bridge); err != nil {
		return invalid("bridge", "%q: %v", c.Bridge, err)
	}
	if c.Master != "" {
		if err := validIfName(c.Master); err != nil {
			return invalid("master", "%q: %v", c.Master, err)
		}
	}
	if c.Master != "" && c.Master == c.Bridge {
		return invalid("bridge", "%q is also the master; the bridge takes the master over and must have another name", c.Bridge)
	}
	if err := checkSocketPath(c.IPAMDSocket); err != nil {
		return err
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 9000) {
		return invalid("mtu", "%d out of range 576..9000", c.MTU)
	}
	var err error
	if c.snatExclusions, err = cidrList("snatExclusions", c.SNATExclusions); err != nil {
		return err
	}
	if c.vnetCIDRs, err = cidrList("vnetCIDRs", c.VNetCIDRs); err != nil {
		return err
	}
	// Without snatExclusions the VNet's address space is excluded instead,
	// so it has the same limit.
	if len(c.snatExclusions) == 0 && len(c.vnetCIDRs) > api.MaxSNATExclusions {
		return invalid("vnetCIDRs", "%d entries, at most %d without snatExclusions (the VNet's address space is then the SNAT exclusions); set snatExclusions in vnet-ipamd's configuration",
			len(c.vnetCIDRs), api.MaxSNATExclusions)
	}
	c.ipamdTimeout = defaultIPAMDTimeout
	if c.IPAMDTimeout != "" {
		d, err := time.ParseDuration(c.IPAMDTimeout)
		if err != nil || d < 100*time.Millisecond || d > 2*time.Minute {
			return invalid("ipamdTimeout", "%q is not a duration in 100ms..2m", c.IPAMDTimeout)
		}
		c.ipamdTimeout = d
	}
	c.logLevel = "info"
	if c.LogLevel != "" {
		switch c.LogLevel {
		case "debug", "info", "warn", "error":
			c.logLevel = c.LogLevel
		default:
			return invalid("logLevel", "%q is not one of debug, info, warn, error", c.LogLevel)
		}
	}
	for field, p := range map[string]string{"logFile": c.LogFile, "releaseSpool": c.ReleaseSpool, "lockDir": c.LockDir} {
		if p != "" && !strings.HasPrefix(p, "/") {
			return invalid(field, "%q is not an absolute path", p)
		}
	}
	return nil
}

// cidrList parses a list of IPv4 CIDRs, masked. snatExclusions holds at
// most api.MaxSNATExclusions.
func cidrList(field string, list []string) ([]netip.Prefix, error) {
	if field == "snatExclusions" && len(list) > api.MaxSNATExclusions {
		return nil, invalid(field, "%d entries, at most %d (each is two expressions of one nftables rule, which holds at most 128)",
			len(list), api.MaxSNATExclusions)
	}
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() {
			return nil, invalid(field, "%q is not an IPv4 CIDR", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// checkSocketPath refuses an ipamdSocket that can never be vnet-ipamd's
// socket: a relative path, one too long for a unix socket address, or one
// that exists as (or under) something other than a socket. A path that does
// not exist yet is fine: the daemon is not running, and ADD answers "try
// again later" while DEL spools its release. A path the plugin may not look
// at is left to the call, which reports the permission error.
func checkSocketPath(path string) error {
	if !strings.HasPrefix(path, "/") {
		return invalid("ipamdSocket", "%q is not an absolute path", path)
	}
	if len(path) > api.MaxSocketPath {
		return invalid("ipamdSocket", "%q is %d bytes long, at most %d fit in a unix socket address", path, len(path), api.MaxSocketPath)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, syscall.ENOTDIR):
		return invalid("ipamdSocket", "%q is not a unix socket: a part of the path is a file, not a directory", path)
	case err != nil, fi.Mode().Type() == fs.ModeSocket:
		return nil
	case fi.IsDir():
		return invalid("ipamdSocket", "%q is a directory, not a unix socket", path)
	case fi.Mode().IsRegular():
		return invalid("ipamdSocket", "%q is a regular file, not a unix socket", path)
	default:
		return invalid("ipamdSocket", "%q is not a unix socket (mode %s)", path, fi.Mode())
	}
}

func validIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty")
	case len(name) > maxIfNameLen:
		return fmt.Errorf("longer than %d characters", maxIfNameLen)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("not a valid interface name")
	}
	return nil
}

// k8sArgs are the Kubernetes arguments in CNI_ARGS.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the names are the wire format
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

func loadK8sArgs(args string) (k8sArgs, error) {
	var k k8sArgs
	if err := types.LoadArgs(args, &k); err != nil {
		return k, types.NewError(types.ErrInvalidEnvironmentVariables, "cannot parse CNI_ARGS", err.Error())
	}
	return k, nil
}
