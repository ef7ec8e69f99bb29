package api

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReadFrame(t *testing.T) {
	big := strings.Repeat("x", eagerReadLimit+100) // read in growing steps
	tests := []struct {
		name      string
		in        []byte
		limit     int
		want      string
		wantErr   error // matched with errors.Is
		wantFrame bool  // a *FrameError
	}{
		{name: "message", in: appendLen(nil, 2, "{}"), limit: 10, want: "{}"},
		{name: "message at the limit", in: appendLen(nil, 10, "0123456789"), limit: 10, want: "0123456789"},
		{name: "large message", in: appendLen(nil, len(big), big), limit: len(big), want: big},
		{name: "trailing bytes stay unread", in: appendLen(nil, 2, "{}xyz"), limit: 10, want: "{}"},
		{name: "empty stream", in: nil, limit: 10, wantErr: io.EOF},
		{name: "partial header", in: []byte{0, 0}, limit: 10, wantErr: io.ErrUnexpectedEOF},
		{name: "zero length", in: appendLen(nil, 0, ""), limit: 10, wantFrame: true},
		{name: "over the limit", in: appendLen(nil, 11, "01234567890"), limit: 10, wantFrame: true},
		{name: "4 GiB", in: []byte{0xff, 0xff, 0xff, 0xff}, limit: 1 << 20, wantFrame: true},
		{name: "truncated body", in: appendLen(nil, 5, "ab"), limit: 10, wantErr: io.ErrUnexpectedEOF},
		{name: "truncated large body", in: appendLen(nil, len(big), big[:100]), limit: len(big), wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadFrame(bytes.NewReader(tt.in), tt.limit)
			var fe *FrameError
			switch {
			case tt.wantFrame:
				if !errors.As(err, &fe) {
					t.Fatalf("got %v, want a frame error", err)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("ReadFrame: %v", err)
			default:
				if diff := cmp.Diff(tt.want, string(got)); diff != "" {
					t.Errorf("message (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func appendLen(b []byte, n int, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(n)), s...)
}

func TestFrameRoundTrip(t *testing.T) {
	in := Request{Version: Version, Op: OpStatus, TimeoutMS: 1500, Body: []byte(`{"a":1}`)}
	frame, err := AppendFrame(in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := int(binary.BigEndian.Uint32(frame)), len(frame)-frameHeaderLen; got != want {
		t.Errorf("length prefix %d, want %d", got, want)
	}
	payload, err := ReadFrame(bytes.NewReader(frame), len(frame))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":"` + Version + `","op":"status","timeoutMs":1500,"body":{"a":1}}`
	if diff := cmp.Diff(want, string(payload)); diff != "" {
		t.Errorf("wire bytes (-want +got):\n%s", diff)
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in         string
		major      int
		minor      int
		wantErrStr string
	}{
		{in: "1.0", major: 1, minor: 0},
		{in: "1.12", major: 1, minor: 12},
		{in: "2.3", major: 2, minor: 3},
		{in: "", wantErrStr: "not major.minor"},
		{in: "1", wantErrStr: "not major.minor"},
		{in: "1.", wantErrStr: "not major.minor"},
		{in: "-1.0", wantErrStr: "not major.minor"},
		{in: "1.0.1", wantErrStr: "not major.minor"},
		{in: "v1.0", wantErrStr: "not major.minor"},
		{in: "99999.0", wantErrStr: "not major.minor"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			major, minor, err := parseVersion(tt.in)
			if tt.wantErrStr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrStr) {
					t.Fatalf("got %d.%d, %v; want an error containing %q", major, minor, err, tt.wantErrStr)
				}
				return
			}
			if err != nil || major != tt.major || minor != tt.minor {
				t.Errorf("got %d.%d, %v; want %d.%d", major, minor, err, tt.major, tt.minor)
			}
		})
	}
}
