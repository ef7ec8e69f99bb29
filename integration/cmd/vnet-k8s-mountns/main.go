// Command vnet-k8s-mountns holds the private mount namespace of one
// simulated Kubernetes node. The harness starts it with a new mount
// namespace (the Go runtime makes / recursively private before the exec,
// so nothing mounted here reaches the host) inside the node's network
// namespace; it bind-mounts each --bind source over its target, prints
// "ready" and waits: for SIGTERM or SIGINT, or for its standard input to
// close (the harness died). The node's containerd, kubelet and kube-proxy
// join its namespaces (nsenter --target <pid> --mount --net), so they share
// one view in which /var/lib/kubelet, /run/containerd, /etc/cni/net.d, ...
// are the node's own directories. When the last of them exits the
// namespace and every mount in it are gone.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

type binds []string

func (b *binds) String() string     { return strings.Join(*b, ",") }
func (b *binds) Set(v string) error { *b = append(*b, v); return nil }

func main() {
	var bs binds
	flag.Var(&bs, "bind", "source:target, bind-mounted in order (repeatable)")
	flag.Parse()
	if err := run(bs); err != nil {
		fmt.Fprintln(os.Stderr, "vnet-k8s-mountns:", err)
		os.Exit(1)
	}
}

func run(bs binds) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("own mount namespace: %w", err)
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err == nil && parent == self {
		return errors.New("not in a mount namespace of its own: start it with CLONE_NEWNS")
	}
	// The Go runtime made / private; make sure of it before any mount.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	for _, b := range bs {
		src, dst, ok := strings.Cut(b, ":")
		if !ok || !strings.HasPrefix(src, "/") || !strings.HasPrefix(dst, "/") {
			return fmt.Errorf("bind %q is not /source:/target", b)
		}
		if err := syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s over %s: %w", src, dst, err)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	fmt.Println("ready")
	select {
	case <-sigs:
	case <-eof:
	}
	return nil
}
