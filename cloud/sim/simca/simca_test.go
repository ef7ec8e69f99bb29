package simca

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/internal/cabundle"
)

func TestServerCertificateTrustedOnlyThroughCAFile(t *testing.T) {
	ca, err := New("test ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.ServerConfig("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	srv.TLS = cfg
	srv.StartTLS()
	defer srv.Close()

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := ca.WriteFile(caFile); err != nil {
		t.Fatal(err)
	}
	pool, err := cabundle.Load(caFile)
	if err != nil {
		t.Fatal(err)
	}
	trusted := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	resp, err := trusted.Get(srv.URL)
	if err != nil {
		t.Fatalf("GET with the CA file trusted: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello" {
		t.Errorf("body = %q, want hello", body)
	}

	other, err := New("other ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	untrusted := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: other.CertPool(), MinVersion: tls.VersionTLS12}}}
	if resp, err := untrusted.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatal("GET trusting another CA succeeded, want a certificate error")
	}
}
