package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/vnet-cni/vnet-cni/ipamd/config"
)

// The kubernetes section: a kubeconfig file, or the in-cluster
// configuration; either missing is a configuration error at start.
func TestKubeAgentConfiguration(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	c := clientcmdapi.NewConfig()
	c.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:6443"}
	c.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	c.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	c.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"kubernetes": {"enabled": true, "kubeconfig": "` + path + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubeAgent(cfg, "node-1", nil, log); err != nil {
		t.Errorf("with a kubeconfig: %v", err)
	}
	cfg.Kubernetes.Kubeconfig = filepath.Join(t.TempDir(), "missing")
	if _, err := kubeAgent(cfg, "node-1", nil, log); err == nil {
		t.Error("a missing kubeconfig was accepted")
	}
	cfg.Kubernetes.Kubeconfig = ""
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		if _, err := kubeAgent(cfg, "node-1", nil, log); err == nil || !strings.Contains(err.Error(), "kubernetes client configuration") {
			t.Errorf("in-cluster outside a cluster: %v", err)
		}
	}
}
