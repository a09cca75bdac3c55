//! `GET /metrics` (DESIGN §11): the agent's counters in the Prometheus
//! text format, kept and written by the `prometheus` crate. Counting is
//! an atomic add (plus, for a labelled series, a read-locked map lookup),
//! so the boot path pays next to nothing; the gauges that mirror the
//! status (mode, queue, conflicts, last sync) are set from its snapshot at
//! each scrape.
//!
//! One set per process: the agent is one process, and every layer that
//! counts (boots, TFTP, HTTP, the controller port, replay, the content
//! cache) reaches it through [`metrics`].

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// The process's counters: the boot path's and HTTP's here, TFTP's and
/// the controller link's in their own groups.
pub struct Metrics {
    registry: Registry,
    boots: IntCounterVec,
    boot_seconds: Histogram,
    http_requests: IntCounterVec,
    content_requests: IntCounterVec,
    dhcp_requests: IntCounterVec,
    /// Rendered boot scripts kept for the next boot (`boot::script_cache`).
    pub script_cache_entries: IntGauge,
    pub script_cache_bytes: IntGauge,
    script_cache_hits: IntCounter,
    script_cache_misses: IntCounter,
    /// The TFTP server's.
    pub tftp: TftpMetrics,
    /// The controller link's, the queue's and conflicts'.
    pub link: LinkMetrics,
}

/// The TFTP server's counters.
pub struct TftpMetrics {
    transfers: IntCounterVec,
    /// File bytes sent.
    pub bytes: IntCounter,
    /// Requests refused and transfers failed.
    pub errors: IntCounter,
    /// Packets or windows sent again after a timeout.
    pub retransmissions: IntCounter,
    /// Transfers under way.
    pub sessions: IntGauge,
}

/// The controller link's counters, and the queue's and conflicts' gauges.
pub struct LinkMetrics {
    controller_calls: IntCounterVec,
    controller_seconds: HistogramVec,
    mode: IntGaugeVec,
    /// Seconds the controller has been unreachable.
    pub offline_seconds: Gauge,
    queue_items: IntGaugeVec,
    /// Queued changes the controller took on replay.
    pub replayed: IntCounter,
    /// Node items not admitted to the queue.
    pub shed: IntCounter,
    /// Conflicts waiting to be settled.
    pub conflicts_open: IntGauge,
    /// Seconds since the last node sync.
    pub last_sync_age_seconds: Gauge,
}

/// Registers `metric` in `registry`; a name registered twice is a bug in
/// this file, caught by its test.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    metric
}

/// 0.1 ms … about 3 s, doubling.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()
}

// The definitions are constants: they cannot fail, and the test below
// checks that. Each helper makes a metric and registers it.

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        r,
        IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        r,
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    registered(
        r,
        Gauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        r,
        IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn latency(r: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    registered(
        r,
        Histogram::with_opts(opts).unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn latency_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    registered(
        r,
        HistogramVec::new(opts, labels).unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn unreachable_metric(name: &str) -> ! {
    panic!("metric {name}: invalid definition")
}

impl TftpMetrics {
    fn new(r: &Registry) -> TftpMetrics {
        TftpMetrics {
            transfers: counter_vec(
                r,
                "tftp_transfers_total",
                "TFTP requests by outcome: completed, aborted (by the client), failed, refused",
                &["outcome"],
            ),
            bytes: counter(r, "tftp_sent_bytes_total", "File bytes sent over TFTP"),
            errors: counter(
                r,
                "tftp_errors_total",
                "TFTP requests refused and transfers failed",
            ),
            retransmissions: counter(
                r,
                "tftp_retransmissions_total",
                "TFTP packets or windows sent again after a timeout",
            ),
            sessions: int_gauge(r, "tftp_active_sessions", "TFTP transfers under way"),
        }
    }
}

impl LinkMetrics {
    fn new(r: &Registry) -> LinkMetrics {
        LinkMetrics {
            controller_calls: counter_vec(
                r,
                "controller_calls_total",
                "Calls to the controller by call and outcome",
                &["call", "outcome"],
            ),
            controller_seconds: latency_vec(
                r,
                "controller_call_seconds",
                "Time of calls to the controller",
                &["call"],
            ),
            mode: int_gauge_vec(
                r,
                "mode",
                "1 for the agent's mode (standalone, online, offline), 0 for the others",
                &["mode"],
            ),
            offline_seconds: gauge(
                r,
                "offline_seconds",
                "Seconds the controller has been unreachable (0 when reachable)",
            ),
            queue_items: int_gauge_vec(
                r,
                "queue_items",
                "Queued changes for the controller by status and kind",
                &["status", "kind"],
            ),
            replayed: counter(
                r,
                "replayed_items_total",
                "Queued changes the controller took on replay",
            ),
            shed: counter(
                r,
                "shed_items_total",
                "Queue items caused by nodes that were not admitted",
            ),
            conflicts_open: int_gauge(r, "conflicts_open", "Conflicts waiting to be settled"),
            last_sync_age_seconds: gauge(
                r,
                "last_sync_age_seconds",
                "Seconds since the last node sync (0 before the first)",
            ),
        }
    }
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("siteboot".into()), None)
            .unwrap_or_else(|_| unreachable_metric("siteboot"));
        let r = &registry;
        let lookups = counter_vec(
            r,
            "script_cache_lookups_total",
            "Boots that found their script ready (hit) or rendered it (miss)",
            &["result"],
        );
        Metrics {
            boots: counter_vec(
                r,
                "boots_total",
                "Boot scripts served, by action and source",
                &["action", "source"],
            ),
            boot_seconds: latency(r, "boot_answer_seconds", "Time to answer a boot request"),
            http_requests: counter_vec(
                r,
                "http_requests_total",
                "HTTP requests by route and status code",
                &["route", "code"],
            ),
            content_requests: counter_vec(
                r,
                "content_requests_total",
                "Requests for the controller's files by outcome: hit (cached), miss",
                &["outcome"],
            ),
            dhcp_requests: counter_vec(
                r,
                "dhcp_requests_total",
                "ProxyDHCP requests by message type, client class and result",
                &["type", "class", "result"],
            ),
            script_cache_entries: int_gauge(
                r,
                "script_cache_entries",
                "Rendered boot scripts kept in memory for the next boot",
            ),
            script_cache_bytes: int_gauge(
                r,
                "script_cache_bytes",
                "Bytes of the rendered boot scripts kept in memory",
            ),
            script_cache_hits: lookups.with_label_values(&["hit"]),
            script_cache_misses: lookups.with_label_values(&["miss"]),
            tftp: TftpMetrics::new(r),
            link: LinkMetrics::new(r),
            registry,
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics not encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The `boots_total` series of one action and source, for a caller
    /// that keeps it (a lookup by label hashes both strings).
    pub fn boot_counter(&self, action: &str, source: &str) -> IntCounter {
        self.boots.with_label_values(&[action, source])
    }

    pub fn boot_answer_seconds(&self, seconds: f64) {
        self.boot_seconds.observe(seconds);
    }

    /// A boot that found its script kept (or not).
    pub fn script_cache_lookup(&self, hit: bool) {
        if hit {
            self.script_cache_hits.inc();
        } else {
            self.script_cache_misses.inc();
        }
    }

    pub fn tftp_outcome(&self, outcome: &str) {
        self.tftp.transfers.with_label_values(&[outcome]).inc();
    }

    /// The `http_requests_total` series of one route and code, for a
    /// caller that counts it often enough to keep it (the boot lane).
    pub fn http_request_counter(&self, route: &str, code: u16) -> prometheus::IntCounter {
        self.http_requests
            .with_label_values(&[route, &code.to_string()])
    }

    pub fn http_request(&self, route: &str, code: u16) {
        // The common codes without a new string per request.
        let common = match code {
            200 => Some("200"),
            202 => Some("202"),
            206 => Some("206"),
            304 => Some("304"),
            400 => Some("400"),
            401 => Some("401"),
            404 => Some("404"),
            409 => Some("409"),
            503 => Some("503"),
            _ => None,
        };
        match common {
            Some(text) => self.http_requests.with_label_values(&[route, text]).inc(),
            None => self
                .http_requests
                .with_label_values(&[route, &code.to_string()])
                .inc(),
        }
    }

    pub fn controller_call(&self, call: &str, outcome: &str, seconds: f64) {
        self.link
            .controller_calls
            .with_label_values(&[call, outcome])
            .inc();
        self.link
            .controller_seconds
            .with_label_values(&[call])
            .observe(seconds);
    }

    /// A ProxyDHCP request and what became of it (DESIGN §13).
    pub fn dhcp_request(&self, kind: &str, class: &str, result: &str) {
        self.dhcp_requests
            .with_label_values(&[kind, class, result])
            .inc();
    }

    /// The ProxyDHCP counts so far, as (type, class, result, count): the
    /// same numbers `/metrics` shows, for the status views.
    pub fn dhcp_counts(&self) -> Vec<(String, String, String, u64)> {
        use prometheus::core::Collector;
        let mut counts = Vec::new();
        for family in self.dhcp_requests.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                let count = metric.get_counter().get_value() as u64;
                counts.push((label("type"), label("class"), label("result"), count));
            }
        }
        counts
    }

    pub fn content_request(&self, outcome: &str) {
        self.content_requests.with_label_values(&[outcome]).inc();
    }

    pub fn set_queue(&self, status: &str, kind: &str, items: u64) {
        self.link
            .queue_items
            .with_label_values(&[status, kind])
            .set(i64::try_from(items).unwrap_or(i64::MAX));
    }

    /// Sets the mode gauges: 1 for `current`, 0 for the others.
    pub fn set_mode(&self, current: &str) {
        for mode in ["standalone", "online", "offline"] {
            self.link
                .mode
                .with_label_values(&[mode])
                .set(i64::from(mode == current));
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_defined_and_written() {
        // Its own registry: other unit tests in this process count into
        // the global one (a content cache hit, a boot) at the same time.
        let m = super::Metrics::new();
        m.boot_counter("install", "live").inc();
        m.boot_answer_seconds(0.001);
        m.tftp_outcome("completed");
        m.http_request("/api/v1/boot", 200);
        m.controller_call("health", "ok", 0.002);
        m.content_request("hit");
        m.set_queue("pending", "state_update", 3);
        m.set_mode("online");
        let text = m.encode();
        for series in [
            "siteboot_boots_total{action=\"install\",source=\"live\"} 1",
            "siteboot_boot_answer_seconds_count 1",
            "siteboot_tftp_transfers_total{outcome=\"completed\"} 1",
            "siteboot_http_requests_total{code=\"200\",route=\"/api/v1/boot\"} 1",
            "siteboot_controller_calls_total{call=\"health\",outcome=\"ok\"} 1",
            "siteboot_queue_items{kind=\"state_update\",status=\"pending\"} 3",
            "siteboot_mode{mode=\"online\"} 1",
            "siteboot_mode{mode=\"offline\"} 0",
            "siteboot_content_requests_total{outcome=\"hit\"} 1",
            "siteboot_conflicts_open 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
