package imds

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testInstance() Instance {
	return Instance{
		Compute: Compute{Name: "node0", SubscriptionID: "sub", ResourceGroupName: "rg", VMID: "id-0", Location: "westeurope"},
		Network: Network{Interface: []Interface{{
			MACAddress: "000D3A000001",
			IPv4: IPFamily{
				IPAddress: []IPAddress{{PrivateIPAddress: "10.240.0.4"}},
				Subnet:    []Subnet{{Address: "10.240.0.0", Prefix: "16"}},
			},
		}}},
	}
}

func get(t *testing.T, srv *httptest.Server, path string, header map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestInstanceDocument(t *testing.T) {
	want := testInstance()
	srv := httptest.NewServer(NewHandler(func() Instance { return want }, nil, ""))
	defer srv.Close()

	status, body := get(t, srv, "/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "true"})
	if status != http.StatusOK {
		t.Fatalf("status = %d, body %s", status, body)
	}
	var got Instance
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("instance (-want +got):\n%s", d)
	}
	// The field names are Azure's, not Go's.
	var raw map[string]map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"subscriptionId", "resourceGroupName", "vmId", "name", "location"} {
		if _, ok := raw["compute"][k]; !ok {
			t.Errorf("compute lacks %q: %s", k, body)
		}
	}

	status, body = get(t, srv, "/metadata/instance/network?api-version=2021-02-01", map[string]string{"Metadata": "true"})
	var net Network
	if status != http.StatusOK || json.Unmarshal(body, &net) != nil || len(net.Interface) != 1 || net.Interface[0].MACAddress != "000D3A000001" {
		t.Errorf("network sub-document: status %d body %s", status, body)
	}
}

func TestRefusals(t *testing.T) {
	srv := httptest.NewServer(NewHandler(testInstance, nil, ""))
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		path   string
		header map[string]string
		want   int
	}{
		{"no metadata header", "/metadata/instance?api-version=2021-02-01", nil, http.StatusBadRequest},
		{"metadata false", "/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "false"}, http.StatusBadRequest},
		{"proxied", "/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "true", "X-Forwarded-For": "10.0.0.9"}, http.StatusBadRequest},
		{"no api-version", "/metadata/instance", map[string]string{"Metadata": "true"}, http.StatusBadRequest},
		{"unknown path", "/metadata/other?api-version=2021-02-01", map[string]string{"Metadata": "true"}, http.StatusNotFound},
		{"token without resource", "/metadata/identity/oauth2/token?api-version=2018-02-01", map[string]string{"Metadata": "true"}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(t, srv, tc.path, tc.header)
			if status != tc.want {
				t.Errorf("status = %d, want %d (body %s)", status, tc.want, body)
			}
			var e map[string]any
			if err := json.Unmarshal(body, &e); err != nil || e["error"] == nil {
				t.Errorf("body %s is not an IMDS error document", body)
			}
		})
	}
}

func TestToken(t *testing.T) {
	expires := time.Now().Add(time.Hour).Truncate(time.Second)
	var gotResource string
	issue := func(resource string) (string, time.Time) {
		gotResource = resource
		return "tok-123", expires
	}
	srv := httptest.NewServer(NewHandler(testInstance, issue, "client-1"))
	defer srv.Close()

	status, body := get(t, srv, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F", map[string]string{"Metadata": "true"})
	if status != http.StatusOK {
		t.Fatalf("status %d body %s", status, body)
	}
	var tok tokenResponse
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatal(err)
	}
	if gotResource != "https://management.azure.com/" {
		t.Errorf("issuer asked for resource %q", gotResource)
	}
	if tok.AccessToken != "tok-123" || tok.TokenType != "Bearer" || tok.Resource != "https://management.azure.com/" || tok.ClientID != "client-1" {
		t.Errorf("token response %+v", tok)
	}
	if tok.ExpiresOn != strconv.FormatInt(expires.Unix(), 10) {
		t.Errorf("expires_on = %s, want %d", tok.ExpiresOn, expires.Unix())
	}
	if in, err := strconv.Atoi(tok.ExpiresIn); err != nil || in < 3500 || in > 3600 {
		t.Errorf("expires_in = %q, want about 3600", tok.ExpiresIn)
	}
}
