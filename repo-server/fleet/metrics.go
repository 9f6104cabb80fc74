package fleet

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the fleet's state from the store on each scrape, with SQL
// aggregates (no per-device series):
//
//	edgeward_fleet_devices                       enrolled devices
//	edgeward_fleet_devices_quarantined           quarantined devices
//	edgeward_fleet_devices_decommissioned        decommissioned devices (also in devices)
//	edgeward_fleet_install_reports_total{rollout,outcome}
//	edgeward_fleet_downloaded_bytes_total{rollout}
//	edgeward_attestation_verdicts_total{verdict}
//	edgeward_rollout_wave{rollout}               index of the current wave
//	edgeward_rollout_status{rollout,status}      1 for the rollout's status
//
// The update success rate of a rollout is then
// install_reports_total{outcome="committed"} / sum by (rollout) (install_reports_total),
// and the attestation pass rate verdicts_total{verdict="trusted"} / sum(verdicts_total).
//
// A scrape's figures are reused for the scrapes of the next CacheFor (5 seconds), and
// concurrent scrapes wait for one computation: /metrics is public, the aggregates scan
// whole tables, and on sqlite they hold the store's only connection, which the check-in
// committer needs. However often and from however many connections it is scraped, the
// store runs them at most once per CacheFor.
type Collector struct {
	s       *Store
	timeout time.Duration
	log     *slog.Logger

	// CacheFor is how long one computation serves scrapes. Zero: 5 seconds; negative:
	// every scrape computes (tests).
	CacheFor time.Duration
	mu       sync.Mutex // one computation at a time; guards cached, cachedAt
	cached   []prometheus.Metric
	cachedAt time.Time

	devices, quarantined, decommissioned, reports, bytes, verdicts, wave, status *prometheus.Desc
}

// NewCollector returns a collector over s; register it on the server's registry.
// Each scrape's queries are bounded by timeout (zero: 5s); a failed query is logged
// and its metrics are left out of that scrape.
func NewCollector(s *Store, timeout time.Duration, log *slog.Logger) *Collector {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Collector{s: s, timeout: timeout, log: log,
		devices:        prometheus.NewDesc("edgeward_fleet_devices", "Enrolled devices.", nil, nil),
		quarantined:    prometheus.NewDesc("edgeward_fleet_devices_quarantined", "Quarantined devices.", nil, nil),
		decommissioned: prometheus.NewDesc("edgeward_fleet_devices_decommissioned", "Devices taken out of service (their check-ins are refused); also counted in edgeward_fleet_devices.", nil, nil),
		reports:        prometheus.NewDesc("edgeward_fleet_install_reports_total", "Install reports by rollout and outcome.", []string{"rollout", "outcome"}, nil),
		bytes:          prometheus.NewDesc("edgeward_fleet_downloaded_bytes_total", "Bytes downloaded for installs, by rollout.", []string{"rollout"}, nil),
		verdicts:       prometheus.NewDesc("edgeward_attestation_verdicts_total", "Attestation verdicts by verdict.", []string{"verdict"}, nil),
		wave:           prometheus.NewDesc("edgeward_rollout_wave", "Index (from 0) of the rollout's current wave.", []string{"rollout"}, nil),
		status:         prometheus.NewDesc("edgeward_rollout_status", "1 for the rollout's current status.", []string{"rollout", "status"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.devices, c.quarantined, c.decommissioned, c.reports, c.bytes, c.verdicts, c.wave, c.status} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	age := c.CacheFor
	if age == 0 {
		age = 5 * time.Second
	}
	if c.cached == nil || age < 0 || time.Since(c.cachedAt) >= age {
		c.cached = c.cached[:0]
		c.collect(func(m prometheus.Metric) { c.cached = append(c.cached, m) })
		c.cachedAt = time.Now()
	}
	for _, m := range c.cached {
		ch <- m
	}
}

// collect queries the store and passes each metric to emit.
func (c *Collector) collect(emit func(prometheus.Metric)) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var n, q, dec float64
	if err := c.s.db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(quarantined), 0), coalesce(sum(CASE WHEN decommissioned_at > 0 THEN 1 ELSE 0 END), 0) FROM devices`).Scan(&n, &q, &dec); err != nil {
		c.log.Error("fleet metrics: devices", "err", err)
	} else {
		emit(prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, n))
		emit(prometheus.MustNewConstMetric(c.quarantined, prometheus.GaugeValue, q))
		emit(prometheus.MustNewConstMetric(c.decommissioned, prometheus.GaugeValue, dec))
	}
	c.rows(ctx, "reports", `SELECT rollout_id, outcome, count(*) FROM reports GROUP BY rollout_id, outcome`, func(scan func(...any) error) error {
		var r, o string
		var v float64
		if err := scan(&r, &o, &v); err != nil {
			return err
		}
		emit(prometheus.MustNewConstMetric(c.reports, prometheus.CounterValue, v, r, o))
		return nil
	})
	c.rows(ctx, "bytes", `SELECT rollout_id, sum(bytes) FROM reports GROUP BY rollout_id`, func(scan func(...any) error) error {
		var r string
		var v float64
		if err := scan(&r, &v); err != nil {
			return err
		}
		emit(prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, v, r))
		return nil
	})
	c.rows(ctx, "verdicts", `SELECT verdict, count(*) FROM verdicts GROUP BY verdict`, func(scan func(...any) error) error {
		var vd string
		var v float64
		if err := scan(&vd, &v); err != nil {
			return err
		}
		emit(prometheus.MustNewConstMetric(c.verdicts, prometheus.CounterValue, v, vd))
		return nil
	})
	states, err := c.s.RolloutStates(ctx)
	if err != nil {
		c.log.Error("fleet metrics: rollouts", "err", err)
		return
	}
	for id, st := range states {
		status := st.Status
		if status == "" {
			status = "active"
		}
		emit(prometheus.MustNewConstMetric(c.wave, prometheus.GaugeValue, float64(st.Wave), id))
		emit(prometheus.MustNewConstMetric(c.status, prometheus.GaugeValue, 1, id, string(status)))
	}
}

func (c *Collector) rows(ctx context.Context, what, query string, each func(scan func(...any) error) error) {
	rows, err := c.s.db.QueryContext(ctx, query)
	if err != nil {
		c.log.Error("fleet metrics", "query", what, "err", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows.Scan); err != nil {
			c.log.Error("fleet metrics", "query", what, "err", err)
			return
		}
	}
	if err := rows.Err(); err != nil {
		c.log.Error("fleet metrics", "query", what, "err", err)
	}
}
