package ec2

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Credentials are the temporary credentials of an instance role.
type Credentials struct {
	AccessKeyID, SecretAccessKey, SessionToken string
	Expiration, Issued                         time.Time
}

// credential is what the store knows of an access key.
type credential struct {
	secret, token string // token "" for static credentials
	expires       time.Time
}

// credStore holds the credentials the API accepts.
type credStore struct {
	lifetime time.Duration

	mu         sync.Mutex
	byKey      map[string]credential
	byInstance map[string]Credentials // current credentials per instance
}

func newCredStore(static *StaticCredentials, lifetime time.Duration) *credStore {
	c := &credStore{lifetime: lifetime, byKey: map[string]credential{}, byInstance: map[string]Credentials{}}
	if static != nil {
		c.byKey[static.AccessKeyID] = credential{secret: static.SecretAccessKey}
	}
	return c
}

// forInstance returns the instance's credentials, rotated when less than a
// quarter of their lifetime is left (EC2 rotates well before expiry).
func (c *credStore) forInstance(instanceID string, now time.Time) Credentials {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.byInstance[instanceID]; ok && cur.Expiration.Sub(now) > c.lifetime/4 {
		return cur
	}
	for k, v := range c.byKey { // forget expired credentials
		if v.token != "" && now.After(v.expires.Add(time.Hour)) {
			delete(c.byKey, k)
		}
	}
	cr := Credentials{
		AccessKeyID:     "ASIA" + randomUpper(16),
		SecretAccessKey: randomBase64(30),
		SessionToken:    "IQoJsim" + randomBase64(96),
		Issued:          now,
		Expiration:      now.Add(c.lifetime),
	}
	c.byKey[cr.AccessKeyID] = credential{secret: cr.SecretAccessKey, token: cr.SessionToken, expires: cr.Expiration}
	c.byInstance[instanceID] = cr
	return cr
}

func (c *credStore) lookup(key string) (credential, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cr, ok := c.byKey[key]
	return cr, ok
}

const upperAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

func randomUpper(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = upperAlnum[int(b[i])%len(upperAlnum)]
	}
	return string(b)
}

func randomBase64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// sigV4 is a parsed AWS4-HMAC-SHA256 Authorization header.
type sigV4 struct {
	accessKey, date, region, service string
	signedHeaders                    []string
	signature                        string
}

func parseAuthorization(h string) (sigV4, bool) {
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(h, algo) {
		return sigV4{}, false
	}
	var out sigV4
	for _, part := range strings.Split(strings.TrimPrefix(h, algo), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return sigV4{}, false
		}
		switch k {
		case "Credential":
			f := strings.Split(v, "/")
			if len(f) != 5 || f[4] != "aws4_request" {
				return sigV4{}, false
			}
			out.accessKey, out.date, out.region, out.service = f[0], f[1], f[2], f[3]
		case "SignedHeaders":
			out.signedHeaders = strings.Split(v, ";")
		case "Signature":
			out.signature = v
		}
	}
	ok := out.accessKey != "" && len(out.signedHeaders) > 0 && out.signature != ""
	return out, ok
}

// authenticate verifies the request's Signature Version 4 against the
// secret of its access key: the whole canonical request is recomputed, so
// a request changed after signing, or signed with another secret, fails.
func (s *Server) authenticate(r *http.Request, body []byte, now time.Time) *apiError {
	authFailure := newError(http.StatusUnauthorized, CodeAuthFailure, "AWS was not able to validate the provided access credentials")
	sig, ok := parseAuthorization(r.Header.Get("Authorization"))
	if !ok {
		return authFailure
	}
	cred, known := s.creds.lookup(sig.accessKey)
	if !known || sig.service != "ec2" || sig.region != s.cfg.Region {
		return authFailure
	}
	if cred.token != "" {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Amz-Security-Token")), []byte(cred.token)) != 1 {
			return authFailure
		}
		if now.After(cred.expires) {
			return newError(http.StatusBadRequest, CodeRequestExpired, "The security token included in the request is expired")
		}
	}
	if !slices.Contains(sig.signedHeaders, "host") || !slices.Contains(sig.signedHeaders, "x-amz-date") {
		return authFailure
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil || !strings.HasPrefix(amzDate, sig.date) {
		return authFailure
	}
	if d := now.Sub(t); d > MaxClockSkew || d < -MaxClockSkew {
		return newError(http.StatusBadRequest, CodeRequestExpired, "Request has expired. Timestamp date is %s", amzDate)
	}
	payload := sha256.Sum256(body)
	payloadHex := hex.EncodeToString(payload[:])
	if h := r.Header.Get("X-Amz-Content-Sha256"); h != "" && h != payloadHex {
		return authFailure
	}
	canonical := strings.Join([]string{
		r.Method,
		canonicalURI(r.URL),
		canonicalQuery(r.URL.Query()),
		canonicalHeaders(r, sig.signedHeaders),
		strings.Join(sig.signedHeaders, ";"),
		payloadHex,
	}, "\n")
	scope := strings.Join([]string{sig.date, sig.region, sig.service, "aws4_request"}, "/")
	crHash := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(crHash[:])
	key := hmacSHA256([]byte("AWS4"+cred.secret), sig.date)
	key = hmacSHA256(key, sig.region)
	key = hmacSHA256(key, sig.service)
	key = hmacSHA256(key, "aws4_request")
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(sig.signature)) {
		return authFailure
	}
	return nil
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// canonicalURI is the URI-encoded path; EC2 (like every service but S3)
// encodes the already-escaped path once more.
func canonicalURI(u *url.URL) string {
	p := u.EscapedPath()
	if p == "" {
		return "/"
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = uriEncode(s)
	}
	return strings.Join(segs, "/")
}

func canonicalQuery(q url.Values) string {
	var pairs []string
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, uriEncode(k)+"="+uriEncode(v))
		}
	}
	slices.Sort(pairs)
	return strings.Join(pairs, "&")
}

// uriEncode escapes every byte but the unreserved characters.
func uriEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{c})))
		}
	}
	return b.String()
}

// canonicalHeaders renders the signed headers, lower-case names, values
// trimmed with inner runs of spaces collapsed, each line ending in \n.
func canonicalHeaders(r *http.Request, names []string) string {
	var b strings.Builder
	for _, n := range names {
		var vals []string
		switch n {
		case "host":
			vals = []string{r.Host}
		case "content-length":
			vals = r.Header.Values("Content-Length")
			if len(vals) == 0 {
				vals = []string{strconv.FormatInt(r.ContentLength, 10)}
			}
		default:
			vals = r.Header.Values(n)
		}
		norm := make([]string, len(vals))
		for i, v := range vals {
			norm[i] = strings.Join(strings.Fields(v), " ")
		}
		b.WriteString(n + ":" + strings.Join(norm, ",") + "\n")
	}
	return b.String()
}
