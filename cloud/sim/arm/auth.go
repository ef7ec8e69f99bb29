package arm

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"
)

// audiences are the token resources ARM accepts.
var audiences = []string{
	"https://management.azure.com", "https://management.azure.com/",
	"https://management.core.windows.net", "https://management.core.windows.net/",
}

// forgetExpired is how long an expired token is still recognised, and
// answered with ExpiredAuthenticationToken rather than as unknown.
const forgetExpired = time.Hour

// issuedToken is a token handed out by IssueToken.
type issuedToken struct {
	resource  string
	expiresOn time.Time
	// readOnly: the identity holds a role that only reads (Reader), so
	// every write or delete is refused with 403 AuthorizationFailed.
	readOnly bool
	// principal names the identity in error messages.
	principal string
}

// tokenStore knows the tokens ARM accepts.
type tokenStore struct {
	static   string
	lifetime time.Duration

	mu     sync.Mutex
	issued map[string]issuedToken
}

func newTokenStore(static string, lifetime time.Duration) *tokenStore {
	return &tokenStore{static: static, lifetime: lifetime, issued: map[string]issuedToken{}}
}

// issue creates a token for resource; a readOnly one may only read.
func (t *tokenStore) issue(resource string, readOnly bool, now time.Time) (string, time.Time) {
	var b [24]byte
	_, _ = rand.Read(b[:])
	tok := "sim-" + hex.EncodeToString(b[:])
	exp := now.Add(t.lifetime)
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, v := range t.issued { // forget long-expired tokens so the map stays small
		if now.Sub(v.expiresOn) > forgetExpired {
			delete(t.issued, k)
		}
	}
	principal := make([]byte, 16)
	_, _ = rand.Read(principal)
	t.issued[tok] = issuedToken{resource: resource, expiresOn: exp, readOnly: readOnly, principal: hex.EncodeToString(principal)}
	return tok, exp
}

// check validates the Authorization header of r and returns the token's
// identity (the static token's may do everything).
func (t *tokenStore) check(r *http.Request, now time.Time) (issuedToken, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return issuedToken{}, authError("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
			"The authentication failed because of missing 'Authorization' header.")
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return issuedToken{}, authError("AuthenticationFailed", "Authentication failed. The 'Authorization' header is provided in an invalid format.",
			"The authentication failed because of invalid 'Authorization' header.")
	}
	if t.static != "" && tok == t.static {
		return issuedToken{principal: "static"}, nil
	}
	t.mu.Lock()
	it, known := t.issued[tok]
	t.mu.Unlock()
	switch {
	case !known:
		return issuedToken{}, authError("InvalidAuthenticationToken", "The access token is invalid.", "The access token is invalid.")
	case now.After(it.expiresOn):
		return issuedToken{}, authError("ExpiredAuthenticationToken",
			"The access token expiry UTC time '"+it.expiresOn.UTC().Format(time.RFC1123)+"' is earlier than current UTC time '"+now.UTC().Format(time.RFC1123)+"'.",
			"The access token has expired.")
	}
	for _, a := range audiences {
		if strings.EqualFold(it.resource, a) {
			return it, nil
		}
	}
	return issuedToken{}, authError("InvalidAuthenticationTokenAudience",
		"The access token has been obtained for wrong audience or resource '"+it.resource+"'. It should exactly match with one of the allowed audiences '"+strings.Join(audiences, "','")+"'.",
		"The access token has been obtained for the wrong audience.")
}

// authError is a 401 answer; the challenge is attached by the caller.
func authError(code, msg, challenge string) *apiError {
	e := newAPIError(http.StatusUnauthorized, code, "%s", msg)
	e.challenge = `Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token", error_description="` + challenge + `"`
	return e
}

// denied is the 403 Azure RBAC answers when the identity's roles do not
// allow the action on the resource.
func denied(it issuedToken, action, scope string) *apiError {
	return newAPIError(http.StatusForbidden, CodeAuthorizationFailed,
		"The client '%s' with object id '%s' does not have authorization to perform action '%s' over scope '%s' or the scope is invalid. If access was recently granted, please refresh your credentials.",
		it.principal, it.principal, action, scope)
}
