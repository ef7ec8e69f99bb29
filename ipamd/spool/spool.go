// Package spool is the hand-off of releases that the CNI plugin could not
// give to vnet-ipamd (the daemon was unreachable during a DEL): the plugin
// writes one file per attachment, the daemon drains the directory.
package spool

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
)

// Release is one pending release.
type Release struct {
	ContainerID string    `json:"containerID"`
	IfName      string    `json:"ifName"`
	At          time.Time `json:"at"`
}

const suffix = ".release.json"

// FileName is the file of an attachment's pending release.
func FileName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return hex.EncodeToString(sum[:16]) + suffix
}

// Drain calls release for every pending release in dir and removes the
// file of each one that succeeded. A missing directory is empty. It returns
// the number released; files that cannot be parsed are removed and reported.
func Drain(dir string, release func(Release) error) (int, error) {
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
		if e.IsDir() || !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r Release
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
