package pki

import (
	"crypto/x509"
	"net/netip"
	"testing"
)

func TestSignVerifies(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Sign(Leaf{CommonName: "kube-apiserver", Server: true, DNSNames: []string{"kubernetes.default.svc"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Sign(Leaf{CommonName: "admin", Organization: []string{"system:masters"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Errorf("server certificate for 127.0.0.1: %v", err)
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "kubernetes.default.svc"}); err != nil {
		t.Errorf("server certificate for kubernetes.default.svc: %v", err)
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.1"}); err == nil {
		t.Error("server certificate verified for an address it does not name")
	}
	if _, err := cli.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cli.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate verified as a server certificate")
	}
	otherPool := x509.NewCertPool()
	otherPool.AddCert(other.Cert)
	if _, err := cli.Cert.Verify(x509.VerifyOptions{Roots: otherPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("certificate verified against a CA that did not sign it")
	}
	if got := cli.Cert.Subject.Organization; len(got) != 1 || got[0] != "system:masters" {
		t.Errorf("organization %q", got)
	}
	if _, err := ca.Sign(Leaf{CommonName: "nothing"}); err == nil {
		t.Error("a leaf without usage was signed")
	}
}
