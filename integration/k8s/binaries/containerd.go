package binaries

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ContainerdVersion is the pinned containerd release: its CRI calls the CNI
// verbs ADD, DEL and STATUS (libcni 1.3), where Debian's 1.6 knows CNI only
// up to 1.0.0 (ADD and DEL).
const ContainerdVersion = "v2.4.2"

// ContainerdModule is containerd's Go module.
const ContainerdModule = "github.com/containerd/containerd/v2"

// ContainerdTags leave out the snapshotters that need cgo or kernel
// features this harness does not use (it runs overlayfs or native).
var ContainerdTags = []string{"no_btrfs", "no_devmapper", "no_zfs", "urfave_cli_no_docs", "osusergo", "netgo"}

// Module is a Go module whose commands are built like Kubernetes': a
// builder module requiring it (its own go.sum copied) in <dir>/builder,
// one static go build of the commands, a stamp file written last.
type Module struct {
	// Path and Version name the module.
	Path, Version string
	// Commands are the main packages' paths inside the module
	// ("cmd/containerd"); each binary is named after the last element.
	Commands []string
	// Tags and Ldflags are the go build's.
	Tags    []string
	Ldflags []string
}

// Names returns the programs' names.
func (m Module) Names() []string {
	names := make([]string, len(m.Commands))
	for i, c := range m.Commands {
		names[i] = filepath.Base(c)
	}
	return names
}

func (m Module) stamp() string {
	return m.Path + " " + m.Version + ": " + strings.Join(m.Names(), " ")
}

// BuildArgs returns the go command's arguments, packages included, that
// build the commands into out (a directory ending in a separator).
func (m Module) BuildArgs(out string) []string {
	args := []string{"build", "-mod=mod", "-trimpath"}
	if len(m.Tags) > 0 {
		args = append(args, "-tags", strings.Join(m.Tags, ","))
	}
	args = append(args, "-ldflags", strings.Join(append([]string{"-s", "-w"}, m.Ldflags...), " "), "-o", out)
	for _, c := range m.Commands {
		args = append(args, m.Path+"/"+c)
	}
	return args
}

// Containerd is containerd at version: containerd, containerd-shim-runc-v2
// and ctr, with the version variables set so `containerd --version`
// reports the release.
func Containerd(version string) Module {
	v := ContainerdModule + "/version."
	return Module{
		Path: ContainerdModule, Version: version,
		Commands: []string{"cmd/containerd", "cmd/containerd-shim-runc-v2", "cmd/ctr"},
		Tags:     ContainerdTags,
		Ldflags: []string{
			"-X", v + "Version=" + version,
			"-X", v + "Revision=" + strings.Repeat("0", 40),
			"-X", v + "Package=" + ContainerdModule,
		},
	}
}

// CNIPluginsVersion is the containernetworking/plugins release whose
// portmap and loopback the harness chains with vnet-cni under containerd
// v2: Debian's (1.1.1) speak CNI only up to 1.0.0, the conflist's 1.1.0
// (which STATUS needs) is beyond them.
const CNIPluginsVersion = "v1.9.1"

// CNIPlugins is containernetworking/plugins' portmap and loopback.
func CNIPlugins(version string) Module {
	return Module{
		Path: "github.com/containernetworking/plugins", Version: version,
		Commands: []string{"plugins/meta/portmap", "plugins/main/loopback"},
	}
}

// DefaultModuleDir is where a module's commands are cached by default:
// next to Kubernetes' (see DefaultDir), in <last path element>-<version>;
// under $VNET_K8S_BIN_DIR when it is set.
func DefaultModuleDir(m Module) string {
	base := filepath.Base(m.Path)
	if isMajorSuffix(base) {
		base = filepath.Base(filepath.Dir(m.Path))
	}
	if d := os.Getenv(EnvDir); d != "" {
		return filepath.Join(d, base+"-"+m.Version)
	}
	return filepath.Join(filepath.Dir(DefaultDir(Version)), base+"-"+m.Version)
}

// isMajorSuffix reports whether a module path's last element is its major
// version ("v2" of containerd/v2, "v4" of helm.sh/helm/v4).
func isMajorSuffix(elem string) bool {
	if len(elem) < 2 || elem[0] != 'v' {
		return false
	}
	for _, c := range elem[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// HelmVersion is the pinned Helm release: `helm lint` and `helm template`
// check charts/vnet-cni in the tests.
const HelmVersion = "v4.3.2"

// Helm is Helm's command from its module (helm.sh/helm/v4), static.
func Helm(version string) Module {
	return Module{
		Path: "helm.sh/helm/v4", Version: version,
		Commands: []string{"cmd/helm"},
		Ldflags:  []string{"-X", "helm.sh/helm/v4/internal/version.version=" + version},
	}
}

// FindContainerd returns containerd's binaries of ContainerdVersion in
// opts.Dir (DefaultModuleDir if empty) if a complete build is there.
func FindContainerd(opts Options) (Set, bool) { return FindModule(opts, Containerd(ContainerdVersion)) }

// EnsureContainerd builds containerd's binaries of ContainerdVersion unless
// FindContainerd finds them.
func EnsureContainerd(ctx context.Context, opts Options) (Set, error) {
	return EnsureModule(ctx, opts, Containerd(ContainerdVersion))
}

// FindModule returns m's binaries in opts.Dir (DefaultModuleDir(m) if
// empty) if a complete build of m is there. It builds nothing.
func FindModule(opts Options, m Module) (Set, bool) {
	if opts.Dir == "" {
		opts.Dir = DefaultModuleDir(m)
	}
	return findStamped(opts.Dir, m.Version, m.stamp(), m.Names())
}

func findStamped(dir, version, stamp string, names []string) (Set, bool) {
	set := Set{Dir: dir, Version: version}
	got, err := os.ReadFile(filepath.Join(dir, stampName))
	if err != nil || strings.TrimSpace(string(got)) != stamp {
		return set, false
	}
	for _, n := range names {
		if fi, err := os.Stat(set.Path(n)); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o100 == 0 {
			return set, false
		}
	}
	return set, true
}

// EnsureModule returns m's binaries, building them first unless FindModule
// finds them. opts.Version is ignored (m has its own).
func EnsureModule(ctx context.Context, opts Options, m Module) (Set, error) {
	if opts.Dir == "" {
		opts.Dir = DefaultModuleDir(m)
	}
	opts.Version = m.Version
	opts.defaults()
	if set, ok := FindModule(opts, m); ok {
		return set, nil
	}
	set := Set{Dir: opts.Dir, Version: m.Version}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return set, fmt.Errorf("%s binaries dir: %w", m.Path, err)
	}
	unlock, err := lockDir(opts.Dir)
	if err != nil {
		return set, err
	}
	defer unlock()
	if set, ok := FindModule(opts, m); ok {
		return set, nil
	}
	if err := os.Remove(filepath.Join(opts.Dir, stampName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return set, fmt.Errorf("remove stale stamp: %w", err)
	}
	start := time.Now()
	modDir := filepath.Join(opts.Dir, "builder")
	if err := writeModuleBuilder(ctx, opts, m, modDir); err != nil {
		return set, err
	}
	opts.Log.Info("building", "module", m.Path, "version", m.Version, "dir", opts.Dir)
	out := filepath.Join(opts.Dir, "out.tmp")
	if err := os.RemoveAll(out); err != nil {
		return set, fmt.Errorf("clear %s: %w", out, err)
	}
	if err := os.Mkdir(out, 0o755); err != nil {
		return set, fmt.Errorf("build output dir: %w", err)
	}
	if _, err := runGo(ctx, opts, modDir, m.BuildArgs(out+string(filepath.Separator))...); err != nil {
		return set, fmt.Errorf("build %s %s: %w", m.Path, m.Version, err)
	}
	for _, n := range m.Names() {
		if err := os.Rename(filepath.Join(out, n), set.Path(n)); err != nil {
			return set, fmt.Errorf("install %s: %w", n, err)
		}
	}
	if err := os.Remove(out); err != nil {
		return set, fmt.Errorf("remove %s: %w", out, err)
	}
	if err := os.WriteFile(filepath.Join(opts.Dir, stampName), []byte(m.stamp()+"\n"), 0o644); err != nil {
		return set, fmt.Errorf("write stamp: %w", err)
	}
	opts.Log.Info("built", "module", m.Path, "version", m.Version, "dir", opts.Dir, "took", time.Since(start).Round(time.Second))
	return set, nil
}

// writeModuleBuilder writes a module that requires m, with m's go.sum.
func writeModuleBuilder(ctx context.Context, opts Options, m Module, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("builder module dir: %w", err)
	}
	raw, err := runGo(ctx, opts, dir, "mod", "download", "-json", m.Path+"@"+m.Version)
	if err != nil {
		return fmt.Errorf("download %s@%s: %w", m.Path, m.Version, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(raw, &mod); err != nil {
		return fmt.Errorf("go mod download output: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return fmt.Errorf("download %s@%s: %s", m.Path, m.Version, mod.Error)
	}
	gomod := fmt.Sprintf("// Generated by vnet-cni's integration/k8s/binaries: builds %s %s.\nmodule vnet-cni.invalid/builder\n\ngo 1.26\n\nrequire %s %s\n",
		m.Path, m.Version, m.Path, m.Version)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
		return fmt.Errorf("write builder go.mod: %w", err)
	}
	sum, err := os.ReadFile(filepath.Join(mod.Dir, "go.sum"))
	if err != nil {
		return fmt.Errorf("read %s go.sum: %w", m.Path, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
		return fmt.Errorf("write builder go.sum: %w", err)
	}
	return nil
}
