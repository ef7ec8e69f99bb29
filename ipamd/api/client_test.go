package api

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClientDaemonGoneMidRequest: a daemon that closes the connection
// before it read the whole request (killed between accept and read) gives
// ErrNoResponse, which the plugin reports as "try again later", whether the
// client notices it in its write or in its read. The request is larger than
// the socket's buffer, so the write is still under way when the peer closes.
func TestClientDaemonGoneMidRequest(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ipamd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.CopyN(io.Discard, conn, 4)
			_ = conn.Close()
		}
	}()
	c := NewClient(sock)
	for _, size := range []int{10, 1 << 20} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.GC(ctx, GCRequest{Valid: []Attachment{{ContainerID: strings.Repeat("c", size), IfName: "eth0"}}})
		cancel()
		if !errors.Is(err, ErrNoResponse) {
			t.Errorf("request of %d bytes: err = %v, want ErrNoResponse", size, err)
		}
	}
}
