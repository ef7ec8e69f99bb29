package daemon

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vnet-cni/vnet-cni/cloud"
	"github.com/vnet-cni/vnet-cni/ipamd/store"
)

// Metrics are the daemon's Prometheus metrics, in a registry of their own.
type Metrics struct {
	registry           *prometheus.Registry
	allocations        *prometheus.CounterVec
	releases           prometheus.Counter
	allocatedFromCloud prometheus.Counter
	releasedToCloud    prometheus.Counter
	cloudCalls         *prometheus.CounterVec
	cloudSeconds       *prometheus.HistogramVec
	allocateSeconds    prometheus.Histogram
	errors             *prometheus.CounterVec
	datapathChecks     prometheus.Counter
	datapathErrors     prometheus.Counter
	datapathRepairs    prometheus.Counter
	conflistRepairs    prometheus.Counter
	storeFailures      prometheus.Counter
	supersededReleases prometheus.Counter
	restores           *prometheus.CounterVec
	recoveries         *prometheus.CounterVec
	witnessRebuilt     prometheus.Counter
	recoveryReleased   prometheus.Counter
}

const namespace = "vnetcni_ipamd"

func newMetrics(d *Daemon) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "allocations_total",
			Help: "Allocate calls by result (ok, try_again, not_ready, error).",
		}, []string{"result"}),
		releases: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "releases_total",
			Help: "Addresses released by pods (release and gc), entering cooldown.",
		}),
		allocatedFromCloud: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "cloud_addresses_added_total",
			Help: "Secondary addresses added to the NIC.",
		}),
		releasedToCloud: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "cloud_addresses_removed_total",
			Help: "Secondary addresses removed from the NIC.",
		}),
		cloudCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "cloud_calls_total",
			Help: "Cloud operations by operation and result (ok or the error kind).",
		}, []string{"operation", "result"}),
		cloudSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cloud_call_duration_seconds",
			Help:    "Duration of cloud operations, long-running operations polled to the end.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60},
		}, []string{"operation"}),
		allocateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "allocate_duration_seconds",
			Help:    "Duration of successful Allocate calls, waiting for a refill included.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5},
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "cloud_errors_total",
			Help: "Failed pool-worker rounds by cloud error kind.",
		}, []string{"kind"}),
		datapathChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "datapath_checks_total",
			Help: "Checks of the node's datapath (bridge and nftables tables) by the daemon.",
		}),
		datapathErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "datapath_errors_total",
			Help: "Checks of the node's datapath that failed to set it up.",
		}),
		datapathRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "datapath_repairs_total",
			Help: "Changes the daemon made to repair the node's datapath after it was set up (tables rebuilt, elements restored, bridge settings).",
		}),
		conflistRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "conflist_repairs_total",
			Help: "Times the daemon wrote the CNI conflist again after it was deleted or changed.",
		}),
		storeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "store_unwritable_total",
			Help: "Times the store stopped being able to write its files (the daemon was not ready until it could).",
		}),
		supersededReleases: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "superseded_releases_total",
			Help: "Releases (spooled, rpc or gc) made before the attachment's latest allocation, or spooled in an earlier boot, that freed nothing.",
		}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "address_restores_total",
			Help: "Addresses removed outside vnet-ipamd that the daemon tried to put back on their interface, by result (ok or the cloud error kind of the refusal).",
		}, []string{"result"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "store_recoveries_total",
			Help: "Recoveries of the address store from the pods' veths and the cloud, by reason (damaged: the files were damaged; lost: the store was empty on a node with vnet-cni's datapath).",
		}, []string{"reason"}),
		witnessRebuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "witness_rebuilt_total",
			Help: "Assignments rebuilt from a live pod's veth that the store did not have.",
		}),
		recoveryReleased: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "recovery_released_total",
			Help: "Assignments of a damaged store that no pod's veth held, at the start of its recovery or at its end, released by the recovery.",
		}),
	}
	addresses := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "addresses",
		Help: "Secondary addresses held by the daemon, by state.",
	}, []string{"state"})
	lost := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "lost_addresses",
		Help: "Addresses the daemon assigned that are gone from their interface in the cloud (removed outside vnet-ipamd), kept with their owner and out of the pool, by state.",
	}, []string{"state"})
	m.registry.MustRegister(m.allocations, m.releases, m.allocatedFromCloud, m.releasedToCloud,
		m.cloudCalls, m.cloudSeconds, m.allocateSeconds, m.errors,
		m.datapathChecks, m.datapathErrors, m.datapathRepairs, m.conflistRepairs,
		m.supersededReleases, m.restores, m.recoveries, m.witnessRebuilt, m.recoveryReleased,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "witness_conflicts",
			Help: "Live pods whose address the store holds for another attachment, or nowhere (kept out of the pool; see the log).",
		}, func() float64 { return float64(d.witnessConflictCount()) }),
		&stateCollector{d: d, desc: addresses}, &lostCollector{d: d, desc: lost},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "ready", Help: "1 when the daemon is ready to serve pods.",
		}, func() float64 { return boolGauge(d.isReady()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "store_writable", Help: "1 while the store can write its files (0: a full disk, an I/O error).",
		}, func() float64 { return boolGauge(d.isStoreWritable()) }),
		m.storeFailures,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "limit_reached", Help: "1 when the pool wants more addresses than its limits allow.",
		}, func() float64 { return boolGauge(d.isLimitReached()) }),
		&ceilingCollector{d: d, desc: prometheus.NewDesc(namespace+"_pool_ceiling",
			"The most secondary addresses the pool may hold now (maxIPs within the provider's limit), labelled by what set the targets (config, node, vnetnode, default).",
			[]string{"from"}, nil)},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// Registry returns the registry, for tests that gather the metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

func (m *Metrics) observeCloud(op string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = cloud.KindOf(err).String()
	}
	m.cloudCalls.WithLabelValues(op, result).Inc()
	m.cloudSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// stateCollector reads the store's counts at scrape time.
type stateCollector struct {
	d    *Daemon
	desc *prometheus.GaugeVec
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { c.desc.Describe(ch) }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.d.store.Counts()
	for st, n := range map[store.State]int{
		store.StateFree: counts.Free, store.StateAssigned: counts.Assigned,
		store.StateCooling: counts.Cooling, store.StateReleasing: counts.Releasing,
		store.StateQuarantined: counts.Quarantined,
	} {
		g := c.desc.WithLabelValues(string(st))
		g.Set(float64(n))
		g.Collect(ch)
	}
}

// ceilingCollector reports the pool's ceiling and what set it.
type ceilingCollector struct {
	d    *Daemon
	desc *prometheus.Desc
}

func (c *ceilingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *ceilingCollector) Collect(ch chan<- prometheus.Metric) {
	c.d.mu.Lock()
	n, from := c.d.ceilingLocked(), c.d.targetsFrom
	c.d.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), from)
}

// lostCollector counts the lost addresses by state at scrape time.
type lostCollector struct {
	d    *Daemon
	desc *prometheus.GaugeVec
}

func (c *lostCollector) Describe(ch chan<- *prometheus.Desc) { c.desc.Describe(ch) }

func (c *lostCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[store.State]int{store.StateAssigned: 0, store.StateCooling: 0}
	for _, r := range lostRecords(c.d.store.List()) {
		n[r.State]++
	}
	for st, v := range n {
		g := c.desc.WithLabelValues(string(st))
		g.Set(float64(v))
		g.Collect(ch)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (d *Daemon) isReady() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.readyLocked()
}

func (d *Daemon) isStoreWritable() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.storeErr == nil
}

func (d *Daemon) witnessConflictCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.witnessConflicts)
}

func (d *Daemon) isLimitReached() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limitReached
}
