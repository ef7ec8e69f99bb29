package api

import (
	"bytes"
	"errors"
	"io"
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
		msg, err := ReadFrame(bytes.NewReader(in), lim)
		if err != nil {
			var fe *FrameError
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
