package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
	"github.com/vnet-cni/vnet-cni/ipamd/server"
)

// dialIdle opens n connections to the socket and sends nothing on them; they
// are closed at the end of the test.
func dialIdle(t *testing.T, path string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for i := range n {
		c, err := net.DialTimeout("unix", path, 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// TestIdleFlood: 300 connections that connect and send nothing must not
// delay a status or an allocate call with a 2 s deadline, with the server's
// default options (the flood stays under the bound and is cut off at the
// request deadline) and with a bound below the flood (the oldest idle
// connections are shed for the callers).
func TestIdleFlood(t *testing.T) {
	const idle = 300
	for _, tt := range []struct {
		name string
		opts []server.Option
	}{
		{name: "default options"},
		{name: "bound of 256", opts: []server.Option{server.WithMaxConns(256)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, &fakeHandler{}, tt.opts...)
			dialIdle(t, ts.path, idle)
			// Let the server accept what it will of the flood.
			time.Sleep(100 * time.Millisecond)

			for _, op := range []string{"status", "allocate"} {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				start := time.Now()
				var err error
				if op == "status" {
					_, err = ts.client.Status(ctx, api.StatusRequest{})
				} else {
					_, err = ts.client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
				}
				took := time.Since(start)
				cancel()
				if err != nil {
					t.Fatalf("%s behind %d idle connections: %v after %s", op, idle, err, took)
				}
				t.Logf("%s behind %d idle connections answered in %s", op, idle, took)
			}
		})
	}
}

// readAnswer reads what the server sends on conn until it closes it, and
// returns the decoded answer (ok false if the server sent none).
func readAnswer(conn net.Conn) (resp wireResponse, ok bool, err error) {
	data, err := io.ReadAll(conn)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	if len(data) == 0 {
		return wireResponse{}, false, err
	}
	payload, ferr := api.ReadFrame(bytes.NewReader(data), 1<<20)
	if ferr != nil {
		return wireResponse{}, false, fmt.Errorf("answer %q: %w", data, ferr)
	}
	if jerr := json.Unmarshal(payload, &resp); jerr != nil {
		return wireResponse{}, false, fmt.Errorf("answer %q: %w", payload, jerr)
	}
	return resp, true, err
}

// TestSlowLoris: 300 clients each trickle one byte of a request every
// 100 ms (a whole request would take 5 s). Status calls made meanwhile answer
// within their 2 s deadline; every slow client is disconnected by the
// request deadline (2 s from accept, by default), without an answer, or
// earlier with TryAgain if it was shed to make room.
func TestSlowLoris(t *testing.T) {
	const (
		slow           = 300
		requestTimeout = 2 * time.Second // the default
	)
	ts := startServer(t, &fakeHandler{})
	req := frame(`{"version":"1.0","op":"status","timeoutMS":1000,"body":{}}`)

	type outcome struct {
		after  time.Duration // from dial to the server closing the connection
		answer *api.Error    // the server's answer, if any
		err    error
	}
	outcomes := make([]outcome, slow)
	var wg sync.WaitGroup
	for i := range slow {
		// Taken before the dial: the server's deadline runs from its
		// accept, which may come before Dial returns here.
		dialed := time.Now()
		conn, err := net.DialTimeout("unix", ts.path, 5*time.Second)
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		stop := make(chan struct{})
		wg.Go(func() { // the trickle
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for _, b := range req {
				if _, err := conn.Write([]byte{b}); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-stop:
					return
				}
			}
		})
		wg.Go(func() {
			defer close(stop)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, ok, err := readAnswer(conn)
			outcomes[i] = outcome{after: time.Since(dialed), err: err}
			if ok {
				outcomes[i].answer = resp.Error
			}
		})
	}

	var worst time.Duration
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		_, err := ts.client.Status(ctx, api.StatusRequest{})
		took := time.Since(start)
		cancel()
		if err != nil {
			t.Fatalf("status among %d slow clients: %v after %s", slow, err, took)
		}
		worst = max(worst, took)
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("10 status calls among %d slow clients: slowest answered in %s", slow, worst)

	wg.Wait()
	var timedOut, shed int
	var last time.Duration
	for i, o := range outcomes {
		switch {
		case o.err != nil:
			t.Errorf("slow client %d: %v", i, o.err)
		case o.answer == nil:
			timedOut++
			if o.after < requestTimeout || o.after > requestTimeout+time.Second {
				t.Errorf("slow client %d: closed %s after connecting, want %s to %s", i, o.after, requestTimeout, requestTimeout+time.Second)
			}
		case o.answer.Code == api.CodeTryAgain:
			shed++
			if o.after > requestTimeout+time.Second {
				t.Errorf("slow client %d: shed %s after connecting", i, o.after)
			}
		default:
			t.Errorf("slow client %d: answered %v, want TryAgain or nothing", i, o.answer)
		}
		last = max(last, o.after)
	}
	t.Logf("%d slow clients cut off at the request deadline, %d shed with TryAgain; the last closed %s after connecting", timedOut, shed, last)
	if timedOut < slow/2 {
		t.Errorf("only %d slow clients ran into the request deadline", timedOut)
	}
}

// TestIdleConnectionClosed: a connection that sends nothing is closed at
// the default request deadline (2 s), without an answer; a connection that
// got its response is closed at once (one call per connection: there is no
// idle time between requests).
func TestIdleConnectionClosed(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	t.Run("silent", func(t *testing.T) {
		conn := dialIdle(t, ts.path, 1)[0]
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		resp, ok, err := readAnswer(conn)
		took := time.Since(start)
		if err != nil || ok {
			t.Fatalf("silent connection: answer %+v (%v), err %v; want closed without an answer", resp, ok, err)
		}
		if took < 2*time.Second-50*time.Millisecond || took > 3*time.Second {
			t.Errorf("silent connection closed after %s, want 2 s", took)
		}
		t.Logf("silent connection closed after %s", took)
	})
	t.Run("after the response", func(t *testing.T) {
		conn := dialIdle(t, ts.path, 1)[0]
		if _, err := conn.Write(frame(`{"version":"1.0","op":"status","body":{}}`)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		payload, err := api.ReadFrame(conn, 1<<20)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		var resp wireResponse
		if err := json.Unmarshal(payload, &resp); err != nil || resp.Error != nil {
			t.Fatalf("response %s: %v", payload, err)
		}
		start := time.Now()
		var b [1]byte
		n, err := conn.Read(b[:])
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("after the response: read %d bytes, %v; want EOF", n, err)
		}
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Errorf("connection closed %s after the response, want at once", took)
		}
	})
}

// blockedStatus is a handler whose status calls block until release is
// closed; entered gets one value per call that entered.
func blockedStatus() (h *fakeHandler, entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 100), make(chan struct{})
	h = &fakeHandler{status: func(ctx context.Context, _ api.StatusRequest) (api.StatusResponse, error) {
		entered <- struct{}{}
		select {
		case <-release:
			return readyStatus(), nil
		case <-ctx.Done():
			return api.StatusResponse{}, ctx.Err()
		}
	}}
	return h, entered, release
}

// TestConnectionBound: at the bound, the oldest connection that has not sent
// its request is shed (answered TryAgain) for a new one; when every
// connection is in a call, a new client is answered TryAgain at once, the
// code the plugin maps to CNI error 11, instead of waiting.
func TestConnectionBound(t *testing.T) {
	const bound = 4
	t.Run("shed the oldest waiting", func(t *testing.T) {
		ts := startServer(t, &fakeHandler{}, server.WithMaxConns(bound))
		idle := dialIdle(t, ts.path, bound)
		time.Sleep(50 * time.Millisecond) // accepted
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := ts.client.Status(ctx, api.StatusRequest{})
		cancel()
		if err != nil {
			t.Fatalf("status with %d waiting connections at the bound: %v", bound, err)
		}
		// The oldest was shed, with an answer; the others are still open.
		for i, conn := range idle {
			_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			resp, ok, err := readAnswer(conn)
			shed := i == 0
			switch {
			case shed && (!ok || resp.Error == nil || resp.Error.Code != api.CodeTryAgain || !strings.Contains(resp.Error.Message, "busy")):
				t.Errorf("idle connection %d: answer %+v (%v), %v; want TryAgain busy", i, resp.Error, ok, err)
			case !shed && (ok || !errors.Is(err, os.ErrDeadlineExceeded)):
				t.Errorf("idle connection %d: answer %+v (%v), %v; want it still open", i, resp.Error, ok, err)
			}
		}
	})
	t.Run("all in calls", func(t *testing.T) {
		h, entered, release := blockedStatus()
		ts := startServer(t, h, server.WithMaxConns(bound))
		var wg sync.WaitGroup
		defer wg.Wait()
		defer close(release)
		for range bound {
			wg.Go(func() {
				if _, err := ts.client.Status(testCtx(t), api.StatusRequest{}); err != nil {
					t.Errorf("blocked status: %v", err)
				}
			})
		}
		for range bound {
			<-entered
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err := ts.client.Allocate(ctx, api.AllocateRequest{ContainerID: "c1", IfName: "eth0"})
		took := time.Since(start)
		if !api.IsTryAgain(err) || !strings.Contains(err.Error(), "busy") {
			t.Fatalf("allocate with %d calls in flight at the bound: %v after %s; want TryAgain busy", bound, err, took)
		}
		if took > 500*time.Millisecond {
			t.Errorf("refused after %s, want at once", took)
		}
		t.Logf("refused in %s: %v", took, err)
	})
}

// helperSocketEnv names the socket TestHelperStatus calls, in a copy of the
// test binary run as another uid by TestBoundChecksPeerFirst.
const helperSocketEnv = "VNET_SERVER_TEST_HELPER_SOCKET"

// TestHelperStatus is not a test: it is the client of another uid that
// TestBoundChecksPeerFirst runs. It prints the code of its status call's error.
func TestHelperStatus(t *testing.T) {
	path := os.Getenv(helperSocketEnv)
	if path == "" {
		t.Skip("helper of TestBoundChecksPeerFirst")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := api.NewClient(path).Status(ctx, api.StatusRequest{})
	fmt.Printf("code=%s err=%v\n", api.CodeOf(err), err)
}

// TestBoundChecksPeerFirst: a client of a uid that is not allowed is
// answered PermissionDenied, never TryAgain, by the paths of the connection
// bound: when it arrives with every connection in a call (refused on the
// accept loop), and when it takes the place of a waiting connection.
func TestBoundChecksPeerFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as uid 65534")
	}
	const nobody = 65534
	// A directory, a socket and a copy of this binary that nobody can reach.
	dir, err := os.MkdirTemp("", "vnet-server-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(dir, "helper.test")
	if err := os.WriteFile(helper, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	runHelper := func(t *testing.T, path string) string {
		t.Helper()
		cmd := exec.Command(helper, "-test.run=^TestHelperStatus$", "-test.v")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), helperSocketEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return string(out)
	}
	serve := func(t *testing.T, name string, h server.Handler) *testServer {
		t.Helper()
		path := filepath.Join(dir, name+".sock")
		srv, err := server.New(path, h, server.WithAllowedUIDs(0), server.WithMaxConns(1))
		if err != nil {
			t.Fatal(err)
		}
		// Loosened, so that only the daemon's check stands in the way.
		if err := os.Chmod(path, 0o666); err != nil {
			t.Fatal(err)
		}
		ts := &testServer{srv: srv, path: path, client: api.NewClient(path), served: make(chan error, 1)}
		go func() { ts.served <- srv.Serve(context.Background()) }()
		t.Cleanup(func() {
			_ = srv.Shutdown(context.Background())
			if err := <-ts.served; !errors.Is(err, server.ErrClosed) {
				t.Errorf("Serve returned %v", err)
			}
		})
		return ts
	}
	want := "code=" + string(api.CodePermissionDenied) + " "

	t.Run("refused with every connection in a call", func(t *testing.T) {
		h, entered, release := blockedStatus()
		ts := serve(t, "busy", h)
		done := make(chan error, 1)
		go func() {
			_, err := ts.client.Status(testCtx(t), api.StatusRequest{})
			done <- err
		}()
		<-entered
		out := runHelper(t, ts.path)
		close(release)
		if err := <-done; err != nil {
			t.Errorf("blocked status: %v", err)
		}
		if !strings.Contains(out, want) || !strings.Contains(out, "uid 65534 is not allowed") {
			t.Fatalf("uid %d at the bound got\n%s\nwant %s", nobody, out, want)
		}
	})
	t.Run("taking a waiting connection's place", func(t *testing.T) {
		ts := serve(t, "waiting", &fakeHandler{})
		dialIdle(t, ts.path, 1)
		time.Sleep(50 * time.Millisecond) // accepted
		if out := runHelper(t, ts.path); !strings.Contains(out, want) || !strings.Contains(out, "uid 65534 is not allowed") {
			t.Fatalf("uid %d at the bound got\n%s\nwant %s", nobody, out, want)
		}
	})
}
