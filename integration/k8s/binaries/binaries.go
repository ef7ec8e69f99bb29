// Package binaries builds the Kubernetes programs the integration harness
// runs (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
// kube-proxy, kubectl) from k8s.io/kubernetes at one pinned version, fetched
// through the Go module proxy, into a cache directory outside the checkout.
// A second call finds them there and builds nothing.
//
// k8s.io/kubernetes cannot be built inside its own module directory as the
// proxy serves it: its go.mod replaces the k8s.io/api, k8s.io/client-go, ...
// staging modules with ./staging/src/..., and the module zip leaves those
// nested modules out. So Ensure writes a small builder module next to the
// binaries that requires k8s.io/kubernetes and replaces each staging module
// with its published v0.x.y version (the same source, released from the
// same commit), then runs go build on the six cmd/ packages.
package binaries

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Version is the pinned Kubernetes release.
const Version = "v1.36.3"

// EnvDir names the environment variable that overrides the cache directory.
const EnvDir = "VNET_K8S_BIN_DIR"

// Names are the programs Ensure builds, each from k8s.io/kubernetes/cmd/<name>.
var Names = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

// stampName is the file, written last, that says the directory holds a
// complete build of one version.
const stampName = "BUILT"

// Set is a directory of built binaries.
type Set struct {
	Dir     string
	Version string
}

// Path returns the path of the named program.
func (s Set) Path(name string) string { return filepath.Join(s.Dir, name) }

// Options say what to build and where.
type Options struct {
	// Version is a k8s.io/kubernetes release tag; Version if empty.
	Version string
	// Dir receives the binaries; DefaultDir(Version) if empty.
	Dir string
	// Go is the go command; "go" if empty.
	Go string
	// Log receives the build's progress; slog.Default() if nil.
	Log *slog.Logger
	// Output receives the go command's output; discarded if nil (it is
	// part of the error when the build fails).
	Output io.Writer
}

func (o *Options) defaults() {
	if o.Version == "" {
		o.Version = Version
	}
	if o.Dir == "" {
		o.Dir = DefaultDir(o.Version)
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// DefaultDir is $VNET_K8S_BIN_DIR if set, else
// $XDG_CACHE_HOME/vnet-cni-k8s/<version> (~/.cache when XDG_CACHE_HOME is
// unset).
func DefaultDir(version string) string {
	if d := os.Getenv(EnvDir); d != "" {
		return d
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "vnet-cni-k8s", version)
}

// Find returns the binaries of opts.Version in opts.Dir if a complete build
// of that version is there, and ok false otherwise. It builds nothing.
func Find(opts Options) (Set, bool) {
	opts.defaults()
	set := Set{Dir: opts.Dir, Version: opts.Version}
	stamp, err := os.ReadFile(filepath.Join(opts.Dir, stampName))
	if err != nil || strings.TrimSpace(string(stamp)) != stampText(opts.Version) {
		return set, false
	}
	for _, n := range Names {
		if fi, err := os.Stat(set.Path(n)); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o100 == 0 {
			return set, false
		}
	}
	return set, true
}

func stampText(version string) string {
	return "k8s.io/kubernetes " + version + ": " + strings.Join(Names, " ")
}

// Ensure returns the binaries of opts.Version, building them first unless
// Find finds them. A cold build of all six takes many minutes.
func Ensure(ctx context.Context, opts Options) (Set, error) {
	opts.defaults()
	if set, ok := Find(opts); ok {
		return set, nil
	}
	set := Set{Dir: opts.Dir, Version: opts.Version}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return set, fmt.Errorf("k8s binaries dir: %w", err)
	}
	// One build at a time per directory (make k8s-bins and a test, say);
	// whoever waited finds the other's result.
	unlock, err := lockDir(opts.Dir)
	if err != nil {
		return set, err
	}
	defer unlock()
	if set, ok := Find(opts); ok {
		return set, nil
	}
	if err := os.Remove(filepath.Join(opts.Dir, stampName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return set, fmt.Errorf("remove stale stamp: %w", err)
	}
	start := time.Now()
	modDir := filepath.Join(opts.Dir, "builder")
	if err := writeBuilder(ctx, opts, modDir); err != nil {
		return set, err
	}
	opts.Log.Info("building kubernetes", "version", opts.Version, "dir", opts.Dir, "programs", strings.Join(Names, ","))
	out := filepath.Join(opts.Dir, "out.tmp")
	if err := os.RemoveAll(out); err != nil {
		return set, fmt.Errorf("clear %s: %w", out, err)
	}
	if err := os.Mkdir(out, 0o755); err != nil {
		return set, fmt.Errorf("k8s build output dir: %w", err)
	}
	args := append(BuildArgs(opts.Version, out+string(filepath.Separator)), packages()...)
	if _, err := runGo(ctx, opts, modDir, args...); err != nil {
		return set, fmt.Errorf("build kubernetes %s: %w", opts.Version, err)
	}
	for _, n := range Names {
		if err := os.Rename(filepath.Join(out, n), set.Path(n)); err != nil {
			return set, fmt.Errorf("install %s: %w", n, err)
		}
	}
	if err := os.Remove(out); err != nil {
		return set, fmt.Errorf("remove %s: %w", out, err)
	}
	if err := os.WriteFile(filepath.Join(opts.Dir, stampName), []byte(stampText(opts.Version)+"\n"), 0o644); err != nil {
		return set, fmt.Errorf("write stamp: %w", err)
	}
	opts.Log.Info("built kubernetes", "version", opts.Version, "dir", opts.Dir, "took", time.Since(start).Round(time.Second))
	return set, nil
}

// lockDir takes an exclusive lock on dir's lock file, waiting for it.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

func packages() []string {
	pkgs := make([]string, len(Names))
	for i, n := range Names {
		pkgs[i] = "k8s.io/kubernetes/cmd/" + n
	}
	return pkgs
}

// BuildArgs returns the go command's arguments, without the packages, that
// build the binaries of version into out (a directory ending in a
// separator): static (the caller sets CGO_ENABLED=0), trimmed, stripped,
// module graph resolved as needed, and the version variables of
// k8s.io/component-base/version and k8s.io/client-go/pkg/version set so
// that `kubectl version` and the servers' /version report the release.
func BuildArgs(version, out string) []string {
	major, minor := "", ""
	if m := regexp.MustCompile(`^v(\d+)\.(\d+)\.`).FindStringSubmatch(version); m != nil {
		major, minor = m[1], m[2]
	}
	ld := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		for _, kv := range [][2]string{
			{"gitVersion", version},
			{"gitMajor", major},
			{"gitMinor", minor},
			// The module zip carries no commit; the all-zero one is what
			// a build without git reports too.
			{"gitCommit", strings.Repeat("0", 40)},
			{"gitTreeState", "clean"},
			{"buildDate", "1970-01-01T00:00:00Z"},
		} {
			ld = append(ld, "-X", pkg+"."+kv[0]+"="+kv[1])
		}
	}
	return []string{"build", "-mod=mod", "-trimpath", "-ldflags", strings.Join(ld, " "), "-o", out}
}

// writeBuilder writes the builder module: k8s.io/kubernetes required at
// opts.Version, each module it replaces with ./staging/... replaced by the
// published version of the same release, and kubernetes' own go.sum.
func writeBuilder(ctx context.Context, opts Options, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("builder module dir: %w", err)
	}
	raw, err := runGo(ctx, opts, dir, "mod", "download", "-json", "k8s.io/kubernetes@"+opts.Version)
	if err != nil {
		return fmt.Errorf("download k8s.io/kubernetes@%s: %w", opts.Version, err)
	}
	var mod struct{ Dir, GoMod, Error string }
	if err := json.Unmarshal(raw, &mod); err != nil {
		return fmt.Errorf("go mod download output: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return fmt.Errorf("download k8s.io/kubernetes@%s: %s", opts.Version, mod.Error)
	}
	gomod, err := os.ReadFile(filepath.Join(mod.Dir, "go.mod"))
	if err != nil {
		return fmt.Errorf("read kubernetes go.mod: %w", err)
	}
	staging, err := StagingModules(gomod)
	if err != nil {
		return err
	}
	pub, err := StagingVersion(opts.Version)
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "// Generated by vnet-cni's integration/k8s/binaries: builds k8s.io/kubernetes %s.\nmodule vnet-cni.invalid/k8s-builder\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", opts.Version, opts.Version)
	for _, m := range staging {
		fmt.Fprintf(&b, "\t%s => %s %s\n", m, m, pub)
	}
	b.WriteString(")\n")
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write builder go.mod: %w", err)
	}
	sum, err := os.ReadFile(filepath.Join(mod.Dir, "go.sum"))
	if err != nil {
		return fmt.Errorf("read kubernetes go.sum: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
		return fmt.Errorf("write builder go.sum: %w", err)
	}
	return nil
}

// StagingModules returns the modules kubernetes' go.mod replaces with a
// directory under ./staging/.
func StagingModules(gomod []byte) ([]string, error) {
	var mods []string
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "replace" {
			f = f[1:]
		}
		if len(f) == 3 && f[1] == "=>" && strings.HasPrefix(f[2], "./staging/") {
			mods = append(mods, f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kubernetes go.mod: %w", err)
	}
	if len(mods) == 0 {
		return nil, errors.New("kubernetes go.mod replaces no staging module")
	}
	return mods, nil
}

// StagingVersion maps a Kubernetes release to the version its staging
// modules are published at: v1.36.3 to v0.36.3.
func StagingVersion(version string) (string, error) {
	rest, ok := strings.CutPrefix(version, "v1.")
	if !ok || strings.Count(rest, ".") != 1 {
		return "", fmt.Errorf("kubernetes version %q is not v1.MINOR.PATCH", version)
	}
	return "v0." + rest, nil
}

// runGo runs the go command in dir with cgo off and no workspace, and
// returns its standard output.
func runGo(ctx context.Context, opts Options, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, opts.Go, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-buildvcs=false")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if opts.Output != nil {
		cmd.Stderr = io.MultiWriter(&stderr, opts.Output)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 4000 {
			msg = "..." + msg[len(msg)-4000:]
		}
		return nil, fmt.Errorf("go %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}
