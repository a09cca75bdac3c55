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

pub struct Metrics {
    registry: Registry,
    boots: IntCounterVec,
    boot_seconds: Histogram,
    tftp_transfers: IntCounterVec,
    pub tftp_bytes: IntCounter,
    pub tftp_errors: IntCounter,
    pub tftp_retransmissions: IntCounter,
    pub tftp_sessions: IntGauge,
    http_requests: IntCounterVec,
    controller_calls: IntCounterVec,
    controller_seconds: HistogramVec,
    mode: IntGaugeVec,
    pub offline_seconds: Gauge,
    queue_items: IntGaugeVec,
    pub replayed: IntCounter,
    pub shed: IntCounter,
    pub conflicts_open: IntGauge,
    pub last_sync_age_seconds: Gauge,
    content_requests: IntCounterVec,
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

/// The definitions are constants: they cannot fail, and the test below
/// checks that.
fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name))
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name))
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name))
}

fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric(name))
}

fn unreachable_metric(name: &str) -> ! {
    panic!("metric {name}: invalid definition")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("siteboot".into()), None)
            .unwrap_or_else(|_| unreachable_metric("siteboot"));
        let r = &registry;
        let boot_seconds = Histogram::with_opts(
            HistogramOpts::new("boot_answer_seconds", "Time to answer a boot request")
                .buckets(latency_buckets()),
        )
        .unwrap_or_else(|_| unreachable_metric("boot_answer_seconds"));
        let controller_seconds = HistogramVec::new(
            HistogramOpts::new("controller_call_seconds", "Time of calls to the controller")
                .buckets(latency_buckets()),
            &["call"],
        )
        .unwrap_or_else(|_| unreachable_metric("controller_call_seconds"));
        Metrics {
            boots: registered(
                r,
                counter_vec(
                    "boots_total",
                    "Boot scripts served, by action and source",
                    &["action", "source"],
                ),
            ),
            boot_seconds: registered(r, boot_seconds),
            tftp_transfers: registered(
                r,
                counter_vec(
                    "tftp_transfers_total",
                    "TFTP requests by outcome: completed, aborted (by the client), failed, refused",
                    &["outcome"],
                ),
            ),
            tftp_bytes: registered(
                r,
                counter("tftp_sent_bytes_total", "File bytes sent over TFTP"),
            ),
            tftp_errors: registered(
                r,
                counter(
                    "tftp_errors_total",
                    "TFTP requests refused and transfers failed",
                ),
            ),
            tftp_retransmissions: registered(
                r,
                counter(
                    "tftp_retransmissions_total",
                    "TFTP packets or windows sent again after a timeout",
                ),
            ),
            tftp_sessions: registered(
                r,
                int_gauge("tftp_active_sessions", "TFTP transfers under way"),
            ),
            http_requests: registered(
                r,
                counter_vec(
                    "http_requests_total",
                    "HTTP requests by route and status code",
                    &["route", "code"],
                ),
            ),
            controller_calls: registered(
                r,
                counter_vec(
                    "controller_calls_total",
                    "Calls to the controller by call and outcome",
                    &["call", "outcome"],
                ),
            ),
            controller_seconds: registered(r, controller_seconds),
            mode: registered(
                r,
                int_gauge_vec(
                    "mode",
                    "1 for the agent's mode (standalone, online, offline), 0 for the others",
                    &["mode"],
                ),
            ),
            offline_seconds: registered(
                r,
                gauge(
                    "offline_seconds",
                    "Seconds the controller has been unreachable (0 when reachable)",
                ),
            ),
            queue_items: registered(
                r,
                int_gauge_vec(
                    "queue_items",
                    "Queued changes for the controller by status and kind",
                    &["status", "kind"],
                ),
            ),
            replayed: registered(
                r,
                counter(
                    "replayed_items_total",
                    "Queued changes the controller took on replay",
                ),
            ),
            shed: registered(
                r,
                counter(
                    "shed_items_total",
                    "Queue items caused by nodes that were not admitted",
                ),
            ),
            conflicts_open: registered(
                r,
                int_gauge("conflicts_open", "Conflicts waiting to be settled"),
            ),
            last_sync_age_seconds: registered(
                r,
                gauge(
                    "last_sync_age_seconds",
                    "Seconds since the last node sync (0 before the first)",
                ),
            ),
            content_requests: registered(
                r,
                counter_vec(
                    "content_requests_total",
                    "Requests for the controller's files by outcome: hit (cached), miss",
                    &["outcome"],
                ),
            ),
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

    pub fn boot(&self, action: &str, source: &str, seconds: f64) {
        self.boots.with_label_values(&[action, source]).inc();
        self.boot_seconds.observe(seconds);
    }

    pub fn tftp_outcome(&self, outcome: &str) {
        self.tftp_transfers.with_label_values(&[outcome]).inc();
    }

    pub fn http_request(&self, route: &str, code: u16) {
        self.http_requests
            .with_label_values(&[route, &code.to_string()])
            .inc();
    }

    pub fn controller_call(&self, call: &str, outcome: &str, seconds: f64) {
        self.controller_calls
            .with_label_values(&[call, outcome])
            .inc();
        self.controller_seconds
            .with_label_values(&[call])
            .observe(seconds);
    }

    pub fn content_request(&self, outcome: &str) {
        self.content_requests.with_label_values(&[outcome]).inc();
    }

    pub fn set_queue(&self, status: &str, kind: &str, items: u64) {
        self.queue_items
            .with_label_values(&[status, kind])
            .set(i64::try_from(items).unwrap_or(i64::MAX));
    }

    /// Sets the mode gauges: 1 for `current`, 0 for the others.
    pub fn set_mode(&self, current: &str) {
        for mode in ["standalone", "online", "offline"] {
            self.mode
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
        let m = super::metrics();
        m.boot("install", "live", 0.001);
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
