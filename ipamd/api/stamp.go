package api

import (
	"bytes"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stamp places a call of the plugin in time, so that the daemon can tell
// the order of the calls made for one attachment: a release made before
// the attachment's latest Allocate belongs to an earlier assignment and must
// not free the current one (a DEL that was spooled, or whose request waited
// in the socket's backlog, and then an ADD of the same attachment).
//
// The runtime runs the plugin's calls for one attachment one after the
// other, so the order of their stamps is the order of the calls, as long as
// the clock never goes back. Boot is that clock: CLOCK_BOOTTIME, which only
// moves forward (NTP steps and settimeofday do not touch it, suspend is
// counted) and is the same for every process of the node. It restarts at
// every boot, so it is only compared between stamps of the same BootID. Wall
// is the wall-clock time, for humans and for stamps without a boot clock
// (spool files of earlier versions).
type Stamp struct {
	// Boot is CLOCK_BOOTTIME in nanoseconds; zero when unknown.
	Boot int64 `json:"boot,omitempty"`
	// BootID is the kernel's boot id (/proc/sys/kernel/random/boot_id) of
	// the boot Boot counts in; empty when unknown.
	BootID string `json:"bootID,omitempty"`
	// Wall is the wall-clock time of the call, in UTC.
	Wall time.Time `json:"wall,omitzero"`
}

// IsZero reports whether s says nothing about the call's time.
func (s Stamp) IsZero() bool { return s.Boot == 0 && s.Wall.IsZero() }

// NewStamp reads the clocks now.
func NewStamp() Stamp {
	s := Stamp{BootID: KernelBootID(), Wall: time.Now().UTC().Round(0)}
	// Without the boot id a boot clock reading cannot be told from one of
	// another boot: only the wall clock is kept then.
	var ts unix.Timespec
	if s.BootID != "" && unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil {
		s.Boot = ts.Nano()
	}
	if s.Boot == 0 {
		s.BootID = ""
	}
	return s
}

// kernelBootIDFile holds the kernel's boot id, a new UUID at every boot.
const kernelBootIDFile = "/proc/sys/kernel/random/boot_id"

var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile(kernelBootIDFile)
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
})

// KernelBootID returns the kernel's boot id, read once per process, or ""
// where the kernel does not tell it.
func KernelBootID() string { return bootID() }
