// Command vnet-sim runs the simulated cloud, Azure or (with --cloud aws)
// AWS: `vnet-sim up` starts the control plane, the metadata services and
// the fabric and serves until interrupted; `down` removes what a crashed
// run left; `faults` and `stats` talk to the admin endpoint of a running
// simulation.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/vnet-cni/vnet-cni/cloud/sim"
	"github.com/vnet-cni/vnet-cni/cloud/sim/fabric"
)

const usage = `usage:
  vnet-sim up     [--cloud azure|aws] [--nodes N] [--dir DIR] [--prefix P] [--lro D] [--poll D] [--no-fabric] [--log-level L]
                  azure: [--static-token T] [--ip-address-count N] [--read-only-identity] [--max-routes N] [--route-effect-delay D]
                  aws:   [--instance-type T] [--region R] [--metadata-delay D]
  vnet-sim down   --dir DIR | --prefix P
  vnet-sim faults --dir DIR [--set JSON]
  vnet-sim stats  --dir DIR
  vnet-sim terminate --dir DIR --node N   (aws: N is a node's name, index or instance id)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "faults":
		err = faults(os.Args[2:])
	case "stats":
		err = stats(os.Args[2:])
	case "terminate":
		err = terminate(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "vnet-sim: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vnet-sim: %v\n", err)
		os.Exit(1)
	}
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	cloud := fs.String("cloud", string(sim.CloudAzure), "the cloud to simulate: azure or aws")
	nodes := fs.Int("nodes", 2, "number of VMs")
	dir := fs.String("dir", "", "directory for ca.pem and sim.json (default /run/vnet-sim/PREFIX)")
	prefix := fs.String("prefix", "", "name prefix of this run's namespaces (default random)")
	lro := fs.Duration("lro", time.Second, "how long a long-running operation stays InProgress (aws: an attachment attaching or detaching)")
	poll := fs.Duration("poll", time.Second, "poll interval the API advertises for long-running operations")
	token := fs.String("static-token", "", "azure: a bearer token the control plane accepts besides IMDS-issued ones")
	instanceType := fs.String("instance-type", "m5.large", "aws: the type of every instance")
	region := fs.String("region", "us-east-1", "aws: the region")
	metadataDelay := fs.Duration("metadata-delay", 500*time.Millisecond, "aws: how long a new address takes to appear in IMDS")
	noFabric := fs.Bool("no-fabric", false, "run the control plane only (no namespaces)")
	templateIPs := fs.Int("ip-address-count", 0, "azure: secondary ipConfigurations every NIC is created with, as a cluster template's ipAddressCount")
	readOnly := fs.Bool("read-only-identity", false, "azure: nodes' managed identities may only read (ARM answers their writes 403 AuthorizationFailed)")
	maxRoutes := fs.Int("max-routes", 1000, "azure: routes per route table (Azure's default since 2026; 400 in older subscriptions)")
	routeDelay := fs.Duration("route-effect-delay", sim.DefaultRouteEffectDelay, "azure: how long a route table change takes to reach the data plane after ARM reports it succeeded")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch c := sim.Cloud(*cloud); {
	case c != sim.CloudAzure && c != sim.CloudAWS:
		return fmt.Errorf("--cloud %q: want azure or aws", *cloud)
	case c == sim.CloudAWS && *token != "":
		return errors.New("--static-token is for azure; aws writes static credentials to sim.json")
	}
	if *routeDelay == 0 {
		*routeDelay = -1 // at once; 0 would mean the default
	}
	if sim.Cloud(*cloud) == sim.CloudAWS {
		*maxRoutes, *routeDelay = 0, 0 // route tables are Azure's here
	}
	if *metadataDelay == 0 {
		*metadataDelay = -1 // at once; 0 would mean the default
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if *prefix == "" {
		*prefix = randomPrefix()
	}
	ownDir := *dir == ""
	if ownDir {
		*dir = filepath.Join("/run/vnet-sim", *prefix)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	s, err := sim.Start(ctx, sim.Options{
		Cloud: sim.Cloud(*cloud), Nodes: *nodes, Prefix: *prefix, Dir: *dir,
		OperationDuration: *lro, PollInterval: *poll,
		StaticToken: *token, NoFabric: *noFabric, Logger: logger,
		TemplateIPs: *templateIPs, ReadOnlyIdentity: *readOnly,
		MaxRoutes: *maxRoutes, RouteEffectDelay: *routeDelay,
		InstanceType: *instanceType, Region: *region, MetadataDelay: *metadataDelay,
	})
	if err != nil {
		if ownDir {
			_ = os.RemoveAll(*dir)
		}
		return err
	}
	d := s.Description()
	if d.Cloud == sim.CloudAWS {
		logger.Info("vnet-sim up", "cloud", d.Cloud, "prefix", d.Prefix, "nodes", len(d.Nodes), "ec2", d.EC2Endpoint, "region", d.Region, "admin", d.AdminEndpoint)
	} else {
		logger.Info("vnet-sim up", "cloud", d.Cloud, "prefix", d.Prefix, "nodes", len(d.Nodes), "arm", d.ARMEndpoint, "admin", d.AdminEndpoint)
	}
	// The one line on stdout: where the description is. Scripts wait for it.
	fmt.Println(filepath.Join(*dir, "sim.json"))
	<-ctx.Done()
	logger.Info("vnet-sim shutting down", "prefix", d.Prefix)
	err = s.Close()
	if ownDir {
		err = errors.Join(err, os.RemoveAll(*dir))
		_ = os.Remove(filepath.Dir(*dir)) // /run/vnet-sim, when no other run uses it
	}
	return err
}

func randomPrefix() string {
	return fmt.Sprintf("vs%06x", time.Now().UnixNano()&0xffffff)
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the run (reads sim.json)")
	prefix := fs.String("prefix", "", "name prefix of the run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *prefix == "" {
		if *dir == "" {
			return errors.New("down needs --dir or --prefix")
		}
		d, err := readDescription(*dir)
		if err != nil {
			return err
		}
		*prefix = d.Prefix
	}
	return fabric.Cleanup(*prefix)
}

func faults(args []string) error {
	fs := flag.NewFlagSet("faults", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the run (reads sim.json)")
	set := fs.String("set", "", "faults as JSON to install (omit to print the current ones)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := readDescription(*dir)
	if err != nil {
		return err
	}
	if *set == "" {
		return adminCall(http.MethodGet, d.AdminEndpoint+"/faults", nil)
	}
	if !json.Valid([]byte(*set)) {
		return errors.New("--set is not valid JSON")
	}
	return adminCall(http.MethodPut, d.AdminEndpoint+"/faults", []byte(*set))
}

func stats(args []string) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the run (reads sim.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := readDescription(*dir)
	if err != nil {
		return err
	}
	return adminCall(http.MethodGet, d.AdminEndpoint+"/stats", nil)
}

// terminate terminates a node's instance as EC2 does: its ENIs with
// DeleteOnTermination are deleted, the others detached and left available.
// The node's namespace stays (a dead VM's network is the fabric's, and the
// instance is gone from EC2).
func terminate(args []string) error {
	fs := flag.NewFlagSet("terminate", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of the run (reads sim.json)")
	node := fs.String("node", "", "the node: its name (node1), index (1) or instance id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := readDescription(*dir)
	if err != nil {
		return err
	}
	if d.Cloud != sim.CloudAWS {
		return fmt.Errorf("terminate is for an aws run, this one is %s", d.Cloud)
	}
	id := ""
	for i, n := range d.Nodes {
		if *node == n.Name || *node == n.InstanceID || *node == strconv.Itoa(i) {
			id = n.InstanceID
		}
	}
	if id == "" {
		return fmt.Errorf("--node %q: no such node in %s", *node, *dir)
	}
	return adminCall(http.MethodPost, d.AdminEndpoint+"/instances/"+url.PathEscape(id)+"/terminate", nil)
}

func readDescription(dir string) (sim.Description, error) {
	var d sim.Description
	if dir == "" {
		return d, errors.New("--dir is required")
	}
	data, err := os.ReadFile(filepath.Join(dir, "sim.json"))
	if err != nil {
		return d, fmt.Errorf("read description: %w", err)
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return d, fmt.Errorf("decode %s: %w", filepath.Join(dir, "sim.json"), err)
	}
	return d, nil
}

func adminCall(method, url string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read admin response: %w", err)
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("admin endpoint answered %s: %s", resp.Status, bytes.TrimSpace(out))
	}
	_, err = os.Stdout.Write(out)
	return err
}
