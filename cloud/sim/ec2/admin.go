package ec2

import (
	"encoding/json"
	"net/http"
)

// AdminHandler serves the simulator's control endpoints, meant for plain
// HTTP on loopback:
//
//	GET  /stats         the request counters (Stats)
//	POST /stats/reset   zero the counters
//	GET  /faults        the active faults (Faults)
//	PUT  /faults        replace the faults; answers the stored faults
//	POST /faults/reset  remove all faults
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("POST /stats/reset", func(w http.ResponseWriter, _ *http.Request) {
		s.ResetStats()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("PUT /faults", func(w http.ResponseWriter, r *http.Request) {
		var f Faults
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			http.Error(w, "decode faults: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := f.validate(); err != nil {
			http.Error(w, "invalid faults: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.SetFaults(f)
		s.log.Info("ec2 faults set", "faults", f)
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("POST /faults/reset", func(w http.ResponseWriter, _ *http.Request) {
		s.SetFaults(Faults{})
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "marshal response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
