package server_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
)

// cmpOpts compares netip values, which have unexported fields.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

var (
	testSubnet  = netip.MustParsePrefix("10.240.0.0/16")
	testGateway = netip.MustParseAddr("10.240.0.1")
)

func testAssignment(containerID, ip string) api.Assignment {
	return api.Assignment{
		ContainerID:  containerID,
		IfName:       "eth0",
		PodNamespace: "default",
		PodName:      "pod-" + containerID,
		IP:           netip.MustParseAddr(ip),
		Interface:    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/node-1-nic",
		Subnet:       testSubnet,
		Gateway:      testGateway,
		MTU:          1500,
	}
}

func readyStatus() api.StatusResponse {
	return api.StatusResponse{
		Ready:     true,
		NodeName:  "node-1",
		Pool:      api.PoolCounts{Free: 10, Assigned: 3, Cooling: 1, Releasing: 0, Total: 14, Max: 31},
		VNetCIDRs: []netip.Prefix{netip.MustParsePrefix("10.240.0.0/12"), netip.MustParsePrefix("fd00::/48")},
		Subnet:    testSubnet,
		Gateway:   testGateway,
		PrimaryIP: netip.MustParseAddr("10.240.0.4"),
		MTU:       1500,
	}
}

// fakeHandler records the requests it gets and answers with its functions,
// or with zero responses where a function is nil.
type fakeHandler struct {
	allocate func(context.Context, api.AllocateRequest) (api.AllocateResponse, error)
	release  func(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error)
	check    func(context.Context, api.CheckRequest) (api.CheckResponse, error)
	gc       func(context.Context, api.GCRequest) (api.GCResponse, error)
	status   func(context.Context, api.StatusRequest) (api.StatusResponse, error)

	mu       sync.Mutex
	requests []any
}

var _ server.Handler = (*fakeHandler)(nil)

func (f *fakeHandler) record(req any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
}

// got returns a copy of the requests received.
func (f *fakeHandler) got() []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]any(nil), f.requests...)
}

func (f *fakeHandler) Allocate(ctx context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
	f.record(req)
	if f.allocate == nil {
		return api.AllocateResponse{}, nil
	}
	return f.allocate(ctx, req)
}

func (f *fakeHandler) Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	f.record(req)
	if f.release == nil {
		return api.ReleaseResponse{}, nil
	}
	return f.release(ctx, req)
}

func (f *fakeHandler) Check(ctx context.Context, req api.CheckRequest) (api.CheckResponse, error) {
	f.record(req)
	if f.check == nil {
		return api.CheckResponse{}, nil
	}
	return f.check(ctx, req)
}

func (f *fakeHandler) GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error) {
	f.record(req)
	if f.gc == nil {
		return api.GCResponse{}, nil
	}
	return f.gc(ctx, req)
}

func (f *fakeHandler) Status(ctx context.Context, req api.StatusRequest) (api.StatusResponse, error) {
	f.record(req)
	if f.status == nil {
		return readyStatus(), nil
	}
	return f.status(ctx, req)
}

func (f *fakeHandler) List(_ context.Context, req api.ListRequest) (api.ListResponse, error) {
	f.record(req)
	return listResponse(), nil
}

func listResponse() api.ListResponse {
	return api.ListResponse{Addresses: []api.AddressRecord{
		{IP: netip.MustParseAddr("10.240.0.7"), State: "assigned", ContainerID: "c1", IfName: "eth0", PodNamespace: "default", PodName: "web", Since: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
		{IP: netip.MustParseAddr("10.240.0.8"), State: "free", Since: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)},
	}}
}

// testServer is a served server.Server.
type testServer struct {
	srv    *server.Server
	path   string
	client *api.Client
	served chan error // Serve's result
}

// newTestServer creates a server on a socket under t.TempDir() that serves
// the current uid (so that the tests also run without root).
func newTestServer(t testing.TB, h server.Handler, opts ...server.Option) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ipamd.sock")
	opts = append([]server.Option{server.WithAllowedUIDs(uint32(os.Geteuid()))}, opts...)
	srv, err := server.New(path, h, opts...)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return &testServer{srv: srv, path: path, client: api.NewClient(path), served: make(chan error, 1)}
}

// startServer is newTestServer plus Serve, with Shutdown at cleanup.
func startServer(t testing.TB, h server.Handler, opts ...server.Option) *testServer {
	t.Helper()
	ts := newTestServer(t, h, opts...)
	go func() { ts.served <- ts.srv.Serve(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-ts.served; !errors.Is(err, server.ErrClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

// testCtx returns a context with a deadline that ends with the test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wireResponse is the response envelope as a test sees it on the wire.
type wireResponse struct {
	Version string          `json:"version"`
	Error   *api.Error      `json:"error"`
	Body    json.RawMessage `json:"body"`
}

// frame returns payload with its length prefix.
func frame(payload string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	return append(b, payload...)
}

// rawExchange writes raw bytes to the socket (half-closing the connection
// if closeWrite) and returns the decoded response, or ok false when the
// server closed the connection without one.
func rawExchange(t *testing.T, path string, raw []byte, closeWrite bool) (resp wireResponse, ok bool) {
	t.Helper()
	conn, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	if closeWrite {
		if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
			t.Fatalf("close write: %v", err)
		}
	}
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return wireResponse{}, false
		}
		t.Fatalf("read response header: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(conn, body); err != nil {
		t.Fatalf("read response body: %v", err)
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatalf("decode response %q: %v", body, err)
	}
	return resp, true
}

// mustStatus fails the test unless a status call succeeds.
func mustStatus(t *testing.T, c *api.Client) {
	t.Helper()
	if _, err := c.Status(testCtx(t), api.StatusRequest{}); err != nil {
		t.Fatalf("status after the bad input: %v", err)
	}
}
