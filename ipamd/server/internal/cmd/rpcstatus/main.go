// Command rpcstatus makes one Status call, as the plugin does from a fresh
// process per pod; the protocol benchmark execs it. Usage: rpcstatus SOCKET.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vnet-cni/vnet-cni/ipamd/api"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "rpcstatus:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: rpcstatus SOCKET")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := api.NewClient(args[0]).Status(ctx, api.StatusRequest{})
	if err != nil {
		return err
	}
	if !st.Ready {
		return fmt.Errorf("not ready: %s", st.Reason)
	}
	return nil
}
