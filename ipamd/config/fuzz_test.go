package config

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary documents to the daemon's configuration parser:
// no panic; an accepted configuration validates; a JSON document is refused
// only with *FieldError values that name a field.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/example.json"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		`{}`,
		`{"warmIPTarget":300}`,
		`{"maxIPs":0,"batchSize":-1}`,
		`{"cooldown":"1y"}`,
		`{"cooldown":5}`,
		`{"metricsAddr":"0.0.0.0:10093"}`,
		`{"socketPath":"relative"}`,
		`{"cloud":{"azure":{"credential":"staticTokenFile"}}}`,
		`{"cloud":{"azure":{"managedIdentityClientID":"nope"}}}`,
		`{"cloud":{"provider":"aws","callTimeout":"0s"}}`,
		`{"warmIpTarget":1}`,
		`{"cloud":null}`,
		`{"mode":"kubenet","logLevel":"trace"}`,
		`[]`, `null`, `1`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a configuration that does not validate: %v", verr)
			}
			return
		}
		if err.Error() == "" {
			t.Fatal("empty error")
		}
		if strings.HasPrefix(err.Error(), "parse config:") {
			return // not JSON at all
		}
		for _, e := range leaves(err) {
			var fe *FieldError
			if !errors.As(e, &fe) || fe.Field == "" || fe.Msg == "" {
				t.Fatalf("error %q (%T) does not name a field", e, e)
			}
		}
	})
}

// leaves unwraps errors.Join trees.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	}
	return []error{err}
}
