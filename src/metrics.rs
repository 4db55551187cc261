//! Counters for `GET /v1/sys/metrics`, in Prometheus' text format. Refusal reasons of
//! code verifications are counted here (and logged), never told to the caller.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// The daemon's counters. One per process, shared through the app state.
#[derive(Default)]
pub struct Metrics {
    /// Answers by status class: index 0 is 1xx ... 4 is 5xx.
    requests: [AtomicU64; 5],
    /// QR images rendered.
    qr_renders: AtomicU64,
    /// argon2 jobs running now, and the most ever seen running at once.
    hashes_running: AtomicU64,
    hashes_peak: AtomicU64,
    /// Verifications by (surface, outcome).
    verifications: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Whether the kernel keeps the clock synchronized: 1, 0, or -1 unknown (the
    /// default, until the clock watcher first looks).
    clock_sync: ClockSync,
    /// Backwards jumps of the wall clock larger than one period.
    clock_jumps: AtomicU64,
    /// When the daemon started (when its app state was made), for `sys/status`.
    started: Started,
    /// Audit lines the audit file did not take (each went to stderr instead).
    audit_write_failures: AtomicU64,
}

/// The moment a [`Metrics`] was made.
struct Started(std::time::Instant);

impl Default for Started {
    fn default() -> Self {
        Started(std::time::Instant::now())
    }
}

struct ClockSync(AtomicI64);

impl Default for ClockSync {
    fn default() -> Self {
        ClockSync(AtomicI64::new(-1))
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, status: u16) {
        if let Some(c) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.requests.get(i as usize))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one QR image rendered.
    pub fn qr_render(&self) {
        self.qr_renders.fetch_add(1, Ordering::Relaxed);
    }

    /// An argon2 job starts; returns a guard that marks its end when dropped.
    pub fn hash_running(&self) -> HashGuard<'_> {
        let now = self.hashes_running.fetch_add(1, Ordering::Relaxed) + 1;
        self.hashes_peak.fetch_max(now, Ordering::Relaxed);
        HashGuard(self)
    }

    /// The most argon2 jobs seen running at once.
    pub fn hashes_peak(&self) -> u64 {
        self.hashes_peak.load(Ordering::Relaxed)
    }

    /// Counts one code verification: `outcome` is `accepted` or a refusal reason.
    pub fn verification(&self, surface: &'static str, outcome: &'static str) {
        if let Ok(mut m) = self.verifications.lock() {
            *m.entry((surface, outcome)).or_default() += 1;
        }
    }

    /// Records what the kernel says of the clock (`None`: it would not say).
    pub fn clock_synchronized(&self, synced: Option<bool>) {
        let v = synced.map_or(-1, i64::from);
        self.clock_sync.0.store(v, Ordering::Relaxed);
    }

    /// How long the daemon has been up (since its app state was made).
    pub fn uptime(&self) -> std::time::Duration {
        self.started.0.elapsed()
    }

    /// Counts one audit line the audit file did not take.
    pub fn audit_write_failure(&self) {
        self.audit_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one backwards jump of the wall clock.
    pub fn clock_jump_backwards(&self) {
        self.clock_jumps.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP totpd_requests_total HTTP requests answered, by status class.\n");
        out.push_str("# TYPE totpd_requests_total counter\n");
        for (i, c) in self.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "totpd_requests_total{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP totpd_qr_renders_total QR images rendered.\n");
        out.push_str("# TYPE totpd_qr_renders_total counter\n");
        let _ = writeln!(
            out,
            "totpd_qr_renders_total {}",
            self.qr_renders.load(Ordering::Relaxed)
        );
        out.push_str("# HELP totpd_argon2_running argon2 jobs (recovery codes) running now.\n");
        out.push_str("# TYPE totpd_argon2_running gauge\n");
        let _ = writeln!(
            out,
            "totpd_argon2_running {}",
            self.hashes_running.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP totpd_argon2_running_max The most argon2 jobs seen running at once.\n",
        );
        out.push_str("# TYPE totpd_argon2_running_max gauge\n");
        let _ = writeln!(out, "totpd_argon2_running_max {}", self.hashes_peak());
        out.push_str(
            "# HELP totpd_verifications_total Code verifications, by surface and outcome.\n",
        );
        out.push_str("# TYPE totpd_verifications_total counter\n");
        if let Ok(m) = self.verifications.lock() {
            for ((surface, outcome), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "totpd_verifications_total{{surface=\"{surface}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP totpd_clock_synchronized 1 if the kernel keeps the clock synchronized, 0 if not, -1 if it would not say.\n",
        );
        out.push_str("# TYPE totpd_clock_synchronized gauge\n");
        let _ = writeln!(
            out,
            "totpd_clock_synchronized {}",
            self.clock_sync.0.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP totpd_clock_jumps_backwards_total Backwards jumps of the wall clock by more than one period.\n",
        );
        out.push_str("# TYPE totpd_clock_jumps_backwards_total counter\n");
        let _ = writeln!(
            out,
            "totpd_clock_jumps_backwards_total {}",
            self.clock_jumps.load(Ordering::Relaxed)
        );
        out.push_str("# HELP totpd_log_lines_dropped_total Log lines dropped because the log buffer was full (stderr could not keep up).\n");
        out.push_str("# TYPE totpd_log_lines_dropped_total counter\n");
        let dropped = LOG_DROPS.get().map_or(0, |l| l.dropped());
        let _ = writeln!(out, "totpd_log_lines_dropped_total {dropped}");
        out.push_str("# HELP totpd_audit_write_failures_total Audit lines the audit file did not take (each went to stderr instead).\n");
        out.push_str("# TYPE totpd_audit_write_failures_total counter\n");
        let _ = writeln!(
            out,
            "totpd_audit_write_failures_total {}",
            self.audit_write_failures.load(Ordering::Relaxed)
        );
        out
    }
}

/// The daemon's log buffer, whose dropped lines are counted, once it exists.
static LOG_DROPS: std::sync::OnceLock<crate::server::log::LogBuffer> = std::sync::OnceLock::new();

/// Reports the lines `log` (the daemon's log buffer) dropped as
/// `totpd_log_lines_dropped_total`.
pub fn count_dropped_log_lines(log: crate::server::log::LogBuffer) {
    let _ = LOG_DROPS.set(log);
}

/// Locks begun since the store opened, by surface (the store counts them: only it sees
/// the attempt that reaches the limit).
pub fn render_lockouts(l: &crate::store::Lockouts) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP totpd_lockouts_total Locks begun: consecutive failures reached the limit.\n",
    );
    out.push_str("# TYPE totpd_lockouts_total counter\n");
    for (surface, n) in [
        ("user_totp", l.user_totp),
        ("vault_mfa", l.vault_mfa),
        ("vault_totp", l.vault_totp),
    ] {
        let _ = writeln!(out, "totpd_lockouts_total{{surface=\"{surface}\"}} {n}");
    }
    out
}

/// Sealed values per key id, as the store last counted them (at start, on `GET
/// /v1/sys/keys`, and by a key rotation as it goes): no query per scrape.
pub fn render_sealed_rows(counts: &std::collections::BTreeMap<u8, u64>) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP totpd_sealed_rows Sealed values per sealing key id, as last counted (start, key status, rotation).\n",
    );
    out.push_str("# TYPE totpd_sealed_rows gauge\n");
    for (id, n) in counts {
        let _ = writeln!(out, "totpd_sealed_rows{{key_id=\"{id}\"}} {n}");
    }
    out
}

/// Upper bounds of the buckets of the writer's batch-size histogram: powers of two up to
/// the writer's largest batch (256 operations in one transaction).
pub const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

/// A histogram of counts with fixed bucket bounds, updated with atomics only, so a hot
/// path (the writer, once per batch) pays a few relaxed additions and no lock.
pub struct CountHistogram {
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last one is past every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl CountHistogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        CountHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `v`.
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// What it holds now.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: self.bounds.to_vec(),
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending.
    pub bounds: Vec<u64>,
    /// Observations per bucket (not cumulative): one more entry than `bounds`, the last
    /// for observations past every bound.
    pub counts: Vec<u64>,
    /// The sum of every observation.
    pub sum: u64,
}

impl Histogram {
    /// How many observations it holds.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The store's gauges, read when metrics are rendered (cheap: two loads and a `stat`):
/// the writer's queue depth and batch sizes, and the database's size on disk.
pub fn render_store(queue_depth: u64, batch_sizes: &Histogram, database_bytes: u64) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP totpd_writer_queue_depth Write operations waiting for the writer thread.\n",
    );
    out.push_str("# TYPE totpd_writer_queue_depth gauge\n");
    let _ = writeln!(out, "totpd_writer_queue_depth {queue_depth}");
    out.push_str(
        "# HELP totpd_writer_batch_size Write operations committed together in one transaction.\n",
    );
    out.push_str("# TYPE totpd_writer_batch_size histogram\n");
    // Prometheus buckets are cumulative; the count is the buckets' own sum, so the
    // exposition agrees with itself even if a batch lands while it is read.
    let mut cumulative = 0;
    for (i, n) in batch_sizes.counts.iter().enumerate() {
        cumulative += n;
        match batch_sizes.bounds.get(i) {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "totpd_writer_batch_size_bucket{{le=\"{b}\"}} {cumulative}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "totpd_writer_batch_size_bucket{{le=\"+Inf\"}} {cumulative}"
                );
            }
        }
    }
    let _ = writeln!(out, "totpd_writer_batch_size_sum {}", batch_sizes.sum);
    let _ = writeln!(out, "totpd_writer_batch_size_count {cumulative}");
    out.push_str(
        "# HELP totpd_database_bytes Bytes the database takes on disk (main file and write-ahead log).\n",
    );
    out.push_str("# TYPE totpd_database_bytes gauge\n");
    let _ = writeln!(out, "totpd_database_bytes {database_bytes}");
    out
}

/// Marks the end of an argon2 job when dropped (see [`Metrics::hash_running`]).
pub struct HashGuard<'a>(&'a Metrics);

impl Drop for HashGuard<'_> {
    fn drop(&mut self) {
        self.0.hashes_running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_render_as_a_cumulative_histogram() {
        let h = CountHistogram::new(BATCH_SIZE_BOUNDS);
        for v in [1, 1, 3, 256, 300] {
            h.observe(v);
        }
        let snap = h.snapshot();
        assert_eq!((snap.count(), snap.sum), (5, 561));
        let text = render_store(7, &snap, 4096);
        assert!(text.contains("totpd_writer_queue_depth 7\n"), "{text}");
        assert!(
            text.contains("totpd_writer_batch_size_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("totpd_writer_batch_size_bucket{le=\"2\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("totpd_writer_batch_size_bucket{le=\"4\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("totpd_writer_batch_size_bucket{le=\"256\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("totpd_writer_batch_size_bucket{le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("totpd_writer_batch_size_sum 561\n"), "{text}");
        assert!(text.contains("totpd_writer_batch_size_count 5\n"), "{text}");
        assert!(text.contains("totpd_database_bytes 4096\n"), "{text}");
    }

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.request(200);
        m.request(204);
        m.request(403);
        m.request(999);
        m.verification("vault_mfa", "replay");
        m.verification("vault_mfa", "replay");
        let text = m.render();
        assert!(text.contains("totpd_requests_total{class=\"2xx\"} 2\n"));
        assert!(text.contains("totpd_requests_total{class=\"4xx\"} 1\n"));
        assert!(text
            .contains("totpd_verifications_total{surface=\"vault_mfa\",outcome=\"replay\"} 2\n"));
        assert!(text.contains("totpd_clock_synchronized -1\n"));
        m.clock_synchronized(Some(true));
        m.clock_jump_backwards();
        let text = m.render();
        assert!(text.contains("totpd_clock_synchronized 1\n"));
        assert!(text.contains("totpd_clock_jumps_backwards_total 1\n"));
    }
}
