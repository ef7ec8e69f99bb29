package plugin

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
	"github.com/vnet-cni/vnet-cni/ipamd/spool"
)

// spoolRelease records a release that vnet-ipamd could not take, so that the
// daemon finishes it when it is back.
func spoolRelease(dir, containerID, ifName string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create release spool: %w", err)
	}
	data, err := json.Marshal(spool.Release{ContainerID: containerID, IfName: ifName, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, spool.FileName(containerID, ifName)), data, 0o600)
}
