package binaries

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestStagingModules(t *testing.T) {
	gomod := []byte(`module k8s.io/kubernetes

require (
	k8s.io/api v0.0.0
	k8s.io/klog/v2 v2.140.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	example.com/x => example.com/y v1.0.0
)

replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl
`)
	got, err := StagingModules(gomod)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"k8s.io/api", "k8s.io/client-go", "k8s.io/kubectl"}; !slices.Equal(got, want) {
		t.Errorf("StagingModules = %q, want %q", got, want)
	}
	if _, err := StagingModules([]byte("module x\n")); err == nil {
		t.Error("a go.mod without staging replacements was accepted")
	}
}

func TestStagingVersion(t *testing.T) {
	for in, want := range map[string]string{"v1.36.3": "v0.36.3", "v1.4.10": "v0.4.10", "v2.0.0": "", "1.36.3": "", "v1.36": ""} {
		got, err := StagingVersion(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("StagingVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestBuildArgs(t *testing.T) {
	args := BuildArgs("v1.36.3", "/out/")
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-mod=mod", "-trimpath", "-o /out/",
		"k8s.io/component-base/version.gitVersion=v1.36.3",
		"k8s.io/component-base/version.gitMajor=1",
		"k8s.io/component-base/version.gitMinor=36",
		"k8s.io/client-go/pkg/version.gitVersion=v1.36.3",
		"k8s.io/component-base/version.gitTreeState=clean",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("build args %q lack %q", joined, want)
		}
	}
}

func TestFindNeedsStampAndEveryBinary(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Version: "v1.36.3", Dir: dir}
	if _, ok := Find(opts); ok {
		t.Fatal("found binaries in an empty directory")
	}
	for _, n := range Names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := Find(opts); ok {
		t.Fatal("found binaries without a stamp")
	}
	if err := os.WriteFile(filepath.Join(dir, stampName), []byte(stampText("v1.36.2")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := Find(opts); ok {
		t.Fatal("found binaries stamped with another version")
	}
	if err := os.WriteFile(filepath.Join(dir, stampName), []byte(stampText("v1.36.3")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	set, ok := Find(opts)
	if !ok || set.Path("kubectl") != filepath.Join(dir, "kubectl") {
		t.Fatalf("Find = %+v, %v", set, ok)
	}
	if err := os.Remove(filepath.Join(dir, "kubelet")); err != nil {
		t.Fatal(err)
	}
	if _, ok := Find(opts); ok {
		t.Error("found binaries with kubelet missing")
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv(EnvDir, "/somewhere")
	if got := DefaultDir("v1.36.3"); got != "/somewhere" {
		t.Errorf("DefaultDir with %s set = %q", EnvDir, got)
	}
	t.Setenv(EnvDir, "")
	t.Setenv("XDG_CACHE_HOME", "/cache")
	if got := DefaultDir("v1.36.3"); got != "/cache/vnet-cni-k8s/v1.36.3" {
		t.Errorf("DefaultDir = %q", got)
	}
}

func TestModuleBuildArgs(t *testing.T) {
	m := Containerd("v2.4.2")
	if got, want := m.Names(), []string{"containerd", "containerd-shim-runc-v2", "ctr"}; !slices.Equal(got, want) {
		t.Errorf("names %q, want %q", got, want)
	}
	joined := strings.Join(m.BuildArgs("/out/"), " ")
	for _, want := range []string{
		"-mod=mod", "-trimpath", "-o /out/", "-tags no_btrfs,no_devmapper,no_zfs",
		"github.com/containerd/containerd/v2/version.Version=v2.4.2",
		" github.com/containerd/containerd/v2/cmd/containerd ",
		" github.com/containerd/containerd/v2/cmd/ctr",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("build args %q lack %q", joined, want)
		}
	}
	if got := CNIPlugins("v1.9.1").BuildArgs("/o/"); slices.Contains(got, "-tags") {
		t.Errorf("cni plugins built with tags: %q", got)
	}
}

func TestDefaultModuleDir(t *testing.T) {
	t.Setenv(EnvDir, "/cache/k8s")
	for m, want := range map[string]string{
		"github.com/containerd/containerd/v2":    "/cache/k8s/containerd-v2.4.2",
		"github.com/containernetworking/plugins": "/cache/k8s/plugins-v2.4.2",
	} {
		if got := DefaultModuleDir(Module{Path: m, Version: "v2.4.2"}); got != want {
			t.Errorf("DefaultModuleDir(%s) = %s, want %s", m, got, want)
		}
	}
}

func TestFindModuleNeedsStamp(t *testing.T) {
	dir := t.TempDir()
	m := CNIPlugins("v1.9.1")
	opts := Options{Dir: dir}
	for _, n := range m.Names() {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := FindModule(opts, m); ok {
		t.Fatal("found a build without a stamp")
	}
	if err := os.WriteFile(filepath.Join(dir, stampName), []byte(m.stamp()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := FindModule(opts, m); !ok {
		t.Fatal("complete build not found")
	}
	if _, ok := FindModule(opts, CNIPlugins("v1.9.0")); ok {
		t.Fatal("found another version's build")
	}
}
