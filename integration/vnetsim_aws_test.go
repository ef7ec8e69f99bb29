package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/internal/namedns"
	"github.com/vnet-cni/vnet-cni/internal/nsnet"
	"github.com/vnet-cni/vnet-cni/internal/nstest"
)

// simUp is `bin/vnet-sim up --cloud aws` running as a child process.
type simUp struct {
	bin     string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	waitErr error         // valid once exited is closed
	desc    sim.Description
}

// wait waits up to timeout for the process to exit and returns its error.
func (u *simUp) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-u.exited:
		return u.waitErr
	case <-time.After(timeout):
		t.Fatalf("vnet-sim did not exit within %v", timeout)
		return nil
	}
}

func startSimAWS(t *testing.T, prefix, dir string) *simUp {
	t.Helper()
	bin, err := filepath.Abs("../bin/vnet-sim")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v (run make build first)", err)
	}
	u := &simUp{bin: bin, exited: make(chan struct{})}
	u.cmd = exec.Command(bin, "up", "--cloud", "aws", "--nodes", "2", "--instance-type", "t3.medium",
		"--dir", dir, "--prefix", prefix, "--lro", "100ms", "--metadata-delay", "0", "--log-level", "warn")
	var stderr bytes.Buffer
	u.cmd.Stderr = &stderr
	stdout, err := u.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-u.exited:
		default:
			_ = u.cmd.Process.Kill()
			<-u.exited
		}
		_ = exec.Command(bin, "down", "--prefix", prefix).Run()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		for sc.Scan() {
		}
		u.waitErr = u.cmd.Wait()
		close(u.exited)
	}()
	var path string
	select {
	case path = <-lines:
	case <-time.After(60 * time.Second):
		t.Fatal("vnet-sim did not come up within 60 s")
	}
	if path == "" {
		<-u.exited
		t.Fatalf("vnet-sim exited without coming up: %s", stderr.String())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &u.desc); err != nil {
		t.Fatal(err)
	}
	return u
}

// run runs a vnet-sim subcommand and returns its stdout.
func (u *simUp) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(u.bin, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("vnet-sim %v: %v: %s", args, err, ee.Stderr)
		}
		t.Fatalf("vnet-sim %v: %v", args, err)
	}
	return string(out)
}

// attemptCounter counts, per operation and HTTP status, the answers the
// client received: one for each attempt that reached the server.
type attemptCounter struct {
	mu sync.Mutex
	n  map[string]map[string]int
}

// add is an APIOptions entry: innermost in the deserialize step, it sees
// every attempt's raw response before the SDK decodes (or fails to) it.
func (a *attemptCounter) add(stack *middleware.Stack) error {
	return stack.Deserialize.Add(middleware.DeserializeMiddlewareFunc("vnetcni-count-attempts",
		func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (middleware.DeserializeOutput, middleware.Metadata, error) {
			out, md, err := next.HandleDeserialize(ctx, in)
			if resp, ok := out.RawResponse.(*smithyhttp.Response); ok {
				op := middleware.GetOperationName(ctx)
				a.mu.Lock()
				if a.n[op] == nil {
					a.n[op] = map[string]int{}
				}
				a.n[op][strconv.Itoa(resp.StatusCode)]++
				a.mu.Unlock()
			}
			return out, md, err
		}), middleware.After)
}

func (a *attemptCounter) of(op string) map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.n[op])
}

func namespacesOf(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir(namedns.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestVnetSimAWSBinary runs `vnet-sim up --cloud aws` as a binary: its
// sim.json is enough for the real SDK on the host (endpoint, CA, static
// credentials), IMDSv2 answers inside a node, faults and stats work through
// the admin endpoint, SIGTERM removes everything, and after a SIGKILL
// `vnet-sim down` does.
func TestVnetSimAWSBinary(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	prefix := nstest.Prefix(t)
	dir := t.TempDir()
	u := startSimAWS(t, prefix, dir)
	d := u.desc
	if d.Cloud != sim.CloudAWS || len(d.Nodes) != 2 || d.Nodes[0].InstanceType != "t3.medium" {
		t.Fatalf("sim.json: %+v", d)
	}

	pem, err := os.ReadFile(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(d.Region), config.WithCustomCABundle(bytes.NewReader(pem)),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(d.StaticCredentials.AccessKeyID, d.StaticCredentials.SecretAccessKey, "")))
	if err != nil {
		t.Fatal(err)
	}
	// The client resends only after a broken connection (net/http can
	// close a connection whose response has arrived while it still reads
	// the request body, aws-sdk-go-v2#2737), never after an API error;
	// sent counts what reached the sim so its stats can be checked.
	sent := &attemptCounter{n: map[string]map[string]int{}}
	client := ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		o.BaseEndpoint = aws.String(d.EC2Endpoint)
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 3
			so.Retryables = []retry.IsErrorRetryable{retry.RetryableConnectionError{}}
		})
		o.APIOptions = append(o.APIOptions, sent.add)
	})
	out, err := client.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{d.Nodes[0].InstanceID, d.Nodes[1].InstanceID}})
	if err != nil {
		t.Fatalf("DescribeInstances from sim.json: %v", err)
	}
	if n := len(out.Reservations); n != 2 {
		t.Errorf("%d reservations, want 2", n)
	}

	// Faults and stats through the admin endpoint.
	u.run(t, "faults", "--dir", dir, "--set", `{"errors":{"DescribeSubnets":{"rate":1,"status":500,"code":"InternalError"}}}`)
	_, err = client.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{d.SubnetID}})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "InternalError" {
		t.Errorf("DescribeSubnets under the fault: %v, want InternalError", err)
	}
	u.run(t, "faults", "--dir", dir, "--set", `{}`)
	if _, err := client.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{d.SubnetID}}); err != nil {
		t.Errorf("DescribeSubnets after the fault is removed: %v", err)
	}
	var stats struct {
		Calls map[string]map[string]int `json:"calls"`
	}
	if err := json.Unmarshal([]byte(u.run(t, "stats", "--dir", dir)), &stats); err != nil {
		t.Fatal(err)
	}
	if got := stats.Calls["DescribeSubnets"]; got["500"] < 1 || got["200"] < 1 || stats.Calls["DescribeInstances"]["200"] < 1 {
		t.Errorf("stats %v", stats.Calls)
	}
	for _, op := range []string{"DescribeInstances", "DescribeSubnets"} {
		if got, want := stats.Calls[op], sent.of(op); !maps.Equal(got, want) {
			t.Errorf("the sim counted %s %v, the client got answers %v", op, got, want)
		}
	}

	// IMDSv2 inside node1: the token, then the instance's own id.
	n := d.Nodes[1]
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsnet.DialContextIn(n.Netns)}}
	imdsDo := func(method, path string, hdr map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "http://169.254.169.254"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := imdsDo(http.MethodGet, "/latest/meta-data/instance-id", nil); st != http.StatusUnauthorized {
		t.Errorf("IMDSv1 inside %s: %d, want 401", n.Name, st)
	}
	st, tok := imdsDo(http.MethodPut, "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
	if st != http.StatusOK {
		t.Fatalf("token: %d", st)
	}
	if st, id := imdsDo(http.MethodGet, "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tok}); st != http.StatusOK || id != n.InstanceID {
		t.Errorf("instance-id inside %s: %d %q, want %s", n.Name, st, id, n.InstanceID)
	}

	// SIGTERM: vnet-sim removes every namespace (and with the vnet
	// namespace its nftables table) and exits 0.
	if got := namespacesOf(t, prefix); len(got) != 4 {
		t.Errorf("namespaces while up: %v, want 4", got)
	}
	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(d.VNetNetns), "nft", "list", "tables").Output(); err != nil || !strings.Contains(string(out), "table netdev fabric") {
		t.Errorf("nft tables in the vnet namespace: %q (%v)", out, err)
	}
	if err := u.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := u.wait(t, 30*time.Second); err != nil {
		t.Errorf("vnet-sim after SIGTERM: %v", err)
	}
	if got := namespacesOf(t, prefix); len(got) != 0 {
		t.Errorf("namespaces after SIGTERM: %v", got)
	}

	// SIGKILL leaves the namespaces; `vnet-sim down` removes them.
	prefix2 := nstest.Prefix(t)
	dir2 := t.TempDir()
	u2 := startSimAWS(t, prefix2, dir2)
	if err := u2.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = u2.wait(t, 30*time.Second) // killed: the error says so
	if got := namespacesOf(t, prefix2); len(got) != 4 {
		t.Errorf("namespaces after SIGKILL: %v, want 4", got)
	}
	u2.run(t, "down", "--dir", dir2)
	if got := namespacesOf(t, prefix2); len(got) != 0 {
		t.Errorf("namespaces after down: %v", got)
	}
}
