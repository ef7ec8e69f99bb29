// Package ec2imds is the simulated EC2 Instance Metadata Service (IMDSv2
// only) of one instance: the session-token PUT, the instance's identity and
// network metadata per MAC, and the instance role's credentials, in the
// shapes the aws-sdk-go-v2 imds client and ec2rolecreds provider read.
package ec2imds

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names of IMDSv2.
const (
	TokenHeader    = "X-Aws-Ec2-Metadata-Token"
	TokenTTLHeader = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	// MaxTokenTTL is the longest session EC2 grants (6 hours).
	MaxTokenTTL = 6 * time.Hour
)

// Instance is what the metadata tree of one instance shows.
type Instance struct {
	ID, Type, ImageID, AccountID string
	Region, AvailabilityZone     string
	PrivateIP                    string
	// MAC is the MAC of the primary interface (device 0), lower-case.
	MAC string
	// Interfaces are the attached interfaces; attaching ones are not shown.
	Interfaces []Interface
	// Role is the instance profile's role name ("" = none).
	Role string
}

// Interface is one attached network interface, under
// network/interfaces/macs/<mac>/.
type Interface struct {
	MAC          string
	DeviceNumber int
	InterfaceID  string
	SubnetID     string
	SubnetCIDR   string
	VPCID        string
	VPCCIDRs     []string
	// LocalIPv4s lists the private addresses, the primary first.
	LocalIPv4s []string
}

// Credentials are the instance role's temporary credentials.
type Credentials struct {
	AccessKeyID, SecretAccessKey, Token string
	Expiration, LastUpdated             time.Time
}

// Source is what the handler reads per request, so that the tree follows
// the control plane.
type Source interface {
	// Instance returns the instance's current metadata; false when the
	// instance no longer exists.
	Instance() (Instance, bool)
	// Credentials returns the role's current credentials.
	Credentials() (Credentials, error)
}

// Handler serves one instance's IMDSv2.
type Handler struct {
	src Source
	now func() time.Time

	mu     sync.Mutex
	tokens map[string]time.Time // token -> expiry
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns the IMDS of one instance.
func NewHandler(src Source) *Handler {
	return &Handler{src: src, now: time.Now, tokens: map[string]time.Time{}}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/latest/api/token" {
		h.serveToken(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		plain(w, http.StatusMethodNotAllowed, "")
		return
	}
	// IMDSv1 is disabled (HttpTokens=required): a GET without a valid session
	// token is refused with 401, as EC2 does.
	if !h.validToken(r.Header.Get(TokenHeader)) {
		plain(w, http.StatusUnauthorized, "")
		return
	}
	inst, ok := h.src.Instance()
	if !ok {
		plain(w, http.StatusNotFound, "")
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/latest")
	switch {
	case p == "/dynamic/instance-identity/document":
		h.serveIdentity(w, inst)
	case strings.HasPrefix(p, "/meta-data/iam/"):
		h.serveIAM(w, inst, strings.TrimPrefix(p, "/meta-data/iam/"))
	case strings.HasPrefix(p, "/meta-data"):
		serveTree(w, metaTree(inst), strings.Trim(strings.TrimPrefix(p, "/meta-data"), "/"))
	default:
		plain(w, http.StatusNotFound, "")
	}
}

func (h *Handler) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		plain(w, http.StatusMethodNotAllowed, "")
		return
	}
	// EC2 refuses token requests that went through a proxy.
	if r.Header.Get("X-Forwarded-For") != "" {
		plain(w, http.StatusForbidden, "")
		return
	}
	secs, err := strconv.Atoi(r.Header.Get(TokenTTLHeader))
	if err != nil || secs < 1 || time.Duration(secs)*time.Second > MaxTokenTTL {
		plain(w, http.StatusBadRequest, "")
		return
	}
	var b [32]byte
	_, _ = rand.Read(b[:])
	tok := "AQAE" + hex.EncodeToString(b[:])
	now := h.now()
	h.mu.Lock()
	for t, exp := range h.tokens {
		if now.After(exp) {
			delete(h.tokens, t)
		}
	}
	h.tokens[tok] = now.Add(time.Duration(secs) * time.Second)
	h.mu.Unlock()
	w.Header().Set(TokenTTLHeader, strconv.Itoa(secs))
	plain(w, http.StatusOK, tok)
}

func (h *Handler) validToken(tok string) bool {
	if tok == "" {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	exp, ok := h.tokens[tok]
	return ok && h.now().Before(exp)
}

// credentialsJSON is the document at iam/security-credentials/<role>.
type credentialsJSON struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

func (h *Handler) serveIAM(w http.ResponseWriter, inst Instance, rest string) {
	if inst.Role == "" {
		plain(w, http.StatusNotFound, "")
		return
	}
	rest = strings.TrimSuffix(rest, "/")
	switch rest {
	case "":
		plain(w, http.StatusOK, "info\nsecurity-credentials/")
	case "info":
		writeJSON(w, map[string]string{
			"Code": "Success", "LastUpdated": h.now().UTC().Format(time.RFC3339),
			"InstanceProfileArn": "arn:aws:iam::" + inst.AccountID + ":instance-profile/" + inst.Role,
			"InstanceProfileId":  "AIPA" + strings.ToUpper(strings.TrimPrefix(inst.ID, "i-")),
		})
	case "security-credentials":
		plain(w, http.StatusOK, inst.Role)
	case "security-credentials/" + inst.Role:
		c, err := h.src.Credentials()
		if err != nil {
			plain(w, http.StatusInternalServerError, "")
			return
		}
		writeJSON(w, credentialsJSON{
			Code: "Success", Type: "AWS-HMAC",
			LastUpdated:     c.LastUpdated.UTC().Format(time.RFC3339),
			AccessKeyID:     c.AccessKeyID,
			SecretAccessKey: c.SecretAccessKey,
			Token:           c.Token,
			Expiration:      c.Expiration.UTC().Format(time.RFC3339),
		})
	default:
		plain(w, http.StatusNotFound, "")
	}
}

func (h *Handler) serveIdentity(w http.ResponseWriter, inst Instance) {
	writeJSON(w, map[string]any{
		"accountId": inst.AccountID, "architecture": "x86_64",
		"availabilityZone": inst.AvailabilityZone, "imageId": inst.ImageID,
		"instanceId": inst.ID, "instanceType": inst.Type, "privateIp": inst.PrivateIP,
		"region": inst.Region, "version": "2017-09-30",
	})
}

// node is a metadata directory (children not nil) or a leaf (value).
type node struct {
	value    string
	children map[string]*node
}

func leaf(v string) *node { return &node{value: v} }

func dir(children map[string]*node) *node { return &node{children: children} }

// metaTree builds the meta-data tree of inst, without iam (served apart).
func metaTree(inst Instance) *node {
	macs := map[string]*node{}
	for _, i := range inst.Interfaces {
		macs[i.MAC] = dir(map[string]*node{
			"device-number":          leaf(strconv.Itoa(i.DeviceNumber)),
			"interface-id":           leaf(i.InterfaceID),
			"mac":                    leaf(i.MAC),
			"subnet-id":              leaf(i.SubnetID),
			"subnet-ipv4-cidr-block": leaf(i.SubnetCIDR),
			"vpc-id":                 leaf(i.VPCID),
			"vpc-ipv4-cidr-block":    leaf(first(i.VPCCIDRs)),
			"vpc-ipv4-cidr-blocks":   leaf(strings.Join(i.VPCCIDRs, "\n")),
			"local-ipv4s":            leaf(strings.Join(i.LocalIPv4s, "\n")),
		})
	}
	root := map[string]*node{
		"ami-id":        leaf(inst.ImageID),
		"instance-id":   leaf(inst.ID),
		"instance-type": leaf(inst.Type),
		"local-ipv4":    leaf(inst.PrivateIP),
		"mac":           leaf(inst.MAC),
		"placement": dir(map[string]*node{
			"availability-zone": leaf(inst.AvailabilityZone),
			"region":            leaf(inst.Region),
		}),
		"network": dir(map[string]*node{
			"interfaces": dir(map[string]*node{"macs": dir(macs)}),
		}),
	}
	if inst.Role != "" {
		root["iam"] = dir(map[string]*node{}) // listed; its content is served by serveIAM
	}
	return dir(root)
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// serveTree answers path in t: a leaf's value, or a directory's listing
// (sub-directories with a trailing slash, sorted).
func serveTree(w http.ResponseWriter, t *node, path string) {
	n := t
	if path != "" {
		for _, seg := range strings.Split(path, "/") {
			next, ok := n.children[seg]
			if !ok {
				plain(w, http.StatusNotFound, "")
				return
			}
			n = next
		}
	}
	if n.children == nil {
		plain(w, http.StatusOK, n.value)
		return
	}
	names := make([]string, 0, len(n.children))
	for k, c := range n.children {
		if c.children != nil {
			k += "/"
		}
		names = append(names, k)
	}
	slices.Sort(names)
	plain(w, http.StatusOK, strings.Join(names, "\n"))
}

func plain(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		plain(w, http.StatusInternalServerError, "")
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}
