package server_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

func TestRoundTrip(t *testing.T) {
	allocReq := api.AllocateRequest{
		ContainerID: "0123abcd", IfName: "eth0", PodNamespace: "default", PodName: "pod-0123abcd",
		Netns: "/var/run/netns/cni-1234",
	}
	a1 := testAssignment("0123abcd", "10.240.0.17")
	a2 := testAssignment("ffee", "10.240.0.18")
	notReady := api.StatusResponse{Ready: false, Reason: "waiting for the first cloud sync", NodeName: "node-1"}

	tests := []struct {
		name    string
		h       *fakeHandler
		call    func(context.Context, *api.Client) (any, error)
		wantReq any
		want    any
	}{
		{
			name: "allocate",
			h: &fakeHandler{allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
				return api.AllocateResponse{Assignment: a1}, nil
			}},
			call:    func(ctx context.Context, c *api.Client) (any, error) { return c.Allocate(ctx, allocReq) },
			wantReq: allocReq,
			want:    api.AllocateResponse{Assignment: a1},
		},
		{
			name: "release known",
			h: &fakeHandler{release: func(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error) {
				return api.ReleaseResponse{Known: true, IP: a1.IP}, nil
			}},
			call: func(ctx context.Context, c *api.Client) (any, error) {
				return c.Release(ctx, api.ReleaseRequest{ContainerID: "0123abcd", IfName: "eth0"})
			},
			wantReq: api.ReleaseRequest{ContainerID: "0123abcd", IfName: "eth0"},
			want:    api.ReleaseResponse{Known: true, IP: a1.IP},
		},
		{
			name: "release unknown",
			h:    &fakeHandler{},
			call: func(ctx context.Context, c *api.Client) (any, error) {
				return c.Release(ctx, api.ReleaseRequest{ContainerID: "gone", IfName: "net1"})
			},
			wantReq: api.ReleaseRequest{ContainerID: "gone", IfName: "net1"},
			want:    api.ReleaseResponse{},
		},
		{
			name: "check known",
			h: &fakeHandler{check: func(context.Context, api.CheckRequest) (api.CheckResponse, error) {
				return api.CheckResponse{Assignment: &a1}, nil
			}},
			call: func(ctx context.Context, c *api.Client) (any, error) {
				return c.Check(ctx, api.CheckRequest{ContainerID: "0123abcd", IfName: "eth0"})
			},
			wantReq: api.CheckRequest{ContainerID: "0123abcd", IfName: "eth0"},
			want:    api.CheckResponse{Assignment: &a1},
		},
		{
			name: "check unknown",
			h:    &fakeHandler{},
			call: func(ctx context.Context, c *api.Client) (any, error) {
				return c.Check(ctx, api.CheckRequest{ContainerID: "gone", IfName: "eth0"})
			},
			wantReq: api.CheckRequest{ContainerID: "gone", IfName: "eth0"},
			want:    api.CheckResponse{},
		},
		{
			name: "gc",
			h: &fakeHandler{gc: func(context.Context, api.GCRequest) (api.GCResponse, error) {
				return api.GCResponse{Released: []api.Assignment{a1, a2}}, nil
			}},
			call: func(ctx context.Context, c *api.Client) (any, error) {
				return c.GC(ctx, api.GCRequest{Valid: []api.Attachment{{ContainerID: "keep1", IfName: "eth0"}, {ContainerID: "keep2", IfName: "net1"}}})
			},
			wantReq: api.GCRequest{Valid: []api.Attachment{{ContainerID: "keep1", IfName: "eth0"}, {ContainerID: "keep2", IfName: "net1"}}},
			want:    api.GCResponse{Released: []api.Assignment{a1, a2}},
		},
		{
			name: "gc with an empty valid list",
			h:    &fakeHandler{},
			call: func(ctx context.Context, c *api.Client) (any, error) {
				return c.GC(ctx, api.GCRequest{Valid: []api.Attachment{}})
			},
			wantReq: api.GCRequest{Valid: []api.Attachment{}},
			want:    api.GCResponse{},
		},
		{
			name:    "status ready",
			h:       &fakeHandler{},
			call:    func(ctx context.Context, c *api.Client) (any, error) { return c.Status(ctx, api.StatusRequest{}) },
			wantReq: api.StatusRequest{},
			want:    readyStatus(),
		},
		{
			name: "status not ready",
			h: &fakeHandler{status: func(context.Context, api.StatusRequest) (api.StatusResponse, error) {
				return notReady, nil
			}},
			call:    func(ctx context.Context, c *api.Client) (any, error) { return c.Status(ctx, api.StatusRequest{}) },
			wantReq: api.StatusRequest{},
			want:    notReady,
		},
		{
			name:    "list",
			h:       &fakeHandler{},
			call:    func(ctx context.Context, c *api.Client) (any, error) { return c.List(ctx, api.ListRequest{}) },
			wantReq: api.ListRequest{},
			want:    listResponse(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.h)
			got, err := tt.call(testCtx(t), ts.client)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]any{tt.wantReq}, tt.h.got(), cmpOpts); diff != "" {
				t.Errorf("requests seen by the handler (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHandlerErrors(t *testing.T) {
	tests := []struct {
		name        string
		handlerErr  error
		panics      bool
		wantCode    api.Code
		wantMessage string // substring
		tryAgain    bool
		notReady    bool
		notFound    bool
	}{
		{name: "try again", handlerErr: api.Errorf(api.CodeTryAgain, "no free address, refill in progress"),
			wantCode: api.CodeTryAgain, wantMessage: "no free address, refill in progress", tryAgain: true},
		{name: "wrapped not ready", handlerErr: fmt.Errorf("allocate: %w", api.Errorf(api.CodeNotReady, "no cloud sync yet")),
			wantCode: api.CodeNotReady, wantMessage: "no cloud sync yet", notReady: true},
		{name: "not found", handlerErr: api.Errorf(api.CodeNotFound, "no assignment for c1/eth0"),
			wantCode: api.CodeNotFound, wantMessage: "no assignment for c1/eth0", notFound: true},
		{name: "plain error", handlerErr: errors.New("store: disk full"),
			wantCode: api.CodeInternal, wantMessage: "store: disk full"},
		{name: "deadline", handlerErr: fmt.Errorf("wait for refill: %w", context.DeadlineExceeded),
			wantCode: api.CodeDeadlineExceeded, wantMessage: "wait for refill"},
		{name: "panic", panics: true, wantCode: api.CodeInternal, wantMessage: "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHandler{allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
				if tt.panics {
					panic("boom")
				}
				return api.AllocateResponse{}, tt.handlerErr
			}}
			ts := startServer(t, h)
			_, err := ts.client.Allocate(testCtx(t), api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
			var e *api.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *api.Error", err)
			}
			if e.Code != tt.wantCode || !strings.Contains(e.Message, tt.wantMessage) {
				t.Errorf("got code %s message %q, want code %s message containing %q", e.Code, e.Message, tt.wantCode, tt.wantMessage)
			}
			if got := api.IsTryAgain(err); got != tt.tryAgain {
				t.Errorf("IsTryAgain = %v, want %v", got, tt.tryAgain)
			}
			if got := api.IsNotReady(err); got != tt.notReady {
				t.Errorf("IsNotReady = %v, want %v", got, tt.notReady)
			}
			if got := api.IsNotFound(err); got != tt.notFound {
				t.Errorf("IsNotFound = %v, want %v", got, tt.notFound)
			}
			if api.IsUnreachable(err) {
				t.Errorf("IsUnreachable(%v) = true for an error from the daemon", err)
			}
			// The server survives a handler's panic.
			mustStatus(t, ts.client)
		})
	}
}

func TestInvalidRequests(t *testing.T) {
	tests := []struct {
		name        string
		call        func(context.Context, *api.Client) error
		wantMessage string
	}{
		{
			name: "empty container id",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.Allocate(ctx, api.AllocateRequest{IfName: "eth0"})
				return err
			},
			wantMessage: "empty container id",
		},
		{
			name: "container id with a slash",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.Release(ctx, api.ReleaseRequest{ContainerID: "../etc", IfName: "eth0"})
				return err
			},
			wantMessage: "invalid character",
		},
		{
			name: "empty interface name",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.Check(ctx, api.CheckRequest{ContainerID: "c1"})
				return err
			},
			wantMessage: "empty interface name",
		},
		{
			name: "interface name too long",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0123456789012"})
				return err
			},
			wantMessage: "longer than 15 bytes",
		},
		{
			name: "interface name with a colon",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0:1"})
				return err
			},
			wantMessage: "contains '/', ':' or white space",
		},
		{
			name: "gc without a valid list",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.GC(ctx, api.GCRequest{})
				return err
			},
			wantMessage: "without a list of valid attachments",
		},
		{
			name: "gc with a bad attachment",
			call: func(ctx context.Context, c *api.Client) error {
				_, err := c.GC(ctx, api.GCRequest{Valid: []api.Attachment{{ContainerID: "c1", IfName: "eth0"}, {ContainerID: "c2"}}})
				return err
			},
			wantMessage: "valid attachment 1: empty interface name",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHandler{}
			ts := startServer(t, h)
			err := tt.call(testCtx(t), ts.client)
			var e *api.Error
			if !errors.As(err, &e) || e.Code != api.CodeInvalidRequest || !strings.Contains(e.Message, tt.wantMessage) {
				t.Errorf("got %v, want InvalidRequest containing %q", err, tt.wantMessage)
			}
			if got := h.got(); len(got) != 0 {
				t.Errorf("the handler was called with %v", got)
			}
		})
	}
}

func TestRequestVersions(t *testing.T) {
	tests := []struct {
		name        string
		payload     string
		wantCode    api.Code // "" for success
		wantMessage []string
	}{
		{name: "current", payload: `{"version":"` + api.Version + `","op":"status","timeoutMs":5000,"body":{}}`},
		{name: "older minor (1.0, before interfaces)", payload: `{"version":"1.0","op":"status","timeoutMs":5000,"body":{}}`},
		{name: "newer minor with unknown fields",
			payload: `{"version":"1.7","op":"status","timeoutMs":5000,"trace":"abc","body":{"verbose":true}}`},
		{name: "newer minor without body", payload: `{"version":"1.12","op":"status"}`},
		{name: "newer major", payload: `{"version":"2.0","op":"status","body":{}}`,
			wantCode: api.CodeVersionMismatch, wantMessage: []string{"2.0", api.Version}},
		{name: "newer major with another envelope", payload: `{"version":"3.1","op":{"name":"status"}}`,
			wantCode: api.CodeVersionMismatch, wantMessage: []string{"3.1", api.Version}},
		{name: "older major", payload: `{"version":"0.9","op":"status"}`,
			wantCode: api.CodeVersionMismatch, wantMessage: []string{"0.9", api.Version}},
		{name: "no version", payload: `{"op":"status"}`,
			wantCode: api.CodeInvalidRequest, wantMessage: []string{"not major.minor"}},
		{name: "malformed version", payload: `{"version":"v1","op":"status"}`,
			wantCode: api.CodeInvalidRequest, wantMessage: []string{`"v1" is not major.minor`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHandler{}
			ts := startServer(t, h)
			resp, ok := rawExchange(t, ts.path, frame(tt.payload), false)
			if !ok {
				t.Fatal("no response")
			}
			if resp.Version != api.Version {
				t.Errorf("response version %q, want %q", resp.Version, api.Version)
			}
			if tt.wantCode == "" {
				if resp.Error != nil {
					t.Fatalf("error response %v", resp.Error)
				}
				var st api.StatusResponse
				if err := json.Unmarshal(resp.Body, &st); err != nil {
					t.Fatalf("decode body: %v", err)
				}
				if diff := cmp.Diff(readyStatus(), st, cmpOpts); diff != "" {
					t.Errorf("status (-want +got):\n%s", diff)
				}
				return
			}
			if resp.Error == nil || resp.Error.Code != tt.wantCode {
				t.Fatalf("got error %v, want code %s", resp.Error, tt.wantCode)
			}
			for _, s := range tt.wantMessage {
				if !strings.Contains(resp.Error.Message, s) {
					t.Errorf("message %q does not contain %q", resp.Error.Message, s)
				}
			}
			if got := h.got(); len(got) != 0 {
				t.Errorf("the handler was called with %v", got)
			}
		})
	}
}

// fakeServer answers every connection with reply after reading one frame;
// with an empty reply it closes the connection instead.
func fakeServer(t *testing.T, reply []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			var hdr [4]byte
			if _, err := io.ReadFull(conn, hdr[:]); err == nil {
				_, err = io.CopyN(io.Discard, conn, int64(binary.BigEndian.Uint32(hdr[:])))
				if err == nil && len(reply) > 0 {
					_, _ = conn.Write(reply)
				}
			}
			conn.Close()
		}
	})
	return path
}

func TestClientResponses(t *testing.T) {
	tests := []struct {
		name        string
		reply       []byte
		wantCode    api.Code // "" for none
		wantMessage string   // substring of err.Error(); "" for success
	}{
		{name: "newer minor with unknown fields",
			reply: frame(`{"version":"1.4","extra":1,"body":{"ready":true,"nodeName":"n","future":{"x":1}}}`)},
		{name: "older minor without the interface (a 1.0 daemon)",
			reply: frame(`{"version":"1.0","body":{"ready":true,"nodeName":"n","subnet":"10.240.0.0/16"}}`)},
		{name: "newer major",
			reply:    frame(`{"version":"2.0","body":{"ready":true}}`),
			wantCode: api.CodeVersionMismatch, wantMessage: "response of protocol version 2.0 is not supported: this client speaks " + api.Version},
		{name: "error of a newer major",
			reply:    frame(`{"version":"2.0","error":{"code":"TryAgain","message":"later"}}`),
			wantCode: api.CodeTryAgain, wantMessage: "later"},
		{name: "unknown code survives",
			reply:    frame(`{"version":"1.1","error":{"code":"QuotaExceeded","message":"too many"}}`),
			wantCode: "QuotaExceeded", wantMessage: "too many"},
		{name: "garbage", reply: frame(`not json`), wantMessage: "decode response"},
		{name: "no body", reply: frame(`{"version":"1.0"}`), wantMessage: "response without a body"},
		{name: "oversized", reply: []byte{0xff, 0xff, 0xff, 0xff, '{'}, wantMessage: "exceeds the limit"},
		{name: "closed without a response", wantMessage: "connection closed before a response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fakeServer(t, tt.reply)
			st, err := api.NewClient(path).Status(testCtx(t), api.StatusRequest{})
			if tt.wantMessage == "" {
				if err != nil {
					t.Fatalf("Status: %v", err)
				}
				if !st.Ready || st.NodeName != "n" {
					t.Errorf("status %+v, want ready on node n", st)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantMessage) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantMessage)
			}
			if got := api.CodeOf(err); got != tt.wantCode {
				t.Errorf("code %q, want %q", got, tt.wantCode)
			}
			if api.IsUnreachable(err) {
				t.Errorf("IsUnreachable(%v) = true, but the daemon was reached", err)
			}
		})
	}
}

func TestConcurrentClients(t *testing.T) {
	const clients = 100
	// A stateful fake: distinct addresses, idempotent per attachment.
	var (
		mu       sync.Mutex
		next     = netip.MustParseAddr("10.240.1.0")
		assigned = map[api.Attachment]api.Assignment{}
	)
	h := &fakeHandler{
		allocate: func(_ context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			key := api.Attachment{ContainerID: req.ContainerID, IfName: req.IfName}
			if a, ok := assigned[key]; ok {
				return api.AllocateResponse{Assignment: a}, nil
			}
			next = next.Next()
			a := api.Assignment{ContainerID: req.ContainerID, IfName: req.IfName, IP: next, Subnet: testSubnet, Gateway: testGateway, MTU: 1500}
			assigned[key] = a
			return api.AllocateResponse{Assignment: a}, nil
		},
		check: func(_ context.Context, req api.CheckRequest) (api.CheckResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			if a, ok := assigned[api.Attachment(req)]; ok {
				return api.CheckResponse{Assignment: &a}, nil
			}
			return api.CheckResponse{}, nil
		},
		release: func(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
			mu.Lock()
			defer mu.Unlock()
			key := api.Attachment{ContainerID: req.ContainerID, IfName: req.IfName}
			a, ok := assigned[key]
			delete(assigned, key)
			return api.ReleaseResponse{Known: ok, IP: a.IP}, nil
		},
	}
	ts := startServer(t, h)
	ctx := testCtx(t)

	start := make(chan struct{})
	ips := make([]netip.Addr, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			<-start
			errs[i] = func() error {
				c := api.NewClient(ts.path) // a client per goroutine, as a plugin process has
				id := fmt.Sprintf("c%03d", i)
				got, err := c.Allocate(ctx, api.AllocateRequest{ContainerID: id, IfName: "eth0"})
				if err != nil {
					return err
				}
				chk, err := c.Check(ctx, api.CheckRequest{ContainerID: id, IfName: "eth0"})
				if err != nil {
					return err
				}
				if chk.Assignment == nil || chk.Assignment.IP != got.Assignment.IP {
					return fmt.Errorf("check %s: got %v, want %s", id, chk.Assignment, got.Assignment.IP)
				}
				if _, err := c.Status(ctx, api.StatusRequest{}); err != nil {
					return err
				}
				ips[i] = got.Assignment.IP
				rel, err := c.Release(ctx, api.ReleaseRequest{ContainerID: id, IfName: "eth0"})
				if err != nil {
					return err
				}
				if !rel.Known || rel.IP != got.Assignment.IP {
					return fmt.Errorf("release %s: got %+v, want known %s", id, rel, got.Assignment.IP)
				}
				return nil
			}()
		})
	}
	close(start)
	wg.Wait()

	seen := map[netip.Addr]int{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
			continue
		}
		if j, dup := seen[ips[i]]; dup {
			t.Errorf("clients %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	if got, want := len(h.got()), 4*clients; got != want {
		t.Errorf("handler saw %d calls, want %d", got, want)
	}
}
