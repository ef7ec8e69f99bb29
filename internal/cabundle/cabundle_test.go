package cabundle

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned returns the PEM of a fresh self-signed CA certificate and the
// certificate itself.
func selfSigned(t *testing.T, name string) ([]byte, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	pemA, certA := selfSigned(t, "a")
	pemB, certB := selfSigned(t, "b")
	_, certC := selfSigned(t, "c")
	files := map[string][]byte{
		"bundle.pem": append(pemA, pemB...),
		"bad.pem":    []byte("not a certificate"),
		"key.pem":    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		file    string
		wantErr bool
	}{
		{"bundle.pem", false},
		{"bad.pem", true},
		{"key.pem", true},
		{"missing.pem", true},
	} {
		_, err := Load(filepath.Join(dir, tc.file))
		if (err != nil) != tc.wantErr {
			t.Errorf("Load(%s) error = %v, want error %v", tc.file, err, tc.wantErr)
		}
	}

	// Every certificate of the bundle is trusted, and nothing else.
	pool, err := Load(filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert *x509.Certificate
		want bool
	}{{certA, true}, {certB, true}, {certC, false}} {
		_, err := tc.cert.Verify(x509.VerifyOptions{Roots: pool})
		if got := err == nil; got != tc.want {
			t.Errorf("%s verifies against the pool: %v (%v), want %v", tc.cert.Subject.CommonName, got, err, tc.want)
		}
	}
}
