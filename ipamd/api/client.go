package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"syscall"
	"time"
)

// DefaultClientTimeout is the deadline of a call whose context has none.
const DefaultClientTimeout = 10 * time.Second

// Client calls the daemon. Every call opens its own connection, so a Client
// is cheap, holds no resources and is safe for concurrent use.
type Client struct {
	path    string
	timeout time.Duration
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithDefaultTimeout sets the deadline of calls whose context has none
// (default DefaultClientTimeout).
func WithDefaultTimeout(d time.Duration) ClientOption {
	return func(c *Client) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// NewClient returns a client of the socket at path (DefaultSocketPath if empty).
func NewClient(path string, opts ...ClientOption) *Client {
	if path == "" {
		path = DefaultSocketPath
	}
	c := &Client{path: path, timeout: DefaultClientTimeout}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Allocate returns the attachment's address.
func (c *Client) Allocate(ctx context.Context, req AllocateRequest) (AllocateResponse, error) {
	var resp AllocateResponse
	err := c.call(ctx, OpAllocate, req, &resp)
	return resp, err
}

// Release releases the attachment's address.
func (c *Client) Release(ctx context.Context, req ReleaseRequest) (ReleaseResponse, error) {
	var resp ReleaseResponse
	err := c.call(ctx, OpRelease, req, &resp)
	return resp, err
}

// Check returns the attachment's assignment, if any.
func (c *Client) Check(ctx context.Context, req CheckRequest) (CheckResponse, error) {
	var resp CheckResponse
	err := c.call(ctx, OpCheck, req, &resp)
	return resp, err
}

// GC releases every assignment whose attachment is not in req.Valid.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var resp GCResponse
	err := c.call(ctx, OpGC, req, &resp)
	return resp, err
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context, req StatusRequest) (StatusResponse, error) {
	var resp StatusResponse
	err := c.call(ctx, OpStatus, req, &resp)
	return resp, err
}

// List returns every address the daemon holds.
func (c *Client) List(ctx context.Context, req ListRequest) (ListResponse, error) {
	var resp ListResponse
	err := c.call(ctx, OpList, req, &resp)
	return resp, err
}

// call makes one call on a new connection. Errors: ErrUnreachable (wrapped)
// when the connection cannot be made, ErrNoResponse (wrapped) when it
// closes before the response, ctx's error (wrapped) when it ends
// first, an *Error (wrapped) for an error response.
func (c *Client) call(ctx context.Context, op string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	remaining := time.Until(deadline)
	if remaining <= 0 || ctx.Err() != nil {
		return fmt.Errorf("ipamd %s: %w", op, contextError(ctx))
	}
	// Round up so that a deadline under 1 ms is not sent as "none".
	ms := int64(math.Ceil(float64(remaining) / float64(time.Millisecond)))
	frame, err := AppendFrame(outRequest{Version: Version, Op: op, TimeoutMS: ms, Body: in})
	if err != nil {
		return fmt.Errorf("ipamd %s: encode request: %w", op, err)
	}

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("ipamd %s: connect: %w", op, contextError(ctx))
		}
		return fmt.Errorf("ipamd %s: %w at %s: %w", op, ErrUnreachable, c.path, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// Read even if the write failed: a server that refuses the call (wrong
	// uid) may answer and close before reading the request.
	_, werr := conn.Write(frame)
	payload, rerr := ReadFrame(conn, maxResponseSize)
	if rerr != nil {
		switch {
		case ctx.Err() != nil, errors.Is(rerr, os.ErrDeadlineExceeded):
			return fmt.Errorf("ipamd %s: %w", op, contextError(ctx))
		case errors.Is(werr, syscall.EPIPE), errors.Is(werr, syscall.ECONNRESET):
			// The daemon closed the connection before it read the request
			// (killed, restarting): no answer, as when it closes later.
			return fmt.Errorf("ipamd %s: %w (send request: %w)", op, ErrNoResponse, werr)
		case werr != nil:
			return fmt.Errorf("ipamd %s: send request: %w", op, werr)
		case errors.Is(rerr, io.EOF), errors.Is(rerr, syscall.ECONNRESET):
			return fmt.Errorf("ipamd %s: %w", op, ErrNoResponse)
		default:
			return fmt.Errorf("ipamd %s: read response: %w", op, rerr)
		}
	}
	body := &bodyDecoder{out: out}
	resp := Response{Body: body}
	decodeErr := json.Unmarshal(payload, &resp)
	if resp.Error != nil {
		// The error member is the same in every version.
		return fmt.Errorf("ipamd %s: %w", op, resp.Error)
	}
	if major, _, err := parseVersion(resp.Version); err == nil && major != versionMajor {
		return fmt.Errorf("ipamd %s: %w", op, Errorf(CodeVersionMismatch,
			"response of protocol version %s is not supported: this client speaks %s", resp.Version, Version))
	}
	if decodeErr != nil {
		return fmt.Errorf("ipamd %s: decode response: %w", op, decodeErr)
	}
	if _, _, err := parseVersion(resp.Version); err != nil {
		return fmt.Errorf("ipamd %s: response: %w", op, err)
	}
	if !body.seen {
		return fmt.Errorf("ipamd %s: response without a body", op)
	}
	return nil
}

// bodyDecoder decodes a response body into out and records that there was one.
type bodyDecoder struct {
	out  any
	seen bool
}

func (b *bodyDecoder) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	b.seen = true
	return json.Unmarshal(data, b.out)
}

// contextError is ctx's error, or DeadlineExceeded if the deadline has passed
// but the context has not noticed yet.
func contextError(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return context.DeadlineExceeded
}
