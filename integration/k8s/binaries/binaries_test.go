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
