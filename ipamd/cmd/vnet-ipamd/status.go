package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

// status prints the daemon's pool and assignments.
func status(args []string) error {
	fs := flag.NewFlagSet("vnet-ipamd status", flag.ContinueOnError)
	socket := fs.String("socket", api.DefaultSocketPath, "the daemon's socket")
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := api.NewClient(*socket)
	st, err := client.Status(ctx, api.StatusRequest{})
	if err != nil {
		return err
	}
	list, err := client.List(ctx, api.ListRequest{})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"status": st, "addresses": list.Addresses})
	}
	printStatus(os.Stdout, st, list, time.Now())
	return nil
}

func printStatus(w io.Writer, st api.StatusResponse, list api.ListResponse, now time.Time) {
	ready := "yes"
	if !st.Ready {
		ready = "no (" + st.Reason + ")"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s\n", st.NodeName)
	fmt.Fprintf(tw, "ready\t%s\n", ready)
	fmt.Fprintf(tw, "interface\t%s\n", st.Interface)
	fmt.Fprintf(tw, "primary IP\t%s\n", st.PrimaryIP)
	fmt.Fprintf(tw, "subnet / gateway\t%s via %s\n", st.Subnet, st.Gateway)
	cidrs := make([]string, len(st.VNetCIDRs))
	for i, c := range st.VNetCIDRs {
		cidrs[i] = c.String()
	}
	fmt.Fprintf(tw, "vnet\t%s\n", strings.Join(cidrs, ", "))
	p := st.Pool
	quarantined := ""
	if p.Quarantined > 0 {
		quarantined = fmt.Sprintf(", %d quarantined", p.Quarantined)
	}
	from := ""
	if p.MaxFrom != "" {
		from = " (targets from " + p.MaxFrom + ")"
	}
	fmt.Fprintf(tw, "pool\t%d free, %d assigned, %d cooling, %d releasing%s; %d of max %d%s\n",
		p.Free, p.Assigned, p.Cooling, p.Releasing, quarantined, p.Total, p.Max, from)
	if st.LimitReached {
		fmt.Fprintf(tw, "limit\treached\n")
	}
	if st.LastCloudError != "" {
		fmt.Fprintf(tw, "last cloud error\t%s\n", st.LastCloudError)
	}
	for _, l := range st.Lost {
		why := "being put back"
		if l.RestoreError != "" {
			why = "cannot be put back: " + l.RestoreError
		}
		fmt.Fprintf(tw, "lost\t%s (%s, %s/%s) gone from its interface for %s, kept out of the pool; %s\n",
			l.IP, l.State, l.PodNamespace, l.PodName, now.Sub(l.Since).Round(time.Second), why)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tSTATE\tFOR\tPOD\tCONTAINER\tIFNAME")
	for _, a := range list.Addresses {
		pod, cid := "", a.ContainerID
		if a.PodName != "" {
			pod = a.PodNamespace + "/" + a.PodName
		}
		if len(cid) > 12 {
			cid = cid[:12]
		}
		state := a.State
		if !a.LostSince.IsZero() {
			state += " (lost)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.IP, state, now.Sub(a.Since).Round(time.Second), pod, cid, a.IfName)
	}
	_ = tw.Flush()
}
