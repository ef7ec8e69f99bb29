package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
)

// simProcess is `vnet-sim up` running as a child process.
type simProcess struct {
	bin    string
	prefix string
	cmd    *exec.Cmd
	done   chan struct{}
	desc   sim.Description
	token  string
}

// startSim runs `vnet-sim up` in its own process group (a terminal's Ctrl-C
// reaches only the demo, which tears down in order) and reads sim.json from
// the path it prints.
func startSim(ctx context.Context, binDir, dir string, cloud sim.Cloud, instanceType string, nodes int, logPath string) (*simProcess, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	s := &simProcess{
		bin:    filepath.Join(binDir, "vnet-sim"),
		prefix: "demo" + hex.EncodeToString(b[:3]),
		token:  hex.EncodeToString(b[3:]),
		done:   make(chan struct{}),
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"up", "--nodes", fmt.Sprint(nodes), "--dir", dir, "--prefix", s.prefix, "--lro", "500ms", "--log-level", "warn"}
	if cloud == sim.CloudAWS {
		// An attachment takes 500ms as above; sim.json carries static
		// credentials for the demo's own EC2 reads.
		args = append(args, "--cloud", "aws", "--instance-type", instanceType)
	} else {
		args = append(args, "--poll", "250ms", "--static-token", s.token)
	}
	s.cmd = exec.Command(s.bin, args...)
	s.cmd.Stderr = logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		_ = logf.Close()
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", s.bin, err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		// Drain, so that the child never blocks on a full pipe.
		for sc.Scan() {
		}
	}()
	go func() {
		_ = s.cmd.Wait()
		_ = logf.Close()
		close(s.done)
	}()
	var path string
	select {
	case path = <-lines:
	case <-ctx.Done():
		return s, ctx.Err()
	case <-time.After(60 * time.Second):
		return s, errors.New("vnet-sim did not come up within 60s")
	}
	if path == "" {
		<-s.done
		return s, fmt.Errorf("vnet-sim exited without coming up (see %s)", logPath)
	}
	data, err := os.ReadFile(strings.TrimSpace(path))
	if err != nil {
		return s, fmt.Errorf("read sim.json: %w", err)
	}
	if err := json.Unmarshal(data, &s.desc); err != nil {
		return s, fmt.Errorf("decode sim.json: %w", err)
	}
	return s, nil
}

// stop sends SIGTERM (vnet-sim removes everything it created) and waits;
// after 20s it kills it and removes its namespaces with `vnet-sim down`.
func (s *simProcess) stop() error {
	if s == nil || s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal vnet-sim: %w", err)
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(20 * time.Second):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	out, err := exec.Command(s.bin, "down", "--prefix", s.prefix).CombinedOutput()
	return errors.Join(errors.New("vnet-sim did not stop within 20s of SIGTERM; killed it"),
		wrapOutput("vnet-sim down", out, err))
}

func wrapOutput(what string, out []byte, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w: %s", what, err, strings.TrimSpace(string(out)))
}

// staticToken is the bearer token vnet-sim was started to accept, so that
// the demo reads the API from the host as an operator's tool would.
type staticToken string

func (t staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(t), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// armFactory is an armnetwork client factory of the simulated cloud, built
// exactly as for Azure but for the endpoint and the CA.
func (s *simProcess) armFactory() (*armnetwork.ClientFactory, error) {
	pem, err := os.ReadFile(s.desc.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read the sim's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", s.desc.CAFile)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Proxy:           nil,
	}}
	opts := &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: azcloud.Configuration{Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: s.desc.ARMEndpoint, Audience: s.desc.ARMAudience},
		}},
		Transport: client,
	}}
	return armnetwork.NewClientFactory(s.desc.SubscriptionID, staticToken(s.token), opts)
}

// nicsClient is the armnetwork client of the simulated cloud's NICs.
func (s *simProcess) nicsClient() (*armnetwork.InterfacesClient, error) {
	f, err := s.armFactory()
	if err != nil {
		return nil, err
	}
	return f.NewInterfacesClient(), nil
}

// routeTablesClient is the armnetwork client of the simulated cloud's
// route tables.
func (s *simProcess) routeTablesClient() (*armnetwork.RouteTablesClient, error) {
	f, err := s.armFactory()
	if err != nil {
		return nil, err
	}
	return f.NewRouteTablesClient(), nil
}

// leftovers lists the namespaces of the run that still exist.
func (s *simProcess) leftovers() []string {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), s.prefix+"-") {
			left = append(left, e.Name())
		}
	}
	return left
}
