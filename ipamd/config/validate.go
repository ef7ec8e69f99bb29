package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// FieldError is a bad value of one field. Every error of Parse and Validate is
// one (joined with errors.Join when there are several); find them with
// errors.As.
type FieldError struct {
	// Field is the JSON path of the field, such as "warmIPTarget" or
	// "cloud.azure.credential".
	Field string
	// Msg says what is wrong and what is allowed, such as
	// "300 out of range 0..255".
	Msg string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, msg string) error { return &FieldError{Field: field, Msg: msg} }

// Validate checks every field and the relations between fields and returns
// all problems joined, each a *FieldError naming the field and the allowed
// values.
func (c Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	fromNode := c.MaxIPs == 0 && c.Kubernetes.Enabled
	maxOK := c.MaxIPs >= 1 && c.MaxIPs <= MaxAddresses
	if !fromNode {
		add(intRange("maxIPs", c.MaxIPs, 1, MaxAddresses, " (0, the node's allocatable pods, needs kubernetes.enabled)"))
	}
	// The fields bounded by maxIPs report it as their upper limit once maxIPs
	// itself is valid.
	upper, why := MaxAddresses, ""
	if maxOK {
		upper, why = c.MaxIPs, " (maxIPs)"
	}
	add(intRange("warmIPTarget", c.WarmIPTarget, 0, upper, why))
	add(intRange("minIPTarget", c.MinIPTarget, 0, upper, why))
	add(intRange("ipAddressCount", c.IPAddressCount, 0, upper, why))
	add(intRange("batchSize", c.BatchSize, 1, MaxAddresses, ""))

	add(durRange("cooldown", c.Cooldown, 0, MaxCooldown))
	add(durRange("releaseDelay", c.ReleaseDelay, 0, MaxReleaseDelay))
	add(durRange("allocateWait", c.AllocateWait, 0, MaxAllocateWait))
	add(durRange("resyncInterval", c.ResyncInterval, MinResync, MaxResync))
	add(durRange("recoveryGrace", c.RecoveryGrace, MinGrace, MaxGrace))

	add(absPath("socketPath", c.SocketPath, true))
	if len(c.SocketPath) > maxSocketPath {
		add(fieldErr("socketPath", fmt.Sprintf("%d bytes long, at most %d fit in a unix socket address", len(c.SocketPath), maxSocketPath)))
	}
	add(absPath("storeDir", c.StoreDir, true))
	add(absPath("cniConfDir", c.CNIConfDir, true))
	add(absPath("cniBinDir", c.CNIBinDir, false))
	add(oneOf("cniVersion", c.CNIVersion, "1.0.0", "1.1.0"))
	add(absPath("releaseSpool", c.ReleaseSpool, false))
	add(absPath("pluginLockDir", c.PluginLockDir, true))
	if c.ReleaseSpool != "" && c.ReleaseSpool == c.StoreDir {
		add(fieldErr("releaseSpool", fmt.Sprintf("%q must differ from storeDir", c.ReleaseSpool)))
	}
	if n := c.CNIConfName; n == "" || strings.ContainsRune(n, '/') || !strings.HasSuffix(n, ".conflist") || n == ".conflist" {
		add(fieldErr("cniConfName", fmt.Sprintf("%q must be a file name ending in \".conflist\"", n)))
	}
	if a := c.MetricsAddr; !a.IsValid() || !a.Addr().IsLoopback() || a.Port() == 0 {
		add(fieldErr("metricsAddr", fmt.Sprintf("%q must be a loopback address with a port (allowed: 127.0.0.0/8 or [::1], port 1..65535)", a)))
	}
	add(oneOf("logLevel", c.LogLevel, LogDebug, LogInfo, LogWarn, LogError))
	add(oneOf("mode", c.Mode, ModeBridge, ModeRouted, ModeKubenet))
	if c.Mode == ModeKubenet {
		add(c.validateKubenet())
	}
	add(oneOf("nodeSetup", c.NodeSetup, NodeSetupIPAMD, NodeSetupPlugin))
	add(cidrList("snatExclusions", c.SNATExclusions, api.MaxSNATExclusions))
	add(c.Cloud.validate())
	add(c.Kubernetes.validate())
	return errors.Join(errs...)
}

// validateKubenet checks the kubenet section for mode kubenet.
func (c Config) validateKubenet() error {
	k := c.Kubenet
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.Cloud.Provider != ProviderAzure {
		add(fieldErr("mode", fmt.Sprintf("kubenet programs an Azure route table; cloud.provider %q has none (use routed)", c.Cloud.Provider)))
	}
	cluster, err := netip.ParsePrefix(k.ClusterCIDR)
	switch {
	case k.ClusterCIDR == "":
		add(fieldErr("kubenet.clusterCIDR", "required with mode kubenet (kube-controller-manager's --cluster-cidr)"))
	case err != nil || !cluster.Addr().Is4():
		add(fieldErr("kubenet.clusterCIDR", fmt.Sprintf("%q is not an IPv4 CIDR", k.ClusterCIDR)))
	}
	if k.PodCIDR != "" {
		p, err := netip.ParsePrefix(k.PodCIDR)
		switch {
		case err != nil || !p.Addr().Is4():
			add(fieldErr("kubenet.podCIDR", fmt.Sprintf("%q is not an IPv4 CIDR", k.PodCIDR)))
		case p.Bits() < 8 || p.Bits() > 29:
			add(fieldErr("kubenet.podCIDR", fmt.Sprintf("%q: the prefix length must be 8..29", k.PodCIDR)))
		case cluster.IsValid() && (p.Bits() < cluster.Bits() || !cluster.Masked().Contains(p.Addr())):
			add(fieldErr("kubenet.podCIDR", fmt.Sprintf("%q is not inside kubenet.clusterCIDR %s", k.PodCIDR, k.ClusterCIDR)))
		}
	} else if !c.Kubernetes.Enabled {
		add(fieldErr("kubenet.podCIDR", "required without kubernetes.enabled (with it, the Node's spec.podCIDRs is used)"))
	}
	if msgs := ifName(k.Bridge); msgs != "" {
		add(fieldErr("kubenet.bridge", fmt.Sprintf("%q %s", k.Bridge, msgs)))
	}
	add(absPath("kubenet.stateDir", k.StateDir, true))
	if k.StateDir != "" && (k.StateDir == c.StoreDir || k.StateDir == c.ReleaseSpool) {
		add(fieldErr("kubenet.stateDir", fmt.Sprintf("%q must differ from storeDir and releaseSpool: it is a witness of its own", k.StateDir)))
	}
	add(intRange("kubenet.maxRoutes", k.MaxRoutes, 1, MaxMaxRoutes, ""))
	add(durRange("kubenet.routeInterval", k.RouteInterval, MinRouteInterval, MaxRouteInterval))
	add(durRange("kubenet.routeSettle", k.RouteSettle, 0, MaxRouteSettle))
	if k.ControllerEnabled(c.Kubernetes.Enabled) && !c.Kubernetes.Enabled {
		add(fieldErr("kubenet.controller", "needs kubernetes.enabled (the leader election and the Nodes are in the API server)"))
	}
	if k.RouteTable != "" && !strings.Contains(strings.ToLower(k.RouteTable), "/providers/microsoft.network/routetables/") {
		add(fieldErr("kubenet.routeTable", fmt.Sprintf("%q is not a route table's resource ID (/subscriptions/…/resourceGroups/…/providers/Microsoft.Network/routeTables/NAME)", k.RouteTable)))
	}
	for _, f := range []struct{ name, v string }{{"kubenet.leaseName", k.LeaseName}, {"kubenet.leaseNamespace", k.LeaseNamespace}} {
		if msgs := validation.IsDNS1123Subdomain(f.v); len(msgs) > 0 {
			add(fieldErr(f.name, fmt.Sprintf("%q: %s", f.v, strings.Join(msgs, "; "))))
		}
	}
	return errors.Join(errs...)
}

// ifName returns why name is not a Linux interface name, "" when it is one.
func ifName(name string) string {
	switch {
	case name == "":
		return "is empty"
	case len(name) > 15:
		return "is longer than 15 bytes"
	case strings.ContainsAny(name, "/ \t\n:") || name == "." || name == "..":
		return "has a character an interface name cannot have"
	}
	return ""
}

func (k Kubernetes) validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(absPath("kubernetes.kubeconfig", k.Kubeconfig, false))
	if k.NodeName != "" {
		if msgs := validation.IsDNS1123Subdomain(k.NodeName); len(msgs) > 0 {
			add(fieldErr("kubernetes.nodeName", fmt.Sprintf("%q is not a node name: %s", k.NodeName, strings.Join(msgs, "; "))))
		}
	}
	add(durRange("kubernetes.statusInterval", k.StatusInterval, MinStatusInterval, MaxStatusInterval))
	return errors.Join(errs...)
}

// cidrList checks a list of at most limit IPv4 CIDRs; a bad entry is named
// by its index.
func cidrList(field string, list []string, limit int) error {
	if len(list) > limit {
		return fieldErr(field, fmt.Sprintf("%d entries, at most %d", len(list), limit))
	}
	var errs []error
	for i, s := range list {
		if p, err := netip.ParsePrefix(s); err != nil || !p.Addr().Is4() {
			errs = append(errs, fieldErr(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%q is not an IPv4 CIDR", s)))
		}
	}
	return errors.Join(errs...)
}

func (c Cloud) validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(oneOf("cloud.provider", c.Provider, ProviderAzure, ProviderAWS))
	add(durRange("cloud.callTimeout", c.CallTimeout, MinCallTimeout, MaxCallTimeout))
	if c.Provider == ProviderAWS {
		add(c.AWS.validate())
	}
	if c.Provider != ProviderAzure {
		return errors.Join(errs...)
	}
	a := c.Azure
	add(httpURL("cloud.azure.resourceManagerEndpoint", a.ResourceManagerEndpoint, "https"))
	add(httpURL("cloud.azure.resourceManagerAudience", a.ResourceManagerAudience, "https"))
	add(httpURL("cloud.azure.imdsEndpoint", a.IMDSEndpoint, "http", "https"))
	add(absPath("cloud.azure.caFile", a.CAFile, false))
	add(oneOf("cloud.azure.credential", a.Credential, CredentialManagedIdentity, CredentialCloudConfig, CredentialStaticTokenFile))
	add(absPath("cloud.azure.cloudConfigFile", a.CloudConfigFile, false))
	if a.ActiveDirectoryEndpoint != "" {
		add(httpURL("cloud.azure.activeDirectoryEndpoint", a.ActiveDirectoryEndpoint, "https"))
		if a.Credential != CredentialCloudConfig {
			add(fieldErr("cloud.azure.activeDirectoryEndpoint", "only allowed with credential cloudConfig"))
		}
	}
	switch a.Credential {
	case CredentialCloudConfig:
		if a.CloudConfigFile == "" {
			add(fieldErr("cloud.azure.cloudConfigFile", "required with credential cloudConfig"))
		}
		if a.TokenFile != "" {
			add(fieldErr("cloud.azure.tokenFile", "only allowed with credential staticTokenFile"))
		}
		if a.ManagedIdentityClientID != "" {
			add(fieldErr("cloud.azure.managedIdentityClientID", "only allowed with credential managedIdentity (with cloudConfig the file's userAssignedIdentityID selects it)"))
		}
	case CredentialStaticTokenFile:
		add(absPath("cloud.azure.tokenFile", a.TokenFile, true))
		if a.ManagedIdentityClientID != "" {
			add(fieldErr("cloud.azure.managedIdentityClientID", "only allowed with credential managedIdentity"))
		}
	case CredentialManagedIdentity:
		if a.TokenFile != "" {
			add(fieldErr("cloud.azure.tokenFile", "only allowed with credential staticTokenFile"))
		}
		if id := a.ManagedIdentityClientID; id != "" && !isGUID(id) {
			add(fieldErr("cloud.azure.managedIdentityClientID", fmt.Sprintf("%q is not a client ID (a GUID such as 00000000-0000-0000-0000-000000000000)", id)))
		}
	}
	return errors.Join(errs...)
}

// clusterNameRE is what an ENI tag value of the cluster's name may hold.
var clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (a AWS) validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if !clusterNameRE.MatchString(a.ClusterName) {
		add(fieldErr("cloud.aws.clusterName", fmt.Sprintf("%q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (it tags the ENIs vnet-cni creates)", a.ClusterName)))
	}
	if a.Region != "" && !regionRE.MatchString(a.Region) {
		add(fieldErr("cloud.aws.region", fmt.Sprintf("%q is not a region name such as eu-west-1", a.Region)))
	}
	if a.EC2Endpoint != "" {
		add(httpURL("cloud.aws.ec2Endpoint", a.EC2Endpoint, "https"))
	}
	add(absPath("cloud.aws.caFile", a.CAFile, false))
	add(httpURL("cloud.aws.imdsEndpoint", a.IMDSEndpoint, "http", "https"))
	add(durRange("cloud.aws.sweepInterval", a.SweepInterval, MinSweepInterval, MaxSweepInterval))
	add(durRange("cloud.aws.sweepGrace", a.SweepGrace, MinSweepGrace, MaxSweepGrace))
	return errors.Join(errs...)
}

// regionRE matches region names: eu-west-1, us-gov-east-1, ap-southeast-4.
var regionRE = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)

func intRange(field string, v, lo, hi int, why string) error {
	if v < lo || v > hi {
		return fieldErr(field, fmt.Sprintf("%d out of range %d..%d%s", v, lo, hi, why))
	}
	return nil
}

func durRange(field string, d Duration, lo, hi time.Duration) error {
	if d.D() < lo || d.D() > hi {
		return fieldErr(field, fmt.Sprintf("%s out of range %s..%s", d, lo, hi))
	}
	return nil
}

func oneOf(field, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fieldErr(field, fmt.Sprintf("%q is not allowed (allowed: %s)", v, strings.Join(allowed, ", ")))
}

func absPath(field, p string, required bool) error {
	switch {
	case p == "" && !required:
		return nil
	case p == "":
		return fieldErr(field, "required: an absolute path")
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		return fieldErr(field, fmt.Sprintf("%q must be a clean absolute path", p))
	}
	return nil
}

func httpURL(field, s string, schemes ...string) error {
	u, err := url.Parse(s)
	allowed := strings.Join(schemes, " or ")
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fieldErr(field, fmt.Sprintf("%q must be an absolute %s URL without credentials, query or fragment", s, allowed))
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return nil
		}
	}
	return fieldErr(field, fmt.Sprintf("%q must use %s", s, allowed))
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}
