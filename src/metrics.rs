//! What the daemon counts for operators, and its Prometheus text
//! exposition (format 0.0.4): the daemon's facts (`lanyard status`: when
//! it started, which store), per-network DHCP and DNS counters, and the
//! latency histograms of the kernel apply and store commit steps.
//!
//! Counters are atomics reached through an `Arc` that each DHCP/DNS
//! server takes once when it starts, so a packet costs an atomic add and
//! no lock; the registry's lock is taken only at server start and at
//! scrape time. Counters are kept per network key across a network's
//! stop and start (a counter must not go back), and are process-wide, like
//! the DHCP handler panics. A deleted network's counters stay until the
//! daemon exits (a few hundred bytes each); a new network of the same key
//! counts on from them, which Prometheus' `rate()` reads correctly.
//!
//! Gauges (leases, free addresses, ports, repairs) are read from the
//! engine at scrape time: [`render`] takes them as [`Gauges`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::dhcp::server::ServerStats;

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the daemon tells about itself in `lanyard status`.
#[derive(Debug, Clone)]
pub struct DaemonFacts {
    /// Unix time the daemon started.
    pub started_at: u64,
    /// Where desired state lives: `sqlite PATH` or `etcd URL,...`.
    pub store: String,
}

static DAEMON: OnceLock<DaemonFacts> = OnceLock::new();

/// Records the daemon's facts (once; the first call wins).
pub fn daemon_started(facts: DaemonFacts) {
    let _ = DAEMON.set(facts);
}

/// The daemon's facts; None in a process that is not the daemon (tests).
pub fn daemon_facts() -> Option<&'static DaemonFacts> {
    DAEMON.get()
}

/// The DHCP message types counted, by their option 53 value (index).
/// Client messages are counted as received, server messages as sent.
pub const DHCP_TYPES: [&str; 9] =
    ["other", "discover", "offer", "request", "decline", "ack", "nak", "release", "inform"];

/// The index in [`DHCP_TYPES`] of option 53 value `code`.
pub fn dhcp_type_index(code: u8) -> usize {
    if (1..=8).contains(&code) {
        usize::from(code)
    } else {
        0
    }
}

/// Per network: DHCP server statistics and DNS queries.
#[derive(Default)]
struct Registry {
    dhcp: BTreeMap<String, Arc<ServerStats>>,
    dns: BTreeMap<String, Arc<AtomicU64>>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// The DHCP statistics of network `net` (the same ones after a restart).
pub fn dhcp_stats(net: &str) -> Arc<ServerStats> {
    registry().dhcp.entry(net.to_string()).or_default().clone()
}

/// The DNS query counter of network `net`.
pub fn dns_queries(net: &str) -> Arc<AtomicU64> {
    registry().dns.entry(net.to_string()).or_default().clone()
}

/// Upper bounds (seconds) of the latency buckets: 100 µs to 10 s.
const BUCKETS: [f64; 14] = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A latency histogram with fixed buckets, lock-free.
pub struct Histogram {
    /// Observations per bucket (not cumulative; made so when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Runs `f` and records how long it took.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        self.observe(start.elapsed());
        out
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Time spent applying plans to the kernel (`Engine::commit`'s apply step).
pub static KERNEL_APPLY: Histogram = Histogram::new();
/// Time spent writing a change to the store (`Engine::commit`'s persist step).
pub static STORE_COMMIT: Histogram = Histogram::new();

/// One network's gauges, read from the engine.
#[derive(Debug, Clone)]
pub struct NetGauges {
    /// Network key (`PROJECT/NAME` outside the default project).
    pub network: String,
    /// Whether it is active.
    pub active: bool,
    /// Leases not expired.
    pub leases: u64,
    /// Addresses of the dynamic range that no one holds.
    pub free: u64,
}

/// What the engine knows at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Per network.
    pub networks: Vec<NetGauges>,
    /// Ports.
    pub ports: u64,
    /// Floating IPs.
    pub floating_ips: u64,
    /// Kernel changes the self-healing monitor made.
    pub repairs: u64,
    /// Heals that failed.
    pub heal_failures: u64,
}

/// `value` as a label value: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(g: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    let (dhcp, dns) = {
        let r = registry();
        (r.dhcp.clone(), r.dns.clone())
    };

    family(&mut out, "lanyard_dhcp_received_total", "counter", "DHCP client messages received, by message type.");
    for (net, s) in &dhcp {
        for (i, kind) in DHCP_TYPES.iter().enumerate().filter(|(_, k)| !matches!(**k, "offer" | "ack" | "nak")) {
            let n = s.received_by_type[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "lanyard_dhcp_received_total{{network=\"{}\",type=\"{kind}\"}} {n}", label(net));
        }
    }
    family(&mut out, "lanyard_dhcp_sent_total", "counter", "DHCP server messages sent, by message type.");
    for (net, s) in &dhcp {
        for kind in ["offer", "ack", "nak"] {
            let i = DHCP_TYPES.iter().position(|k| *k == kind).unwrap_or(0);
            let n = s.sent_by_type[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "lanyard_dhcp_sent_total{{network=\"{}\",type=\"{kind}\"}} {n}", label(net));
        }
    }
    family(
        &mut out,
        "lanyard_dhcp_dropped_total",
        "counter",
        "DHCP datagrams not served, by reason (malformed, rate_limited, no_address, store_failure, overload).",
    );
    for (net, s) in &dhcp {
        for (reason, c) in [
            ("malformed", &s.malformed),
            ("rate_limited", &s.rate_limited),
            ("no_address", &s.no_address),
            ("store_failure", &s.store_failures),
            ("overload", &s.shed),
        ] {
            let n = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "lanyard_dhcp_dropped_total{{network=\"{}\",reason=\"{reason}\"}} {n}", label(net));
        }
    }
    family(&mut out, "lanyard_dhcp_handler_panics_total", "counter", "DHCP packets whose handling panicked.");
    let _ = writeln!(out, "lanyard_dhcp_handler_panics_total {}", crate::dhcp::server::handler_panics());

    family(&mut out, "lanyard_dns_queries_total", "counter", "DNS queries received by the network's DNS server.");
    for (net, n) in &dns {
        let _ = writeln!(out, "lanyard_dns_queries_total{{network=\"{}\"}} {}", label(net), n.load(Ordering::Relaxed));
    }

    family(&mut out, "lanyard_network_active", "gauge", "1 if the network is active, 0 if only defined.");
    for n in &g.networks {
        let _ = writeln!(out, "lanyard_network_active{{network=\"{}\"}} {}", label(&n.network), u8::from(n.active));
    }
    family(&mut out, "lanyard_dhcp_leases_active", "gauge", "Leases that have not expired.");
    for n in &g.networks {
        let _ = writeln!(out, "lanyard_dhcp_leases_active{{network=\"{}\"}} {}", label(&n.network), n.leases);
    }
    family(&mut out, "lanyard_dhcp_addresses_free", "gauge", "Addresses of the dynamic DHCP range that no one holds.");
    for n in &g.networks {
        let _ = writeln!(out, "lanyard_dhcp_addresses_free{{network=\"{}\"}} {}", label(&n.network), n.free);
    }
    family(&mut out, "lanyard_ports", "gauge", "VM ports.");
    let _ = writeln!(out, "lanyard_ports {}", g.ports);
    family(&mut out, "lanyard_floating_ips", "gauge", "Floating IPs.");
    let _ = writeln!(out, "lanyard_floating_ips {}", g.floating_ips);
    family(
        &mut out,
        "lanyard_kernel_repairs_total",
        "counter",
        "Kernel changes the self-healing monitor made to restore lanyard's state.",
    );
    let _ = writeln!(out, "lanyard_kernel_repairs_total {}", g.repairs);
    family(&mut out, "lanyard_heal_failures_total", "counter", "Self-healing runs that failed.");
    let _ = writeln!(out, "lanyard_heal_failures_total {}", g.heal_failures);

    KERNEL_APPLY.render(&mut out, "lanyard_kernel_apply_seconds", "Time spent applying a change to the kernel.");
    STORE_COMMIT.render(&mut out, "lanyard_store_commit_seconds", "Time spent writing a change to the store.");
    if let Some(f) = daemon_facts() {
        family(&mut out, "lanyard_start_time_seconds", "gauge", "Unix time the daemon started.");
        let _ = writeln!(out, "lanyard_start_time_seconds {}", f.started_at);
    }
    family(&mut out, "lanyard_build_info", "gauge", "Always 1; the version in a label.");
    let _ = writeln!(out, "lanyard_build_info{{version=\"{}\"}} 1", label(crate::cli::VERSION));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counted() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "test");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn counters_survive_a_restart_of_their_server() {
        let a = dhcp_stats("metrics-test-net");
        a.received_by_type[1].fetch_add(1, Ordering::Relaxed);
        let b = dhcp_stats("metrics-test-net");
        assert_eq!(b.received_by_type[1].load(Ordering::Relaxed), 1);
        let text = render(&Gauges::default());
        assert!(text.contains("lanyard_dhcp_received_total{network=\"metrics-test-net\",type=\"discover\"} 1\n"));
        assert!(text.contains("lanyard_dhcp_sent_total{network=\"metrics-test-net\",type=\"offer\"} 0\n"));
    }
}
