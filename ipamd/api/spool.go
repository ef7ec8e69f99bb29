package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
)

// The release spool is the hand-off of releases that the plugin could not
// give to vnet-ipamd (the daemon was unreachable during a DEL): the plugin
// writes one file per attachment with SpoolRelease, the daemon drains the
// directory with DrainSpool. Both ends live here so that the file format has
// one definition.

// PendingRelease is one spooled release, the content of a spool file.
// At, Boot and BootID are the stamp of the DEL (see Stamp), so that the
// daemon can tell a release meant for an earlier assignment of the
// attachment from one for its current assignment; files written before
// stamps existed hold only At.
type PendingRelease struct {
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	At          time.Time `json:"at"`
	Boot        int64     `json:"boot,omitempty"`
	BootID      string    `json:"bootID,omitempty"`
}

// Stamp is the stamp of the spooled DEL.
func (r PendingRelease) Stamp() Stamp { return Stamp{Boot: r.Boot, BootID: r.BootID, Wall: r.At} }

const spoolSuffix = ".release.json"

// spoolFileName is the file of an attachment's pending release.
func spoolFileName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return hex.EncodeToString(sum[:16]) + spoolSuffix
}

// SpoolRelease records the attachment's release, made at `at` (NewStamp at
// the start of the DEL), in dir (created with mode 0700 if needed; the file
// is written atomically, mode 0600), so that the daemon finishes it when it
// is back. A second release of the same attachment replaces the first.
func SpoolRelease(dir, containerID, ifName string, at Stamp) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create release spool: %w", err)
	}
	data, err := json.Marshal(PendingRelease{ContainerID: containerID, IfName: ifName, At: at.Wall.UTC(), Boot: at.Boot, BootID: at.BootID})
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, spoolFileName(containerID, ifName)), data, 0o600)
}

// DrainSpool calls release for every pending release in dir and removes the
// file of each one that succeeded. A missing directory is empty. It returns
// the number released; files that cannot be parsed are removed and reported.
func DrainSpool(dir string, release func(PendingRelease) error) (int, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read release spool: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), spoolSuffix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r PendingRelease
		if err := json.Unmarshal(data, &r); err != nil || r.ContainerID == "" || r.IfName == "" {
			errs = append(errs, fmt.Errorf("discard malformed spool file %s: %w", e.Name(), errors.Join(err, os.Remove(path))))
			continue
		}
		if err := release(r); err != nil {
			errs = append(errs, fmt.Errorf("release %s/%s: %w", r.ContainerID, r.IfName, err))
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
