package rpc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
)

// FuzzReadFrame feeds arbitrary byte streams to the frame reader: no panic,
// never a frame above the limit or empty, and every failure is EOF, an
// unexpected EOF or a framing error.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 2, '{', '}'}, uint16(16))
	f.Add([]byte{0, 0, 0, 0}, uint16(16))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, uint16(1024))
	f.Add([]byte{0, 0, 1, 0, 'x'}, uint16(1024))
	f.Add([]byte{0, 0}, uint16(1))
	f.Fuzz(func(t *testing.T, in []byte, limit uint16) {
		lim := int(limit) + 1
		msg, err := readFrame(bytes.NewReader(in), lim)
		if err != nil {
			var fe *frameError
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &fe) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		if len(msg) == 0 || len(msg) > lim {
			t.Fatalf("frame of %d bytes with limit %d", len(msg), lim)
		}
	})
}

// strictHandler fails the fuzz run if it is ever called with a request that
// did not pass validation.
type strictHandler struct{ t *testing.T }

func (h strictHandler) attachment(containerID, ifName string) {
	if err := validateAttachment(containerID, ifName); err != nil {
		h.t.Fatalf("handler called with an invalid attachment: %v", err)
	}
}

func (h strictHandler) Allocate(_ context.Context, r AllocateRequest) (AllocateResponse, error) {
	h.attachment(r.ContainerID, r.IfName)
	if len(r.Netns) > maxNetnsLen || len(r.PodName) > maxNameLen || len(r.PodNamespace) > maxNameLen {
		h.t.Fatalf("handler called with oversized fields")
	}
	return AllocateResponse{}, nil
}

func (h strictHandler) Release(_ context.Context, r ReleaseRequest) (ReleaseResponse, error) {
	h.attachment(r.ContainerID, r.IfName)
	return ReleaseResponse{}, nil
}

func (h strictHandler) Check(_ context.Context, r CheckRequest) (CheckResponse, error) {
	h.attachment(r.ContainerID, r.IfName)
	return CheckResponse{}, nil
}

func (h strictHandler) GC(_ context.Context, r GCRequest) (GCResponse, error) {
	if r.Valid == nil {
		h.t.Fatal("gc handler called without a valid list")
	}
	for _, a := range r.Valid {
		h.attachment(a.ContainerID, a.IfName)
	}
	return GCResponse{}, nil
}

func (h strictHandler) Status(context.Context, StatusRequest) (StatusResponse, error) {
	return StatusResponse{}, nil
}

func (h strictHandler) List(context.Context, ListRequest) (ListResponse, error) {
	return ListResponse{}, nil
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
			var e *Error
			if !errors.As(err, &e) || e.Code == "" || e.Message == "" {
				t.Fatalf("refusal is not a coded error: %T %v", err, err)
			}
			return
		}
		if body == nil {
			t.Fatal("success without a body")
		}
		if _, err := appendFrame(response{Version: Version, Body: body}); err != nil {
			t.Fatalf("response cannot be framed: %v", err)
		}
	})
}
