// Package server serves the vnet-ipamd socket protocol of package api on a
// unix socket: it creates the socket safely (mode 0600, never replacing a
// live one), checks the peer's uid, applies the client's deadline, decodes
// and validates each request and calls a Handler (the daemon). Only the
// daemon links it; the plugin needs api's Client alone.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// Handler is what the server calls: the daemon. Every request has passed
// validation (non-empty, well-formed container id and interface name) before
// a method is called. The context carries the client's deadline (capped by
// WithMaxCallTimeout) and is cancelled when the client hangs up or the server
// stops; methods must return soon after it is done. A method chooses the code
// of its error by returning an *api.Error (wrapped or not); any other error
// reaches the client as api.CodeInternal, a context error as api.CodeDeadlineExceeded
// or api.CodeTryAgain (cancelled).
type Handler interface {
	// Allocate returns the attachment's address, the same one on every call
	// for the same attachment. With an empty pool it waits a bounded time,
	// then returns api.CodeTryAgain.
	Allocate(ctx context.Context, req api.AllocateRequest) (api.AllocateResponse, error)
	// Release releases the attachment's address; unknown attachments are not
	// an error.
	Release(ctx context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error)
	// Check returns the attachment's assignment, if any.
	Check(ctx context.Context, req api.CheckRequest) (api.CheckResponse, error)
	// GC releases every assignment whose attachment is not in req.Valid.
	GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error)
	// Status reports readiness, the pool and the node's network.
	Status(ctx context.Context, req api.StatusRequest) (api.StatusResponse, error)
	// List returns every address the daemon holds (for `vnet-ipamd status`).
	List(ctx context.Context, req api.ListRequest) (api.ListResponse, error)
}

// ErrClosed is returned by Serve after Shutdown.
var ErrClosed = errors.New("rpc server closed")

// errClientGone is the cause of a call's cancellation when its client hangs up.
var errClientGone = errors.New("client hung up")

// errServerStopping is the cause of a call's cancellation when the server stops.
var errServerStopping = errors.New("server stopping")

const (
	defaultMaxMessageSize = 1 << 20
	defaultMaxCallTimeout = time.Minute
	defaultIOTimeout      = 5 * time.Second
	defaultMaxConns       = 256
	staleProbeTimeout     = 250 * time.Millisecond
	maxUnixPathLen        = 107 // sizeof(sun_path) - 1
)

type serverConfig struct {
	allowedUIDs    []uint32
	maxMessageSize int
	maxCallTimeout time.Duration
	ioTimeout      time.Duration
	maxConns       int
	logger         *slog.Logger
}

// Option configures a Server.
type Option func(*serverConfig)

// WithAllowedUIDs sets the uids whose connections are served (default: 0).
func WithAllowedUIDs(uids ...uint32) Option {
	return func(c *serverConfig) { c.allowedUIDs = slices.Clone(uids) }
}

// WithMaxMessageSize sets the largest request accepted, in bytes (default 1 MiB).
func WithMaxMessageSize(n int) Option {
	return func(c *serverConfig) { c.maxMessageSize = n }
}

// WithMaxCallTimeout caps the deadline of a call, and is the deadline of a
// call whose client sent none (default 1 minute).
func WithMaxCallTimeout(d time.Duration) Option {
	return func(c *serverConfig) { c.maxCallTimeout = d }
}

// WithIOTimeout bounds reading a request after accepting its connection, and
// writing the response (default 5 s).
func WithIOTimeout(d time.Duration) Option {
	return func(c *serverConfig) { c.ioTimeout = d }
}

// WithMaxConns bounds the connections served at once; further clients wait
// in the listen backlog (default 256).
func WithMaxConns(n int) Option {
	return func(c *serverConfig) { c.maxConns = n }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(c *serverConfig) { c.logger = l }
}

// Server serves the protocol on a unix socket.
type Server struct {
	path   string
	h      Handler
	cfg    serverConfig
	ln     *net.UnixListener
	sockFI os.FileInfo // the socket file we created, to remove only that one

	removeOnce sync.Once
	closeOnce  sync.Once
	closed     chan struct{} // closed by Shutdown
	inflight   sync.WaitGroup

	mu          sync.Mutex
	serving     bool
	closing     bool // no more connections are tracked
	conns       map[*net.UnixConn]struct{}
	cancelCalls context.CancelCauseFunc // set by Serve
}

// New creates the socket at path (api.DefaultSocketPath if empty) and
// returns a server that serves it once Serve is called. It creates the parent
// directory with mode 0700 if needed, removes a stale socket file that nothing
// answers on, refuses to replace a live one or a file that is not a socket,
// and makes the socket mode 0600 before it appears at path.
func New(path string, h Handler, opts ...Option) (*Server, error) {
	if path == "" {
		path = api.DefaultSocketPath
	}
	if h == nil {
		return nil, errors.New("new rpc server: nil handler")
	}
	cfg := serverConfig{
		allowedUIDs:    []uint32{0},
		maxMessageSize: defaultMaxMessageSize,
		maxCallTimeout: defaultMaxCallTimeout,
		ioTimeout:      defaultIOTimeout,
		maxConns:       defaultMaxConns,
		logger:         slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.maxMessageSize <= 0:
		return nil, fmt.Errorf("new rpc server: max message size %d must be positive", cfg.maxMessageSize)
	case cfg.maxCallTimeout <= 0:
		return nil, fmt.Errorf("new rpc server: max call timeout %s must be positive", cfg.maxCallTimeout)
	case cfg.ioTimeout <= 0:
		return nil, fmt.Errorf("new rpc server: io timeout %s must be positive", cfg.ioTimeout)
	case cfg.maxConns <= 0:
		return nil, fmt.Errorf("new rpc server: max conns %d must be positive", cfg.maxConns)
	case cfg.logger == nil:
		return nil, errors.New("new rpc server: nil logger")
	}
	ln, fi, err := listen(path)
	if err != nil {
		return nil, fmt.Errorf("new rpc server: %w", err)
	}
	return &Server{
		path:   path,
		h:      h,
		cfg:    cfg,
		ln:     ln,
		sockFI: fi,
		closed: make(chan struct{}),
		conns:  make(map[*net.UnixConn]struct{}),
	}, nil
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.path }

// listen creates the socket at path. It binds in a fresh private directory,
// sets the mode, then hard-links the socket into place: the socket is never
// visible at path with another mode, and an existing file is never replaced.
func listen(path string) (*net.UnixListener, os.FileInfo, error) {
	if len(path) > maxUnixPathLen {
		return nil, nil, fmt.Errorf("socket path %s longer than %d bytes", path, maxUnixPathLen)
	}
	dir := filepath.Dir(path)
	if err := ensureDir(dir); err != nil {
		return nil, nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, nil, err
	}
	tmpDir, err := os.MkdirTemp(dir, ".rpc")
	if err != nil {
		return nil, nil, fmt.Errorf("create temporary socket dir: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) > maxUnixPathLen {
		return nil, nil, fmt.Errorf("socket path %s too long for the temporary socket %s (at most %d bytes)", path, tmp, maxUnixPathLen)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("chmod socket: %w", err), ln.Close())
	}
	if err := os.Link(tmp, path); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("create socket %s: %w", path, err), ln.Close())
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("stat socket: %w", err), ln.Close())
	}
	return ln, fi, nil
}

// ensureDir creates dir with mode 0700 if it does not exist; an existing
// directory is left as it is.
func ensureDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("socket dir %s is not a directory", dir)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("socket dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	// MkdirAll is subject to the umask; make the mode exact.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	return nil
}

// removeStale removes a socket file at path that nothing answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("%s: another server is listening", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// Serve accepts and serves connections until Shutdown is called, then
// returns ErrClosed, or until ctx is done: then it stops at once,
// cancels the calls in flight, waits for their handlers, removes the socket
// and returns ctx's error. The contexts of calls derive from ctx.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("rpc server: serve called twice")
	}
	if s.closing {
		s.mu.Unlock()
		return ErrClosed
	}
	s.serving = true
	callCtx, cancel := context.WithCancelCause(ctx)
	s.cancelCalls = cancel
	s.mu.Unlock()
	// cancel is called by stop or Shutdown: returning after Shutdown began
	// must not cancel the calls in flight.

	stopAccept := context.AfterFunc(ctx, func() { _ = s.ln.Close() })
	defer stopAccept()

	s.cfg.logger.Info("rpc server listening", "path", s.path, "version", api.Version)
	sem := make(chan struct{}, s.cfg.maxConns)
	var backoff time.Duration
	for {
		select {
		case sem <- struct{}{}:
		case <-s.closed:
			return ErrClosed
		case <-ctx.Done():
			return s.stop(ctx)
		}
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			<-sem
			select {
			case <-s.closed:
				return ErrClosed
			case <-ctx.Done():
				return s.stop(ctx)
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return ErrClosed
			}
			// Out of file descriptors and the like: wait and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.cfg.logger.Warn("rpc accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.closed:
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		if !s.track(conn) {
			_ = conn.Close()
			<-sem
			continue
		}
		go func() {
			defer func() {
				s.untrack(conn)
				<-sem
			}()
			s.serveConn(callCtx, conn)
		}()
	}
}

// stop ends Serve when its context is done.
func (s *Server) stop(ctx context.Context) error {
	s.beginClose()
	s.mu.Lock()
	cancel := s.cancelCalls
	s.mu.Unlock()
	cancel(errServerStopping)
	s.closeConns()
	s.inflight.Wait()
	s.removeSocket()
	return ctx.Err()
}

// Shutdown stops accepting, waits for the calls in flight to finish or for
// ctx to be done (then cancels them and closes their connections), and
// removes the socket. It returns ctx's error if the calls did not finish.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginClose()
	done := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("rpc server shutdown: %w", ctx.Err())
		s.closeConns()
	}
	s.mu.Lock()
	cancel := s.cancelCalls
	s.mu.Unlock()
	if cancel != nil {
		cancel(errServerStopping)
	}
	s.removeSocket()
	return err
}

// beginClose stops accepting: no connection is tracked after it returns.
func (s *Server) beginClose() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.cfg.logger.Warn("rpc close listener", "err", err)
		}
		close(s.closed)
	})
}

// track registers a new connection; it returns false once closing.
func (s *Server) track(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	s.inflight.Add(1)
	return true
}

func (s *Server) untrack(c *net.UnixConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.inflight.Done()
}

func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.Close()
	}
}

// removeSocket removes the socket file if it is still the one we created.
func (s *Server) removeSocket() {
	s.removeOnce.Do(func() {
		fi, err := os.Lstat(s.path)
		if err != nil || !os.SameFile(fi, s.sockFI) {
			return
		}
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.cfg.logger.Warn("rpc remove socket", "path", s.path, "err", err)
		}
	})
}

// serveConn serves the one call of a connection.
func (s *Server) serveConn(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	log := s.cfg.logger

	cred, err := peerCred(conn)
	if err != nil {
		log.Warn("rpc peer credentials", "err", err)
		return
	}
	if !slices.Contains(s.cfg.allowedUIDs, cred.Uid) {
		log.Warn("rpc peer refused", "uid", cred.Uid, "pid", cred.Pid)
		s.writeResponse(conn, nil, api.Errorf(api.CodePermissionDenied, "uid %d is not allowed to use %s", cred.Uid, s.path))
		return
	}

	_ = conn.SetReadDeadline(time.Now().Add(s.cfg.ioTimeout))
	payload, err := api.ReadFrame(conn, s.cfg.maxMessageSize)
	if err != nil {
		var fe *api.FrameError
		switch {
		case errors.As(err, &fe):
			log.Warn("rpc bad frame", "pid", cred.Pid, "err", err)
			s.writeResponse(conn, nil, api.Errorf(api.CodeInvalidRequest, "%s", fe.Error()))
		case errors.Is(err, io.EOF):
			// Connected and left without a request (a liveness probe).
		default:
			log.Warn("rpc read request", "pid", cred.Pid, "err", err)
		}
		return
	}

	start := time.Now()
	req, rerr := decodeRequest(payload)
	var body any
	if rerr == nil {
		body, rerr = s.call(ctx, conn, req)
	}
	s.writeResponse(conn, body, rerr)
	code := api.Code("")
	if rerr != nil {
		code = rerr.Code
	}
	log.Debug("rpc call", "op", req.Op, "pid", cred.Pid, "code", code, "duration", time.Since(start))
}

// decodeRequest decodes the envelope and checks its version.
func decodeRequest(payload []byte) (api.Request, *api.Error) {
	var req api.Request
	if err := json.Unmarshal(payload, &req); err != nil {
		// A future major version may change the envelope; it keeps "version".
		var v struct {
			Version string `json:"version"`
		}
		if json.Unmarshal(payload, &v) == nil && v.Version != "" {
			if verr := api.CheckVersion(v.Version); verr != nil {
				return req, verr
			}
		}
		return req, api.Errorf(api.CodeInvalidRequest, "decode request: %v", err)
	}
	if verr := api.CheckVersion(req.Version); verr != nil {
		return req, verr
	}
	return req, nil
}

// call runs the handler for req with the client's deadline, cancelling the
// call if the client hangs up.
func (s *Server) call(ctx context.Context, conn *net.UnixConn, req api.Request) (any, *api.Error) {
	timeout := s.cfg.maxCallTimeout
	if req.TimeoutMS > 0 && req.TimeoutMS < timeout.Milliseconds() {
		timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// One call per connection: the next read ends only when the client hangs
	// up (or breaks the protocol), or when we stop waiting below.
	_ = conn.SetReadDeadline(time.Time{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		var b [1]byte
		if _, err := conn.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
			cancelCause(errClientGone)
		}
	}()
	defer func() {
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-watchDone
	}()

	body, err := s.dispatch(ctx, req)
	if err == nil {
		return body, nil
	}
	var e *api.Error
	switch {
	case errors.As(err, &e):
		return nil, e
	case errors.Is(err, context.DeadlineExceeded):
		return nil, api.Errorf(api.CodeDeadlineExceeded, "%s: %v", req.Op, err)
	case errors.Is(err, context.Canceled):
		return nil, api.Errorf(api.CodeTryAgain, "%s cancelled: %v", req.Op, context.Cause(ctx))
	default:
		return nil, api.Errorf(api.CodeInternal, "%s: %v", req.Op, err)
	}
}

// dispatch decodes the body, validates it and calls the handler, turning a
// panic into an error.
func (s *Server) dispatch(ctx context.Context, req api.Request) (body any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.logger.Error("rpc handler panic", "op", req.Op, "panic", r, "stack", string(debug.Stack()))
			body, err = nil, api.Errorf(api.CodeInternal, "%s: internal error", req.Op)
		}
	}()
	switch req.Op {
	case api.OpAllocate:
		return handle(ctx, req, s.h.Allocate)
	case api.OpRelease:
		return handle(ctx, req, s.h.Release)
	case api.OpCheck:
		return handle(ctx, req, s.h.Check)
	case api.OpGC:
		return handle(ctx, req, s.h.GC)
	case api.OpStatus:
		return handle(ctx, req, s.h.Status)
	case api.OpList:
		return handle(ctx, req, s.h.List)
	default:
		return nil, api.Errorf(api.CodeInvalidRequest, "unknown operation %q", req.Op)
	}
}

type validator interface{ Validate() error }

func handle[Req validator, Resp any](ctx context.Context, req api.Request, fn func(context.Context, Req) (Resp, error)) (any, error) {
	var in Req
	if len(req.Body) > 0 {
		if err := json.Unmarshal(req.Body, &in); err != nil {
			return nil, api.Errorf(api.CodeInvalidRequest, "decode %s request: %v", req.Op, err)
		}
	}
	if err := in.Validate(); err != nil {
		return nil, api.Errorf(api.CodeInvalidRequest, "%s: %v", req.Op, err)
	}
	out, err := fn(ctx, in)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// writeResponse writes body, or e if it is not nil, within the IO timeout.
func (s *Server) writeResponse(conn *net.UnixConn, body any, e *api.Error) {
	resp := api.Response{Version: api.Version, Error: e}
	if e == nil {
		resp.Body = body
	}
	frame, err := api.AppendFrame(resp)
	if err != nil && e == nil {
		s.cfg.logger.Error("rpc encode response", "err", err)
		frame, err = api.AppendFrame(api.Response{Version: api.Version, Error: api.Errorf(api.CodeInternal, "encode response: %v", err)})
	}
	if err != nil {
		s.cfg.logger.Error("rpc encode response", "err", err)
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(s.cfg.ioTimeout))
	if _, err := conn.Write(frame); err != nil {
		s.cfg.logger.Debug("rpc write response", "err", err)
	}
}

// peerCred returns the credentials of the connection's peer process.
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: %w", credErr)
	}
	return cred, nil
}
