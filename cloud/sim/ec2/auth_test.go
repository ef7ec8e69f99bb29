package ec2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func (e *env) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.ca.CertPool(), MinVersion: tls.VersionTLS12}}}
}

// post sends a form to the simulator, signed with creds unless nil, and
// returns the status and body.
func (e *env) post(t *testing.T, form url.Values, creds *aws.Credentials, tamper func(*http.Request)) (int, string) {
	t.Helper()
	body := form.Encode()
	req, err := http.NewRequest(http.MethodPost, e.url+"/", strings.NewReader(body))
	noErr(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	if creds != nil {
		sum := sha256.Sum256([]byte(body))
		noErr(t, v4.NewSigner().SignHTTP(context.Background(), *creds, req, hex.EncodeToString(sum[:]), "ec2", e.s.Region(), time.Now()))
	}
	if tamper != nil {
		tamper(req)
	}
	resp, err := e.httpClient().Do(req)
	noErr(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	noErr(t, err)
	return resp.StatusCode, string(b)
}

func TestSigV4Required(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.StaticCredentials = &StaticCredentials{AccessKeyID: "AKIASIMSTATIC0000001", SecretAccessKey: "static-secret"}
	})
	ctx := ctxT(t)
	role, err := e.cfg.Credentials.Retrieve(ctx)
	noErr(t, err)
	if !strings.HasPrefix(role.AccessKeyID, "ASIA") || role.SessionToken == "" || role.Source != "EC2RoleProvider" {
		t.Fatalf("role credentials from IMDS: %+v", role)
	}
	form := url.Values{"Action": {"DescribeSubnets"}, "Version": {APIVersion}}

	status, body := e.post(t, form, &role, nil)
	if status != http.StatusOK || !strings.Contains(body, `<DescribeSubnetsResponse xmlns="`+Namespace+`">`) || !strings.Contains(body, "<requestId>") {
		t.Fatalf("signed request: %d %s", status, body)
	}
	refused := map[string]struct {
		creds  *aws.Credentials
		tamper func(*http.Request)
	}{
		"unsigned":     {nil, nil},
		"wrong secret": {&aws.Credentials{AccessKeyID: role.AccessKeyID, SecretAccessKey: "wrong", SessionToken: role.SessionToken}, nil},
		"unknown key":  {&aws.Credentials{AccessKeyID: "ASIANOSUCHKEY0000000", SecretAccessKey: role.SecretAccessKey, SessionToken: role.SessionToken}, nil},
		"no token":     {&aws.Credentials{AccessKeyID: role.AccessKeyID, SecretAccessKey: role.SecretAccessKey}, nil},
		"wrong region": {&role, func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/us-east-1/", "/eu-west-1/", 1))
		}},
		"body tampered": {&role, func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("Action=DescribeSubnets&Version=2016-11-15&SubnetId.1=x"))
			r.ContentLength = 54
		}},
		"header tampered": {&role, func(r *http.Request) {
			r.Header.Set("X-Amz-Date", time.Now().Add(time.Second).UTC().Format("20060102T150405Z"))
		}},
	}
	for name, tc := range refused {
		t.Run(name, func(t *testing.T) {
			status, body := e.post(t, form, tc.creds, tc.tamper)
			if status != http.StatusUnauthorized || !strings.Contains(body, "<Code>AuthFailure</Code>") || !strings.Contains(body, "<RequestID>") {
				t.Fatalf("got %d %s, want 401 AuthFailure", status, body)
			}
		})
	}
	t.Run("clock skew", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, e.url+"/", strings.NewReader(form.Encode()))
		noErr(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		sum := sha256.Sum256([]byte(form.Encode()))
		noErr(t, v4.NewSigner().SignHTTP(ctx, role, req, hex.EncodeToString(sum[:]), "ec2", e.s.Region(), time.Now().Add(-10*time.Minute)))
		resp, err := e.httpClient().Do(req)
		noErr(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(b, []byte(CodeRequestExpired)) {
			t.Fatalf("got %d %s, want 400 RequestExpired", resp.StatusCode, b)
		}
	})

	// The SDK with a wrong secret is refused; with the static credentials it works.
	bad := e.cfg.Copy()
	bad.Credentials = credentials.NewStaticCredentialsProvider(role.AccessKeyID, "wrong", role.SessionToken)
	_, err = e.client(bad).DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	wantCode(t, err, CodeAuthFailure, http.StatusUnauthorized)
	static := e.cfg.Copy()
	static.Credentials = credentials.NewStaticCredentialsProvider("AKIASIMSTATIC0000001", "static-secret", "")
	_, err = e.client(static).DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	noErr(t, err)

	// Protocol errors after authentication.
	status, body = e.post(t, url.Values{"Action": {"RunInstances"}, "Version": {APIVersion}}, &role, nil)
	if status != http.StatusBadRequest || !strings.Contains(body, CodeInvalidAction) {
		t.Fatalf("unknown action: %d %s", status, body)
	}
	status, body = e.post(t, url.Values{"Action": {"DescribeSubnets"}}, &role, nil)
	if status != http.StatusBadRequest || !strings.Contains(body, CodeMissingParameter) {
		t.Fatalf("no version: %d %s", status, body)
	}
	if st := e.s.Stats(); st.Calls["DescribeSubnets"]["401"] < 6 {
		t.Fatalf("stats %+v: refused requests not counted", st.Calls)
	}
}
