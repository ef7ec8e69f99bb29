// Package imds is the simulated Azure Instance Metadata Service that each
// node reaches at 169.254.169.254: the VM's compute and network metadata and
// the managed-identity token endpoint, in Azure IMDS's JSON shapes.
package imds

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Instance is the document served at /metadata/instance.
type Instance struct {
	Compute Compute `json:"compute"`
	Network Network `json:"network"`
}

// Compute is the compute part of the instance document.
type Compute struct {
	AzEnvironment     string `json:"azEnvironment"`
	Location          string `json:"location"`
	Name              string `json:"name"`
	OSType            string `json:"osType"`
	ResourceGroupName string `json:"resourceGroupName"`
	ResourceID        string `json:"resourceId"`
	SubscriptionID    string `json:"subscriptionId"`
	VMID              string `json:"vmId"`
	VMSize            string `json:"vmSize"`
}

// Network is the network part of the instance document.
type Network struct {
	Interface []Interface `json:"interface"`
}

// Interface is one NIC of the VM.
type Interface struct {
	IPv4 IPFamily `json:"ipv4"`
	IPv6 IPFamily `json:"ipv6"`
	// MACAddress is upper-case hex without separators, as Azure writes it.
	MACAddress string `json:"macAddress"`
}

// IPFamily lists the addresses and subnets of one address family.
type IPFamily struct {
	IPAddress []IPAddress `json:"ipAddress"`
	Subnet    []Subnet    `json:"subnet,omitempty"`
}

// IPAddress is one ipConfiguration's address.
type IPAddress struct {
	PrivateIPAddress string `json:"privateIpAddress"`
	PublicIPAddress  string `json:"publicIpAddress"`
}

// Subnet is a subnet as IMDS writes it: network address and prefix length.
type Subnet struct {
	Address string `json:"address"`
	Prefix  string `json:"prefix"`
}

// TokenIssuer issues an access token for resource, accepted by the simulated
// control plane.
type TokenIssuer func(resource string) (token string, expiresOn time.Time)

// Handler serves one VM's metadata.
type Handler struct {
	instance func() Instance
	issue    TokenIssuer
	clientID string
}

// NewHandler returns the IMDS of one VM. instance is called per request, so
// the document follows the control plane (secondary addresses appear in it).
func NewHandler(instance func() Instance, issue TokenIssuer, clientID string) *Handler {
	return &Handler{instance: instance, issue: issue, clientID: clientID}
}

var _ http.Handler = (*Handler)(nil)

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Azure IMDS refuses requests that went through a proxy and requests
	// without the Metadata header, so that a redirected request from a
	// workload cannot read it.
	if r.Header.Get("X-Forwarded-For") != "" {
		writeError(w, http.StatusBadRequest, "Bad request. X-Forwarded-For header is not allowed")
		return
	}
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		writeError(w, http.StatusBadRequest, "Bad request. Required metadata header not specified")
		return
	}
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		writeError(w, http.StatusBadRequest, "Bad request. api-version was not specified in the request")
		return
	}
	switch path := strings.TrimSuffix(r.URL.Path, "/"); path {
	case "/metadata/instance":
		writeJSON(w, h.instance())
	case "/metadata/instance/compute":
		writeJSON(w, h.instance().Compute)
	case "/metadata/instance/network":
		writeJSON(w, h.instance().Network)
	case "/metadata/identity/oauth2/token":
		h.serveToken(w, r)
	default:
		writeError(w, http.StatusNotFound, "Not found")
	}
}

// tokenResponse is the managed-identity token document.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	ClientID     string `json:"client_id"`
	ExpiresIn    string `json:"expires_in"`
	ExpiresOn    string `json:"expires_on"`
	ExtExpiresIn string `json:"ext_expires_in"`
	NotBefore    string `json:"not_before"`
	Resource     string `json:"resource"`
	TokenType    string `json:"token_type"`
}

func (h *Handler) serveToken(w http.ResponseWriter, r *http.Request) {
	resource := r.URL.Query().Get("resource")
	if resource == "" {
		writeJSONStatus(w, http.StatusBadRequest, map[string]string{
			"error":             "invalid_request",
			"error_description": "Required query variable 'resource' is missing",
		})
		return
	}
	token, expires := h.issue(resource)
	now := time.Now()
	in := strconv.Itoa(int(time.Until(expires).Seconds()))
	writeJSON(w, tokenResponse{
		AccessToken:  token,
		ClientID:     h.clientID,
		ExpiresIn:    in,
		ExpiresOn:    strconv.FormatInt(expires.Unix(), 10),
		ExtExpiresIn: in,
		NotBefore:    strconv.FormatInt(now.Unix(), 10),
		Resource:     resource,
		TokenType:    "Bearer",
	})
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSONStatus(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, v any) { writeJSONStatus(w, http.StatusOK, v) }

func writeJSONStatus(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, fmt.Sprintf("encode response: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
