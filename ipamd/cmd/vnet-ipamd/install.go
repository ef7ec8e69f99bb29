package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vnet-cni/vnet-cni/internal/atomicfile"
)

// pluginName is the CNI plugin's binary, shipped next to vnet-ipamd (in
// the node image: /vnet-cni beside /vnet-ipamd).
const pluginName = "vnet-cni"

// installPlugin copies the plugin next to the daemon's executable into the
// host's CNI bin directory: a temporary file in binDir, synced, renamed
// over binDir/vnet-cni, so a runtime executes the old binary or the new
// one and never a half-written one. An identical binary is left alone. It
// runs before the daemon writes the conflist, so no ADD can find the
// conflist but not the plugin. It returns whether it wrote.
func installPlugin(binDir string) (bool, error) {
	self, err := os.Executable()
	if err != nil {
		return false, fmt.Errorf("install %s: own executable: %w", pluginName, err)
	}
	src := filepath.Join(filepath.Dir(self), pluginName)
	return copyPlugin(src, filepath.Join(binDir, pluginName))
}

func copyPlugin(src, dst string) (bool, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("install %s: %w", pluginName, err)
	}
	cur, err := os.ReadFile(dst)
	switch {
	case err == nil && bytes.Equal(cur, data):
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == 0o755 {
			return false, nil
		}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("install %s: %w", pluginName, err)
	}
	if err := atomicfile.Write(dst, data, 0o755); err != nil {
		return false, fmt.Errorf("install %s: %w", pluginName, err)
	}
	return true, nil
}
