package api

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// frameHeaderLen is the size of the big-endian length before every message.
const frameHeaderLen = 4

// maxResponseSize bounds what the client accepts.
const maxResponseSize = 4 << 20

// eagerReadLimit is the size up to which a frame's buffer is allocated at
// once; larger frames grow their buffer as bytes actually arrive, so a peer
// that announces a big frame and sends nothing costs nothing.
const eagerReadLimit = 64 << 10

// FrameError is a framing violation that the server answers with
// CodeInvalidRequest before closing the connection.
type FrameError struct{ msg string }

func (e *FrameError) Error() string { return e.msg }

// ReadFrame reads one length-prefixed message of at most limit bytes. It
// returns io.EOF when the stream ends before the first byte,
// io.ErrUnexpectedEOF when it ends inside the frame, and a *FrameError when
// the announced length is zero or above limit.
func ReadFrame(r io.Reader, limit int) ([]byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[:]))
	switch {
	case n == 0:
		return nil, &FrameError{msg: "empty message"}
	case n > int64(limit):
		return nil, &FrameError{msg: fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", n, limit)}
	}
	if n <= eagerReadLimit {
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		return buf, nil
	}
	var buf bytes.Buffer
	buf.Grow(eagerReadLimit)
	if _, err := io.CopyN(&buf, r, n); err != nil {
		return nil, unexpectedEOF(err)
	}
	return buf.Bytes(), nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendFrame marshals v as JSON and returns it with its length prefix, ready
// for a single write.
func AppendFrame(v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(body) > math.MaxUint32 {
		return nil, fmt.Errorf("message of %d bytes is too large to frame", len(body))
	}
	frame := make([]byte, frameHeaderLen, frameHeaderLen+len(body))
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	return append(frame, body...), nil
}
