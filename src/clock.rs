//! Clock sanity. A TOTP code is only as right as the clock that checks it: a clock that
//! drifts refuses good codes, and one that jumps backwards could accept a replayed step.
//! The kernel knows whether NTP keeps the clock in sync; totpd reports it in health and
//! metrics, and warns when the wall clock jumps backwards.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// How often the watcher compares the wall clock with the monotonic one.
const TICK: Duration = Duration::from_secs(5);
/// A backwards jump larger than this (one default TOTP period) is worth a warning.
const JUMP_WARN: Duration = Duration::from_secs(30);

/// Whether the kernel says the clock is synchronized (NTP or PTP discipline it), read
/// with a read-only `adjtimex` (no mode bits set, so nothing changes). `None` when the
/// call is refused, e.g. by a seccomp filter that does not allow `adjtimex`.
pub fn synchronized() -> Option<bool> {
    // SAFETY: `timex` is plain old data, for which all zeroes is a valid value; with
    // `modes == 0` adjtimex only reads the kernel's clock state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, exclusively borrowed `timex` for the kernel to fill.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

/// As [`synchronized`], asked of the kernel at most once a second: health is polled
/// hard, the answer changes on an NTP daemon's time scale, and each `adjtimex` takes a
/// kernel lock (it feeds the entropy pool).
pub fn synchronized_recently() -> Option<bool> {
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
    // One word, so a reader never pairs one second with another second's answer: the
    // second of the last answer times 4, plus the answer (0 unknown, 1 no, 2 yes).
    static LAST: AtomicI64 = AtomicI64::new(-1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let last = LAST.load(Relaxed);
    let answer = if last >= 0 && last >> 2 == now {
        last & 3
    } else {
        let v = match synchronized() {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        LAST.store(now << 2 | v, Relaxed);
        v
    };
    match answer {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// How far the wall clock went backwards between two readings taken `elapsed` apart on
/// the monotonic clock (zero if it did not).
fn backwards(before: SystemTime, after: SystemTime, elapsed: Duration) -> Duration {
    let expected = before + elapsed;
    expected.duration_since(after).unwrap_or_default()
}

/// Watches the clock for as long as the daemon runs: keeps the sync gauge current and
/// warns (and counts) when the wall clock jumps backwards by more than a period.
pub fn spawn_watch(metrics: std::sync::Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    // Known before the first request is served.
    metrics.clock_synchronized(synchronized());
    tokio::spawn(async move {
        let mut last = (Instant::now(), SystemTime::now());
        loop {
            tokio::time::sleep(TICK).await;
            metrics.clock_synchronized(synchronized());
            let now = (Instant::now(), SystemTime::now());
            let back = backwards(last.1, now.1, now.0 - last.0);
            if back > JUMP_WARN {
                metrics.clock_jump_backwards();
                tracing::warn!(
                    seconds = back.as_secs(),
                    now = now.1.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    "the wall clock jumped backwards: codes of steps already used may come \
                     round again (replays stay refused: the last accepted step is kept)"
                );
            }
            last = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_answers_a_read_only_adjtimex() {
        // Outside a seccomp filter the call is allowed; its answer is either state.
        assert!(synchronized().is_some());
        assert_eq!(synchronized_recently(), synchronized());
    }

    #[test]
    fn backwards_jumps_are_measured() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let five = Duration::from_secs(5);
        // Kept pace: nothing.
        assert_eq!(backwards(t, t + five, five), Duration::ZERO);
        // Forwards: nothing.
        assert_eq!(backwards(t, t + five * 20, five), Duration::ZERO);
        // Back by a minute while 5 s passed: 65 s behind where it should be.
        assert_eq!(
            backwards(t, t - Duration::from_secs(60), five),
            Duration::from_secs(65)
        );
    }
}
