// Package server serves the vnet-ipamd socket protocol of package api on a
// unix socket: it creates the socket safely (mode 0600, never replacing a
// live one), checks the peer's uid, bounds the connections it holds and the
// time a client may take to send its request, applies the client's deadline,
// decodes and validates each request and calls a Handler (the daemon). Only
// the daemon links it; the plugin needs api's Client alone.
package server

import (
	"container/list"
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
	"sync/atomic"
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
	// defaultRequestTimeout bounds the time from accept to a complete
	// request. api.Client writes its whole request in one write right after
	// connecting, so a well-behaved request is in the socket buffer when the
	// server accepts it and even the largest (1 MiB) is read in
	// milliseconds: 2 s leaves a CPU-starved node three orders of magnitude
	// of headroom, and lets a silent or trickling peer hold a connection
	// for no longer than a status caller's usual deadline.
	defaultRequestTimeout = 2 * time.Second
	// defaultMaxConns bounds the connections open at once. A node runs at
	// most 250 pods, so even a churn where each of them has an ADD and a DEL
	// in flight stays far below it; each connection costs one descriptor and
	// two goroutines, so the bound (twice it while connections are being
	// shed) is cheap to hold.
	defaultMaxConns = 1024
	// refuseWriteTimeout bounds the answer to a connection refused at the
	// bound: it is written by the accept loop into a fresh socket buffer.
	refuseWriteTimeout = 50 * time.Millisecond
	// overloadLogInterval is the least time between two log lines about
	// connections shed or refused at the bound.
	overloadLogInterval = 10 * time.Second
	staleProbeTimeout   = 250 * time.Millisecond
	maxUnixPathLen      = 107 // sizeof(sun_path) - 1
)

type serverConfig struct {
	allowedUIDs    []uint32
	maxMessageSize int
	maxCallTimeout time.Duration
	ioTimeout      time.Duration
	requestTimeout time.Duration
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

// WithIOTimeout bounds writing the response (default 5 s).
func WithIOTimeout(d time.Duration) Option {
	return func(c *serverConfig) { c.ioTimeout = d }
}

// WithRequestTimeout bounds the time from accepting a connection to having
// read its whole request (default 2 s). A connection that sent nothing, or
// only part of its request, by then is closed without an answer (the client
// sees api.ErrNoResponse). There is no other idle time: a connection carries
// one call and is closed after its response.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *serverConfig) { c.requestTimeout = d }
}

// WithMaxConns bounds the connections open at once (default 1024). At the
// bound a new connection takes the place of the oldest one that has not sent
// its request yet, which is answered api.CodeTryAgain and closed; when every
// connection is in a call, the new one is answered api.CodeTryAgain at once
// (after the peer-credential check). No client waits in the listen backlog.
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
	conns       map[*net.UnixConn]*connState
	waiting     list.List               // of *net.UnixConn: tracked, no request read yet, oldest first
	shedding    int                     // conns marked shed whose goroutine has not ended
	cancelCalls context.CancelCauseFunc // set by Serve

	overload overloadLog
}

// connState is what the server knows of a tracked connection.
type connState struct {
	waiting *list.Element // in Server.waiting until the request is read; nil after
	shed    bool          // closed to make room for a newer connection
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
		requestTimeout: defaultRequestTimeout,
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
	case cfg.requestTimeout <= 0:
		return nil, fmt.Errorf("new rpc server: request timeout %s must be positive", cfg.requestTimeout)
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
		conns:  make(map[*net.UnixConn]*connState),
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

	s.cfg.logger.Info("rpc server listening", "path", s.path, "version", api.Version,
		"max_conns", s.cfg.maxConns, "request_timeout", s.cfg.requestTimeout)
	var backoff time.Duration
	for {
		select {
		case <-s.closed:
			return ErrClosed
		case <-ctx.Done():
			return s.stop(ctx)
		default:
		}
		conn, err := s.ln.AcceptUnix()
		if err != nil {
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
		// The request deadline runs from accept, whatever the peer sends;
		// it is set before the connection can be shed (see admit).
		_ = conn.SetReadDeadline(time.Now().Add(s.cfg.requestTimeout))
		switch s.admit(conn) {
		case admitClosing:
			_ = conn.Close()
			continue
		case admitFull:
			s.refuse(conn)
			continue
		}
		go func() {
			defer s.untrack(conn)
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

// admission is admit's verdict on a new connection.
type admission int

const (
	admitted     admission = iota
	admitClosing           // the server is closing
	admitFull              // at the bound, every connection is in a call
)

// admit tracks a new connection. At the bound it sheds the oldest connection
// that has not sent its request yet: it marks it and expires its read
// deadline, so that its goroutine answers it api.CodeTryAgain and ends. The
// connections being shed do not count against the bound, up to a second
// bound's worth, so a flood can never hold more than 2*maxConns.
func (s *Server) admit(c *net.UnixConn) admission {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return admitClosing
	}
	if len(s.conns)-s.shedding >= s.cfg.maxConns {
		oldest := s.waiting.Front()
		if oldest == nil || len(s.conns) >= 2*s.cfg.maxConns {
			return admitFull
		}
		victim := oldest.Value.(*net.UnixConn)
		st := s.conns[victim]
		s.waiting.Remove(oldest)
		st.waiting = nil
		st.shed = true
		s.shedding++
		_ = victim.SetReadDeadline(time.Unix(1, 0))
	}
	s.conns[c] = &connState{waiting: s.waiting.PushBack(c)}
	s.inflight.Add(1)
	return admitted
}

// started records that c's request was read (or failed to be): it may not
// be shed any more. It returns false if c was shed first.
func (s *Server) started(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.conns[c]
	if st.shed {
		return false
	}
	if st.waiting != nil {
		s.waiting.Remove(st.waiting)
		st.waiting = nil
	}
	return true
}

func (s *Server) untrack(c *net.UnixConn) {
	s.mu.Lock()
	st := s.conns[c]
	if st.waiting != nil {
		s.waiting.Remove(st.waiting)
	}
	if st.shed {
		s.shedding--
	}
	delete(s.conns, c)
	s.mu.Unlock()
	s.inflight.Done()
}

// busyError is the answer to a connection shed or refused at the bound.
func (s *Server) busyError() *api.Error {
	return api.Errorf(api.CodeTryAgain, "vnet-ipamd is busy (at its bound of %d open connections), try again", s.cfg.maxConns)
}

// refuse answers a connection that arrives at the bound when every
// connection is in a call, on the accept loop: the peer-credential check
// first, as for every connection, then api.CodeTryAgain.
func (s *Server) refuse(conn *net.UnixConn) {
	defer conn.Close()
	cred, ok := s.checkPeer(conn, refuseWriteTimeout)
	if !ok {
		return
	}
	s.overload.note(s.cfg.logger, "refused", cred.Pid, s.cfg.maxConns)
	s.writeResponseWithin(conn, nil, s.busyError(), refuseWriteTimeout)
}

// overloadLog logs connections shed or refused at the bound, at most once per
// overloadLogInterval (a flood must not flood the log too), with the number
// since the previous line.
type overloadLog struct {
	last  atomic.Int64 // unix nanoseconds of the last line
	count atomic.Int64 // connections shed or refused since the last line
}

func (o *overloadLog) note(log *slog.Logger, what string, pid int32, maxConns int) {
	n := o.count.Add(1)
	now := time.Now().UnixNano()
	last := o.last.Load()
	if now-last < int64(overloadLogInterval) || !o.last.CompareAndSwap(last, now) {
		log.Debug("rpc connection "+what+" at the bound", "pid", pid, "max_conns", maxConns)
		return
	}
	o.count.Add(-n)
	log.Warn("rpc connections over the bound: the oldest waiting for their request are shed, the rest refused with TryAgain",
		"last", what, "pid", pid, "max_conns", maxConns, "shed_or_refused", n)
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

	cred, ok := s.checkPeer(conn, s.cfg.ioTimeout)
	if !ok {
		return
	}

	// The read deadline was set at accept (Serve).
	payload, err := api.ReadFrame(conn, s.cfg.maxMessageSize)
	if !s.started(conn) {
		s.overload.note(log, "shed", cred.Pid, s.cfg.maxConns)
		s.writeResponse(conn, nil, s.busyError())
		return
	}
	if err != nil {
		var fe *api.FrameError
		switch {
		case errors.As(err, &fe):
			log.Warn("rpc bad frame", "pid", cred.Pid, "err", err)
			s.writeResponse(conn, nil, api.Errorf(api.CodeInvalidRequest, "%s", fe.Error()))
		case errors.Is(err, io.EOF):
			// Connected and left without a request (a liveness probe).
		case errors.Is(err, os.ErrDeadlineExceeded):
			log.Warn("rpc request timeout: no complete request in time, connection closed",
				"pid", cred.Pid, "request_timeout", s.cfg.requestTimeout)
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

// checkPeer checks the uid of conn's peer and answers a refused peer
// api.CodePermissionDenied within writeTimeout. It reports whether the peer
// may be served.
func (s *Server) checkPeer(conn *net.UnixConn, writeTimeout time.Duration) (*unix.Ucred, bool) {
	cred, err := peerCred(conn)
	if err != nil {
		s.cfg.logger.Warn("rpc peer credentials", "err", err)
		return nil, false
	}
	if !slices.Contains(s.cfg.allowedUIDs, cred.Uid) {
		s.cfg.logger.Warn("rpc peer refused", "uid", cred.Uid, "pid", cred.Pid)
		s.writeResponseWithin(conn, nil, api.Errorf(api.CodePermissionDenied, "uid %d is not allowed to use %s", cred.Uid, s.path), writeTimeout)
		return nil, false
	}
	return cred, true
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
	s.writeResponseWithin(conn, body, e, s.cfg.ioTimeout)
}

// writeResponseWithin writes body, or e if it is not nil, within timeout.
func (s *Server) writeResponseWithin(conn *net.UnixConn, body any, e *api.Error, timeout time.Duration) {
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
	_ = conn.SetWriteDeadline(time.Now().Add(timeout))
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
