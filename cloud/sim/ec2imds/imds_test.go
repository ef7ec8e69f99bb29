package ec2imds

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type fakeSource struct{}

func (fakeSource) Instance() (Instance, bool) {
	return Instance{
		ID: "i-1", Type: "m5.large", MAC: "0e:00:00:00:00:01", Role: "node",
		Interfaces: []Interface{{MAC: "0e:00:00:00:00:01", InterfaceID: "eni-1", LocalIPv4s: []string{"10.0.0.10", "10.0.0.11"}}},
	}, true
}

func (fakeSource) Credentials() (Credentials, error) {
	return Credentials{AccessKeyID: "ASIA1", SecretAccessKey: "s", Token: "t", Expiration: time.Unix(2e9, 0)}, nil
}

func do(t *testing.T, srv *httptest.Server, method, path string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

func TestTokenFlow(t *testing.T) {
	h := NewHandler(fakeSource{})
	now := time.Unix(1e9, 0)
	h.now = func() time.Time { return now }
	srv := httptest.NewServer(h)
	defer srv.Close()

	for name, hdr := range map[string]map[string]string{
		"no ttl":      {},
		"ttl 0":       {TokenTTLHeader: "0"},
		"ttl too big": {TokenTTLHeader: "21601"},
	} {
		if st, _, _ := do(t, srv, http.MethodPut, "/latest/api/token", hdr); st != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", name, st)
		}
	}
	if st, _, _ := do(t, srv, http.MethodPut, "/latest/api/token", map[string]string{TokenTTLHeader: "60", "X-Forwarded-For": "1.2.3.4"}); st != http.StatusForbidden {
		t.Errorf("proxied token request: %d, want 403", st)
	}
	if st, _, _ := do(t, srv, http.MethodGet, "/latest/api/token", nil); st != http.StatusMethodNotAllowed {
		t.Errorf("GET token: %d, want 405", st)
	}
	st, tok, hdr := do(t, srv, http.MethodPut, "/latest/api/token", map[string]string{TokenTTLHeader: "60"})
	if st != http.StatusOK || tok == "" || hdr.Get(TokenTTLHeader) != "60" {
		t.Fatalf("token: %d %q %v", st, tok, hdr)
	}
	auth := map[string]string{TokenHeader: tok}
	if st, body, _ := do(t, srv, http.MethodGet, "/latest/meta-data/network/interfaces/macs/0e:00:00:00:00:01/local-ipv4s", auth); st != 200 || body != "10.0.0.10\n10.0.0.11" {
		t.Fatalf("local-ipv4s: %d %q", st, body)
	}
	if st, body, _ := do(t, srv, http.MethodGet, "/latest/meta-data/network/interfaces/macs/0e:00:00:00:00:01/", auth); st != 200 ||
		body != "device-number\ninterface-id\nlocal-ipv4s\nmac\nsubnet-id\nsubnet-ipv4-cidr-block\nvpc-id\nvpc-ipv4-cidr-block\nvpc-ipv4-cidr-blocks" {
		t.Fatalf("listing: %d %q", st, body)
	}
	if st, _, _ := do(t, srv, http.MethodGet, "/latest/meta-data/nothing", auth); st != http.StatusNotFound {
		t.Fatalf("unknown path: %d", st)
	}
	st, body, _ := do(t, srv, http.MethodGet, "/latest/meta-data/iam/security-credentials/node", auth)
	var c map[string]string
	if err := json.Unmarshal([]byte(body), &c); st != 200 || err != nil || c["Code"] != "Success" || c["AccessKeyId"] != "ASIA1" || c["Token"] != "t" || c["Expiration"] != "2033-05-18T03:33:20Z" {
		t.Fatalf("credentials: %d %s", st, body)
	}
	// IMDSv1 and expired tokens are refused.
	if st, _, _ := do(t, srv, http.MethodGet, "/latest/meta-data/instance-id", nil); st != http.StatusUnauthorized {
		t.Fatalf("IMDSv1: %d, want 401", st)
	}
	now = now.Add(61 * time.Second)
	if st, _, _ := do(t, srv, http.MethodGet, "/latest/meta-data/instance-id", auth); st != http.StatusUnauthorized {
		t.Fatalf("expired token: %d, want 401", st)
	}
}
