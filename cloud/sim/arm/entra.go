package arm

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// ServicePrincipal is an Entra ID (Azure AD) application with a client
// secret, signing in with the OAuth 2.0 client credentials grant at the
// simulated Entra ID endpoint.
type ServicePrincipal struct {
	ClientID, ClientSecret string
	// ReadOnly: the principal's role only reads, as IssueReadOnlyToken's.
	ReadOnly bool
}

// The Entra ID endpoint the ARM server also answers, at its own host (the
// authority host is the ARM endpoint):
//
//	GET  /{tenant}/v2.0/.well-known/openid-configuration
//	POST /{tenant}/oauth2/v2.0/token   (grant_type=client_credentials)
//
// Errors are Entra ID's: {"error": "...", "error_description": "AADSTS..."}.

// isEntraPath reports whether path is one of the Entra ID endpoints, and
// returns the tenant and the rest of the path.
func isEntraPath(path string) (tenant, rest string, ok bool) {
	tenant, rest, ok = strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok || tenant == "" || strings.EqualFold(tenant, "subscriptions") {
		return "", "", false
	}
	switch rest {
	case "v2.0/.well-known/openid-configuration", "oauth2/v2.0/token":
		return tenant, rest, true
	}
	return "", "", false
}

// serveEntra answers the Entra ID endpoints.
func (s *Server) serveEntra(w http.ResponseWriter, r *http.Request, tenant, rest string) {
	status := http.StatusOK
	op := "Entra_Token"
	if rest != "oauth2/v2.0/token" {
		op = "Entra_OpenIDConfiguration"
	}
	defer func() { s.stats.Add(op, status, false) }()
	if !strings.EqualFold(tenant, s.cfg.TenantID) {
		status = http.StatusBadRequest
		entraError(w, status, "invalid_request", "AADSTS90002: Tenant '"+tenant+"' not found.")
		return
	}
	base := "https://" + r.Host + "/" + tenant
	if op == "Entra_OpenIDConfiguration" {
		if r.Method != http.MethodGet {
			status = http.StatusMethodNotAllowed
			entraError(w, status, "invalid_request", "AADSTS900561: The endpoint only accepts GET requests.")
			return
		}
		writeJSON(w, status, map[string]any{
			"issuer":                                base + "/v2.0",
			"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
			"token_endpoint":                        base + "/oauth2/v2.0/token",
			"token_endpoint_auth_methods_supported": []string{"client_secret_post"},
			"response_types_supported":              []string{"code", "token"},
			"tenant_region_scope":                   "NA",
		})
		return
	}
	if r.Method != http.MethodPost {
		status = http.StatusMethodNotAllowed
		entraError(w, status, "invalid_request", "AADSTS900561: The endpoint only accepts POST requests.")
		return
	}
	if err := r.ParseForm(); err != nil {
		status = http.StatusBadRequest
		entraError(w, status, "invalid_request", "AADSTS900144: The request body must be form-encoded.")
		return
	}
	if g := r.PostForm.Get("grant_type"); g != "client_credentials" {
		status = http.StatusBadRequest
		entraError(w, status, "unsupported_grant_type", "AADSTS70003: The grant type '"+g+"' is not supported here.")
		return
	}
	var sp *ServicePrincipal
	id := r.PostForm.Get("client_id")
	for i := range s.cfg.ServicePrincipals {
		if s.cfg.ServicePrincipals[i].ClientID == id {
			sp = &s.cfg.ServicePrincipals[i]
		}
	}
	if sp == nil {
		status = http.StatusBadRequest
		entraError(w, status, "unauthorized_client", "AADSTS700016: Application with identifier '"+id+"' was not found in the directory '"+tenant+"'.")
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("client_secret")), []byte(sp.ClientSecret)) != 1 {
		status = http.StatusUnauthorized
		entraError(w, status, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
		return
	}
	resource := ""
	for _, sc := range strings.Fields(r.PostForm.Get("scope")) {
		if r, ok := strings.CutSuffix(sc, "/.default"); ok {
			resource = strings.TrimRight(r, "/") + "/"
		}
	}
	if resource == "" {
		status = http.StatusBadRequest
		entraError(w, status, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid: client credentials need a scope ending in /.default.")
		return
	}
	tok, exp := s.tokens.issue(resource, sp.ReadOnly, time.Now())
	secs := int(time.Until(exp).Seconds())
	writeJSON(w, status, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   tok,
	})
}

func entraError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error":             code,
		"error_description": desc,
		"error_codes":       []int{},
		"timestamp":         time.Now().UTC().Format("2006-01-02 15:04:05Z"),
	})
}
