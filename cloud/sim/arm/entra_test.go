package arm

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestEntraErrors: the simulated Entra ID answers the client credentials
// grant only for its tenant, its application and the right secret, with
// Entra ID's error codes; a token it issues is accepted by ARM.
func TestEntraErrors(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.ServicePrincipals = []ServicePrincipal{{ClientID: "app-1", ClientSecret: "s3cret"}}
	})
	client := e.ts.Client()
	form := func(tenant string, v url.Values) (int, map[string]any) {
		t.Helper()
		resp, err := client.PostForm(e.ts.URL+"/"+tenant+"/oauth2/v2.0/token", v)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	good := url.Values{"grant_type": {"client_credentials"}, "client_id": {"app-1"}, "client_secret": {"s3cret"},
		"scope": {"https://management.azure.com//.default"}}
	with := func(k, v string) url.Values {
		c := url.Values{}
		for kk, vv := range good {
			c[kk] = vv
		}
		c.Set(k, v)
		return c
	}
	for _, tc := range []struct {
		name   string
		tenant string
		form   url.Values
		status int
		code   string
	}{
		{"another tenant", "00000000-0000-0000-0000-000000000000", good, 400, "AADSTS90002"},
		{"unknown application", DefaultTenantID, with("client_id", "app-2"), 400, "AADSTS700016"},
		{"wrong secret", DefaultTenantID, with("client_secret", "guess"), 401, "AADSTS7000215"},
		{"password grant", DefaultTenantID, with("grant_type", "password"), 400, "AADSTS70003"},
		{"no .default scope", DefaultTenantID, with("scope", "openid"), 400, "AADSTS1002012"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := form(tc.tenant, tc.form)
			desc, _ := body["error_description"].(string)
			if status != tc.status || !strings.HasPrefix(desc, tc.code) || body["access_token"] != nil {
				t.Errorf("status %d body %v, want %d with %s and no token", status, body, tc.status, tc.code)
			}
		})
	}
	status, body := form(DefaultTenantID, good)
	tok, _ := body["access_token"].(string)
	if status != 200 || tok == "" || body["token_type"] != "Bearer" {
		t.Fatalf("the right secret: %d %v", status, body)
	}
	req, _ := http.NewRequest(http.MethodGet, e.ts.URL+"/subscriptions/"+testConfig().SubscriptionID+"/resourceGroups/"+testConfig().ResourceGroup+
		"/providers/Microsoft.Network/networkInterfaces?api-version=2024-05-01", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("ARM with the Entra token: %d, want 200", resp.StatusCode)
	}
	if n := e.s.Stats().Calls["Entra_Token"]; n["200"] != 1 || n["400"] != 4 || n["401"] != 1 {
		t.Errorf("token calls %v, want 1 ok, 4 bad requests, 1 unauthorized", n)
	}
}
