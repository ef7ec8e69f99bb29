package ec2

import (
	"net/http"

	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// AdminHandler serves the simulator's control endpoints (see
// simadmin.Handler): the request counters and the faults.
func (s *Server) AdminHandler() http.Handler {
	return simadmin.Handler(simadmin.Control[Faults]{
		Name: "ec2", Log: s.log, Counters: &s.stats,
		Faults: s.Faults, SetFaults: s.SetFaults, Validate: Faults.validate,
	})
}
