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
        out
    }
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
