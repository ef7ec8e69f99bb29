package arm

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAuth: ARM requests need a bearer token issued by IssueToken for the
// management audience and not expired, or the static token.
func TestAuth(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StaticToken = "static-secret" })
	// Issued a lifetime and a minute ago: expired, without a sleep that a
	// loaded machine could stretch past a short lifetime of the valid token.
	expired, _ := e.s.tokens.issue("https://management.azure.com/", false, time.Now().Add(-DefaultTokenLifetime-time.Minute))
	graph, _ := e.s.IssueToken("https://graph.microsoft.com/")
	tests := []struct {
		name   string
		token  string
		status int
		code   string
	}{
		{"no token", "", http.StatusUnauthorized, CodeAuthenticationFailed},
		{"unknown token", "made-up", http.StatusUnauthorized, CodeInvalidToken},
		{"expired token", expired, http.StatusUnauthorized, CodeExpiredToken},
		{"wrong audience", graph, http.StatusUnauthorized, CodeInvalidTokenAudience},
		{"issued token", e.token(), http.StatusOK, ""},
		{"static token", "static-secret", http.StatusOK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := e.rawRequest(t, http.MethodGet, nicPath("node-0")+"?api-version="+apiVersion, tt.token, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.code == "" {
				return
			}
			var got struct {
				Error struct{ Code string } `json:"error"`
			}
			if err := json.Unmarshal([]byte(body), &got); err != nil || got.Error.Code != tt.code {
				t.Errorf("body = %s, want error code %s", body, tt.code)
			}
			if h := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(h, "Bearer ") {
				t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", h)
			}
		})
	}
	if got := e.s.Stats().Calls["NetworkInterfaces_Get"]["401"]; got != 4 {
		t.Errorf("401 count = %d, want 4", got)
	}
}

// TestSDKWithTokens: the SDK works with the static token and is refused
// with a bad one.
func TestSDKWithTokens(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StaticToken = "static-secret" })
	e.setClients(t, fixedCredential("static-secret"))
	if _, err := e.putNIC(testCtx(t), "node-0", nicBody(ipc("ipconfig1", "10.0.0.4", true), ipc("a", "", false))); err != nil {
		t.Errorf("PUT with the static token: %v", err)
	}
	e.setClients(t, fixedCredential("wrong"))
	_, err := e.nics.Get(testCtx(t), testRG, "node-0", nil)
	wantAPIError(t, err, http.StatusUnauthorized, CodeInvalidToken)
}
