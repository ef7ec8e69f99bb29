// Package namedns creates and removes named network namespaces, bind-mounted
// under /run/netns as `ip netns add` does, without ever leaving a goroutine
// of the caller in the new namespace.
package namedns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted.
const Dir = "/run/netns"

// Path returns the path of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create creates the namespace on a dedicated, locked OS thread and puts
// that thread back into its original namespace; if that fails, the thread
// stays locked and dies with its goroutine, so no other code ever runs in
// the wrong namespace.
func Create(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			_ = h.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore netns: %w", serr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// Delete unmounts and removes the namespace's bind mount; a missing one is
// no error. The namespace itself goes away with its last user.
func Delete(name string) error {
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}
