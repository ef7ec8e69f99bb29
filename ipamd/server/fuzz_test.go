package server

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// strictHandler fails the fuzz run if it is ever called with a request that
// did not pass validation.
type strictHandler struct{ t *testing.T }

func (h strictHandler) attachment(containerID, ifName string) {
	if err := (api.CheckRequest{ContainerID: containerID, IfName: ifName}).Validate(); err != nil {
		h.t.Fatalf("handler called with an invalid attachment: %v", err)
	}
}

func (h strictHandler) Allocate(_ context.Context, r api.AllocateRequest) (api.AllocateResponse, error) {
	if err := r.Validate(); err != nil {
		h.t.Fatalf("handler called with an invalid allocate request: %v", err)
	}
	return api.AllocateResponse{}, nil
}

func (h strictHandler) Release(_ context.Context, r api.ReleaseRequest) (api.ReleaseResponse, error) {
	h.attachment(r.ContainerID, r.IfName)
	return api.ReleaseResponse{}, nil
}

func (h strictHandler) Check(_ context.Context, r api.CheckRequest) (api.CheckResponse, error) {
	h.attachment(r.ContainerID, r.IfName)
	return api.CheckResponse{}, nil
}

func (h strictHandler) GC(_ context.Context, r api.GCRequest) (api.GCResponse, error) {
	if r.Valid == nil {
		h.t.Fatal("gc handler called without a valid list")
	}
	for _, a := range r.Valid {
		h.attachment(a.ContainerID, a.IfName)
	}
	return api.GCResponse{}, nil
}

func (h strictHandler) Status(context.Context, api.StatusRequest) (api.StatusResponse, error) {
	return api.StatusResponse{}, nil
}

func (h strictHandler) List(context.Context, api.ListRequest) (api.ListResponse, error) {
	return api.ListResponse{}, nil
}

// panicCounter is a slog handler that counts the server's "handler panic"
// records: dispatch recovers panics, and the fuzz run must see them.
type panicCounter struct{ n *atomic.Int64 }

func (p panicCounter) Enabled(context.Context, slog.Level) bool { return true }
func (p panicCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		p.n.Add(1)
	}
	return nil
}
func (p panicCounter) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p panicCounter) WithGroup(string) slog.Handler      { return p }

// FuzzDecodeRequest feeds arbitrary request payloads through the server's
// decoding, version check, body decoding and validation into a handler
// that insists on valid input. No panic (also none recovered by dispatch);
// every refusal is an *Error with a code and a message.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"version":"1.0","op":"allocate","timeoutMs":1000,"body":{"containerID":"abc","ifName":"eth0","podNamespace":"default","podName":"a","netns":"/var/run/netns/x"}}`,
		`{"version":"1.0","op":"release","body":{"containerID":"abc","ifName":"eth0"}}`,
		`{"version":"1.0","op":"check","body":{"containerID":"abc","ifName":"eth0"}}`,
		`{"version":"1.0","op":"gc","body":{"valid":[{"containerID":"abc","ifName":"eth0"}]}}`,
		`{"version":"1.0","op":"gc","body":{}}`,
		`{"version":"1.0","op":"gc","body":{"valid":[{"containerID":"a b","ifName":"eth0"}]}}`,
		`{"version":"1.7","op":"status"}`,
		`{"version":"1.0","op":"list","body":null}`,
		`{"version":"2.0","op":"status","extra":[1,2]}`,
		`{"version":"1","op":"status"}`,
		`{"version":"1.0","op":"allocate","body":{"containerID":"","ifName":"0123456789abcdef"}}`,
		`{"version":"1.0","op":"allocate","body":"x"}`,
		`{"version":"1.0","op":"reboot"}`,
		`{"version":"99999999999.0"}`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		var panics atomic.Int64
		s := &Server{h: strictHandler{t: t}, cfg: serverConfig{logger: slog.New(panicCounter{n: &panics})}}
		req, rerr := decodeRequest(payload)
		if rerr != nil {
			if rerr.Code == "" || rerr.Message == "" {
				t.Fatalf("refusal without code or message: %+v", rerr)
			}
			return
		}
		body, err := s.dispatch(context.Background(), req)
		if panics.Load() > 0 {
			t.Fatalf("dispatch recovered a panic for %q", payload)
		}
		if err != nil {
			var e *api.Error
			if !errors.As(err, &e) || e.Code == "" || e.Message == "" {
				t.Fatalf("refusal is not a coded error: %T %v", err, err)
			}
			return
		}
		if body == nil {
			t.Fatal("success without a body")
		}
		if _, err := api.AppendFrame(api.Response{Version: api.Version, Body: body}); err != nil {
			t.Fatalf("response cannot be framed: %v", err)
		}
	})
}
