//! Counters for `GET /v1/sys/metrics`, in Prometheus' text format. Refusal reasons of
//! code verifications are counted here (and logged), never told to the caller.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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
    }
}
