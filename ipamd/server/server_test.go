package server_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
)

func TestBadFrames(t *testing.T) {
	const limit = 1024
	tests := []struct {
		name       string
		raw        []byte
		closeWrite bool
		wantCode   api.Code // "" when the server closes without a response
		wantMsg    string
	}{
		{name: "zero length", raw: []byte{0, 0, 0, 0}, wantCode: api.CodeInvalidRequest, wantMsg: "empty message"},
		{name: "4 GiB announced", raw: []byte{0xff, 0xff, 0xff, 0xff, '{'},
			wantCode: api.CodeInvalidRequest, wantMsg: "message of 4294967295 bytes exceeds the limit of 1024 bytes"},
		{name: "one byte over the limit", raw: append(binary.BigEndian.AppendUint32(nil, limit+1), make([]byte, limit+1)...),
			wantCode: api.CodeInvalidRequest, wantMsg: "exceeds the limit"},
		{name: "http", raw: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), wantCode: api.CodeInvalidRequest, wantMsg: "exceeds the limit"},
		{name: "not json", raw: frame("\x00\x01garbage\xff"), wantCode: api.CodeInvalidRequest, wantMsg: "decode request"},
		{name: "json array", raw: frame(`[1,2,3]`), wantCode: api.CodeInvalidRequest, wantMsg: "decode request"},
		{name: "unknown op", raw: frame(`{"version":"1.0","op":"format-disk"}`),
			wantCode: api.CodeInvalidRequest, wantMsg: `unknown operation "format-disk"`},
		{name: "body of the wrong type", raw: frame(`{"version":"1.0","op":"allocate","body":{"containerID":5}}`),
			wantCode: api.CodeInvalidRequest, wantMsg: "decode allocate request"},
		{name: "body not an object", raw: frame(`{"version":"1.0","op":"release","body":"c1"}`),
			wantCode: api.CodeInvalidRequest, wantMsg: "decode release request"},
		{name: "truncated header", raw: []byte{0, 0}, closeWrite: true},
		{name: "truncated body", raw: []byte{0, 0, 0, 100, '{', '"'}, closeWrite: true},
		{name: "nothing", raw: nil, closeWrite: true},
	}
	h := &fakeHandler{}
	ts := startServer(t, h, server.WithMaxMessageSize(limit))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, ok := rawExchange(t, ts.path, tt.raw, tt.closeWrite)
			switch {
			case tt.wantCode == "" && ok:
				t.Errorf("got response %+v, want the connection closed", resp)
			case tt.wantCode != "" && !ok:
				t.Errorf("connection closed, want a %s response", tt.wantCode)
			case ok && (resp.Error == nil || resp.Error.Code != tt.wantCode || !strings.Contains(resp.Error.Message, tt.wantMsg)):
				t.Errorf("got %+v, want code %s containing %q", resp.Error, tt.wantCode, tt.wantMsg)
			}
			mustStatus(t, ts.client)
		})
	}
	if got := h.got(); len(got) != len(tests) {
		t.Errorf("the handler got %d calls, want only the %d status calls", len(got), len(tests))
	}
}

// TestAnnouncedSizeNotAllocated announces a large frame within the limit and
// sends almost nothing: the server must not allocate what was announced.
func TestAnnouncedSizeNotAllocated(t *testing.T) {
	const announced = 60 << 20
	ts := startServer(t, &fakeHandler{}, server.WithMaxMessageSize(64<<20))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 5 {
		raw := append(binary.BigEndian.AppendUint32(nil, announced), `{"version":`...)
		if resp, ok := rawExchange(t, ts.path, raw, true); ok {
			t.Fatalf("got response %+v to a truncated frame", resp)
		}
	}
	mustStatus(t, ts.client)
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > announced/2 {
		t.Errorf("5 frames announcing %d bytes made the process allocate %d bytes", announced, grew)
	}
}

func TestSlowClientTimesOut(t *testing.T) {
	ts := startServer(t, &fakeHandler{}, server.WithRequestTimeout(200*time.Millisecond))
	conn, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Announce 100 bytes, send 2, then stall.
	if _, err := conn.Write([]byte{0, 0, 0, 100, '{', '"'}); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	n, err := conn.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server did not close a stalled connection: %v", err)
	}
	if n != 0 {
		t.Errorf("got %d bytes from the server, want the connection closed", n)
	}
	mustStatus(t, ts.client)
}

func TestDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	handlerDone := make(chan error, 1)
	h := &fakeHandler{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return api.AllocateResponse{}, ctx.Err()
	}}
	ts := startServer(t, h)
	start := time.Now() // before the deadline is set: it is timeout after this or later
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := ts.client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want a deadline error", err)
	}
	if api.IsUnreachable(err) || api.IsTryAgain(err) {
		t.Errorf("a deadline error classified as unreachable or try again: %v", err)
	}
	if elapsed < timeout || elapsed > timeout+2*time.Second {
		t.Errorf("the call returned after %s, want about %s", elapsed, timeout)
	}
	select {
	case err := <-handlerDone:
		if err == nil {
			t.Error("handler context done without an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context was not cancelled")
	}
}

func TestDeadlinePropagation(t *testing.T) {
	tests := []struct {
		name          string
		clientTimeout time.Duration // 0: the context has no deadline
		clientDefault time.Duration
		serverCap     time.Duration
		want          time.Duration
	}{
		{name: "client deadline", clientTimeout: 5 * time.Second, serverCap: time.Minute, want: 5 * time.Second},
		{name: "capped by the server", clientTimeout: time.Hour, serverCap: 3 * time.Second, want: 3 * time.Second},
		{name: "client default", clientDefault: 7 * time.Second, serverCap: time.Minute, want: 7 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			remaining := make(chan time.Duration, 1)
			h := &fakeHandler{status: func(ctx context.Context, _ api.StatusRequest) (api.StatusResponse, error) {
				d, ok := ctx.Deadline()
				if !ok {
					return api.StatusResponse{}, errors.New("no deadline")
				}
				remaining <- time.Until(d)
				return readyStatus(), nil
			}}
			ts := startServer(t, h, server.WithMaxCallTimeout(tt.serverCap))
			ctx := context.Background()
			if tt.clientTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.clientTimeout)
				defer cancel()
			}
			c := api.NewClient(ts.path, api.WithDefaultTimeout(tt.clientDefault))
			if _, err := c.Status(ctx, api.StatusRequest{}); err != nil {
				t.Fatal(err)
			}
			got := <-remaining
			if got > tt.want+10*time.Millisecond || got < tt.want-time.Second {
				t.Errorf("handler deadline in %s, want about %s", got, tt.want)
			}
		})
	}
}

func TestClientCancelCancelsHandler(t *testing.T) {
	started := make(chan struct{})
	handlerDone := make(chan error, 1)
	h := &fakeHandler{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		close(started)
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return api.AllocateResponse{}, ctx.Err()
	}}
	ts := startServer(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		<-started
		cancel()
	}()
	_, err := ts.client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	select {
	case err := <-handlerDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler context ended with %v, want canceled (the client hung up)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context was not cancelled when the client hung up")
	}
}

func TestShutdownWaitsForInFlightCall(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	want := testAssignment("c1", "10.240.0.9")
	h := &fakeHandler{allocate: func(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
		close(started)
		<-release
		return api.AllocateResponse{Assignment: want}, nil
	}}
	ts := newTestServer(t, h)
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(context.Background()) }()

	type result struct {
		resp api.AllocateResponse
		err  error
	}
	call := make(chan result, 1)
	go func() {
		r, err := ts.client.Allocate(testCtx(t), api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
		call <- result{r, err}
	}()
	<-started

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- ts.srv.Shutdown(ctx)
	}()
	if err := <-served; !errors.Is(err, server.ErrClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	// Accepting has stopped, the in-flight call goes on.
	if _, err := ts.client.Status(testCtx(t), api.StatusRequest{}); !api.IsUnreachable(err) {
		t.Errorf("a new call during shutdown got %v, want unreachable", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v before the in-flight call finished", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	r := <-call
	if r.err != nil || r.resp.Assignment.IP != want.IP {
		t.Errorf("in-flight call got %+v, %v; want %s", r.resp, r.err, want.IP)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := os.Lstat(ts.path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Shutdown: %v", err)
	}
}

func TestShutdownDeadlineCancelsCalls(t *testing.T) {
	started := make(chan struct{})
	handlerDone := make(chan error, 1)
	h := &fakeHandler{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		close(started)
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return api.AllocateResponse{}, ctx.Err()
	}}
	ts := newTestServer(t, h)
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(context.Background()) }()
	call := make(chan error, 1)
	go func() {
		_, err := ts.client.Allocate(testCtx(t), api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
		call <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown returned %v, want a deadline error", err)
	}
	if err := <-handlerDone; !errors.Is(err, context.Canceled) {
		t.Errorf("handler context ended with %v, want canceled", err)
	}
	if err := <-call; err == nil {
		t.Error("the cancelled call succeeded")
	}
	if err := <-served; !errors.Is(err, server.ErrClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	if _, err := os.Lstat(ts.path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Shutdown: %v", err)
	}
}

func TestServeContextCancelled(t *testing.T) {
	started := make(chan struct{})
	handlerDone := make(chan error, 1)
	h := &fakeHandler{allocate: func(ctx context.Context, _ api.AllocateRequest) (api.AllocateResponse, error) {
		close(started)
		<-ctx.Done()
		handlerDone <- ctx.Err()
		return api.AllocateResponse{}, ctx.Err()
	}}
	ts := newTestServer(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(ctx) }()
	call := make(chan error, 1)
	go func() {
		_, err := ts.client.Allocate(testCtx(t), api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
		call <- err
	}()
	<-started
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Errorf("Serve returned %v, want context.Canceled", err)
	}
	if err := <-handlerDone; !errors.Is(err, context.Canceled) {
		t.Errorf("handler context ended with %v, want canceled", err)
	}
	if err := <-call; err == nil {
		t.Error("the cancelled call succeeded")
	}
	if _, err := os.Lstat(ts.path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Serve returned: %v", err)
	}
}

func TestSocketFileModes(t *testing.T) {
	tests := []struct {
		name     string
		existing os.FileMode // mode of an existing parent dir; 0: created by the server
		wantDir  os.FileMode
	}{
		{name: "parent created", wantDir: 0o700},
		{name: "parent exists", existing: 0o755, wantDir: 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run", "vnet-cni")
			if tt.existing != 0 {
				if err := os.MkdirAll(dir, tt.existing); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tt.existing); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, "ipamd.sock")
			srv, err := server.New(path, &fakeHandler{})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := srv.Shutdown(context.Background()); err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			}()

			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
				t.Errorf("socket mode %s, want a socket with 0600", fi.Mode())
			}
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() {
				t.Errorf("socket owned by uid %d, want %d", st.Uid, os.Geteuid())
			}
			di, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode().Perm() != tt.wantDir {
				t.Errorf("dir mode %s, want %s", di.Mode().Perm(), tt.wantDir)
			}
			// Nothing else is left in the directory (the temporary bind dir is gone).
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 {
				t.Errorf("dir holds %d entries, want only the socket", len(entries))
			}
		})
	}
}

func TestExistingSocketPath(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string)
		wantErr string // "" when NewServer must succeed
	}{
		{name: "stale socket is replaced", prepare: func(t *testing.T, path string) {
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
		}},
		{name: "live server is kept", wantErr: "another server is listening", prepare: func(t *testing.T, path string) {
			srv, err := server.New(path, &fakeHandler{}, server.WithAllowedUIDs(uint32(os.Geteuid())))
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(context.Background()) }()
			t.Cleanup(func() {
				// The first server still answers.
				if _, err := api.NewClient(path).Status(context.Background(), api.StatusRequest{}); err != nil {
					t.Errorf("the live server stopped answering: %v", err)
				}
				_ = srv.Shutdown(context.Background())
				if err := <-done; !errors.Is(err, server.ErrClosed) {
					t.Errorf("Serve returned %v", err)
				}
			})
		}},
		{name: "regular file is kept", wantErr: "exists and is not a socket", prepare: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if b, err := os.ReadFile(path); err != nil || string(b) != "keep" {
					t.Errorf("the file was changed: %q, %v", b, err)
				}
			})
		}},
		{name: "directory is kept", wantErr: "exists and is not a socket", prepare: func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ipamd.sock")
			tt.prepare(t, path)
			srv, err := server.New(path, &fakeHandler{}, server.WithAllowedUIDs(uint32(os.Geteuid())))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("NewServer: got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewServer: %v", err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(context.Background()) }()
			defer func() {
				_ = srv.Shutdown(context.Background())
				if err := <-done; !errors.Is(err, server.ErrClosed) {
					t.Errorf("Serve returned %v", err)
				}
			}()
			mustStatus(t, api.NewClient(path))
		})
	}
}

func TestPeerCredentialsRefused(t *testing.T) {
	other := uint32(os.Geteuid()) + 4242
	h := &fakeHandler{}
	ts := startServer(t, h, server.WithAllowedUIDs(other))
	_, err := ts.client.Status(testCtx(t), api.StatusRequest{})
	var e *api.Error
	if !errors.As(err, &e) || e.Code != api.CodePermissionDenied {
		t.Fatalf("got %v, want PermissionDenied", err)
	}
	if want := "uid " + strconv.Itoa(os.Geteuid()) + " is not allowed"; !strings.Contains(e.Message, want) {
		t.Errorf("message %q does not contain %q", e.Message, want)
	}
	if got := h.got(); len(got) != 0 {
		t.Errorf("the handler was called with %v", got)
	}
}

func TestDefaultAllowsOnlyRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the default allows uid 0 only")
	}
	path := filepath.Join(t.TempDir(), "ipamd.sock")
	srv, err := server.New(path, &fakeHandler{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	defer func() {
		_ = srv.Shutdown(context.Background())
		if err := <-done; !errors.Is(err, server.ErrClosed) {
			t.Errorf("Serve returned %v", err)
		}
	}()
	mustStatus(t, api.NewClient(path))
}

func TestUnreachable(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) string // returns the socket path
	}{
		{name: "no socket file", prepare: func(_ *testing.T, dir string) string {
			return filepath.Join(dir, "ipamd.sock")
		}},
		{name: "no directory", prepare: func(_ *testing.T, dir string) string {
			return filepath.Join(dir, "missing", "ipamd.sock")
		}},
		{name: "nothing listening", prepare: func(t *testing.T, dir string) string {
			path := filepath.Join(dir, "ipamd.sock")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
			return path
		}},
		{name: "regular file", prepare: func(t *testing.T, dir string) string {
			path := filepath.Join(dir, "ipamd.sock")
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return path
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.prepare(t, t.TempDir())
			_, err := api.NewClient(path).Allocate(testCtx(t), api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
			if !api.IsUnreachable(err) {
				t.Fatalf("got %v, want unreachable", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the socket %s", err, path)
			}
			if api.IsTryAgain(err) || api.CodeOf(err) != "" {
				t.Errorf("unreachable error carries code %q", api.CodeOf(err))
			}
		})
	}
}
