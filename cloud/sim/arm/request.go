package arm

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
)

// maxBody bounds request bodies; a NIC with 256 ipConfigurations is ~100 KiB.
const maxBody = 8 << 20

// decodeBody unmarshals the request body into v, an SDK model whose own
// UnmarshalJSON does the work.
func decodeBody(r *http.Request, v any) *apiError {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return errBadRequestFormat(err)
	}
	if len(b) > maxBody {
		return errBadRequestFormat(errors.New("request body is too large"))
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return errBadRequestFormat(errors.New("request body is empty"))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errBadRequestFormat(err)
	}
	return nil
}

// checkPreconditions applies If-Match and If-None-Match to a write on a
// resource that exists or not and has etag.
func checkPreconditions(r *http.Request, exists bool, etag string) *apiError {
	if m := r.Header.Get("If-Match"); m != "" {
		if !exists {
			return errPreconditionFailed("(none: the resource does not exist)", m)
		}
		if m != "*" && !etagMatches(m, etag) {
			return errPreconditionFailed(etag, m)
		}
	}
	if m := r.Header.Get("If-None-Match"); m != "" && exists && (m == "*" || etagMatches(m, etag)) {
		return newAPIError(http.StatusPreconditionFailed, CodePreconditionFailed,
			"Precondition failed: the resource exists and If-None-Match is %s.", m)
	}
	return nil
}

// etagMatches compares a header value (one or more ETags, weak or strong)
// with etag, ignoring the W/ prefix and quotes.
func etagMatches(header, etag string) bool {
	want := normalizeETag(etag)
	for _, h := range strings.Split(header, ",") {
		if normalizeETag(h) == want {
			return true
		}
	}
	return false
}

func normalizeETag(e string) string {
	e = strings.TrimSpace(e)
	e = strings.TrimPrefix(e, "W/")
	return strings.Trim(e, `"`)
}

// checkLocation validates the location of a PUT body: required on create,
// and it must be the subscription's location.
func (s *Server) checkLocation(loc *string, exists bool, typ, name string) *apiError {
	if loc == nil || *loc == "" {
		if exists {
			return nil
		}
		return newAPIError(http.StatusBadRequest, CodeLocationRequired, "The location property is required for this definition.")
	}
	norm := func(v string) string { return strings.ToLower(strings.ReplaceAll(v, " ", "")) }
	if norm(*loc) != norm(s.cfg.Location) {
		return newAPIError(http.StatusBadRequest, CodeInvalidResourceLocation,
			"The resource '%s/%s' cannot be created in location '%s'; the simulated resource group lives in '%s'.",
			typ, name, *loc, s.cfg.Location)
	}
	return nil
}
