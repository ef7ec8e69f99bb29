package ec2

import (
	"encoding/json"
	"net/http"

	"github.com/vnet-cni/vnet-cni/cloud/sim/simadmin"
)

// AdminHandler serves the simulator's control endpoints (see
// simadmin.Handler): the request counters and the faults, and
//
//	POST /instances/{id}/terminate   terminate an instance (Terminate);
//	                                 answers the Termination, 404 for an unknown instance
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", simadmin.Handler(simadmin.Control[Faults]{
		Name: "ec2", Log: s.log, Counters: &s.stats,
		Faults: s.Faults, SetFaults: s.SetFaults, Validate: Faults.validate,
	}))
	mux.HandleFunc("POST /instances/{id}/terminate", func(w http.ResponseWriter, r *http.Request) {
		t, err := s.Terminate(r.PathValue("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		body, err := json.Marshal(t)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write(body)
	})
	return mux
}
