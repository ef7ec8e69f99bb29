package routecontroller

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "vnetcni_ipamd"

type metrics struct {
	puts       prometheus.Counter
	syncErrors *prometheus.CounterVec
	overLimit  prometheus.Gauge
	rejected   prometheus.Gauge
	programmed prometheus.Gauge
	leader     prometheus.Gauge
}

// newMetrics makes the controller's metrics and registers them on reg
// unless it is nil.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		puts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "route_table_puts_total",
			Help: "Route table PUTs made by the route controller (412s included)."}),
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "route_sync_errors_total",
			Help: "Failed route table syncs of the route controller, by the cloud error's kind."}, []string{"kind"}),
		overLimit: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "routes_over_limit",
			Help: "Nodes whose route did not fit under the route table's limit in the last sync."}),
		rejected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "routes_rejected",
			Help: "Nodes whose route was rejected (no, bad or overlapping pod CIDR, no address) in the last sync."}),
		programmed: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "routes_programmed",
			Help: "Nodes whose route was in the route table as wanted after the last sync."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "route_controller_leader",
			Help: "1 while this daemon holds the route controller's Lease."}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.puts, m.syncErrors, m.overLimit, m.rejected, m.programmed, m.leader} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
