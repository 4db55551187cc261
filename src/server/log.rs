//! The daemon's log writer: lines go into a bounded in-memory buffer, and a thread of
//! its own writes the buffer out every [`FLUSH_EVERY`] (sooner when it fills up).
//!
//! Why not a queue with a line per message (tracing-appender's `non_blocking`, which this
//! replaced): its thread woke for nearly every line, and under load those wake-ups (task
//! switches and the channel's `sched_yield` spinning) were 12% of the daemon's CPU on
//! two cores. Here a request's line costs a short mutex hold and a copy; the writes
//! happen a few dozen times a second whatever the load. A request never waits for
//! stderr (a pipe to journald can block): when the buffer is full, the line is dropped
//! and counted ([`LogBuffer::dropped`], `totpd_log_lines_dropped_total`), never waited
//! for. Audit lines do not come this way: they are written as they are made.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait in the buffer when the daemon is quiet.
pub const FLUSH_EVERY: Duration = Duration::from_millis(25);

/// Each of the two buffers starts this large: a flush interval's lines at full load.
const INITIAL_BYTES: usize = 512 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    /// Bytes the buffer may hold; a line that would pass it is dropped.
    cap: usize,
    /// Past this many bytes the writer thread is woken before its time.
    high_water: usize,
    wake: Condvar,
    stop: AtomicBool,
    dropped: AtomicU64,
}

/// The writing side, for `tracing_subscriber::fmt::layer().with_writer(..)`: each
/// event's formatted line arrives in one `write` and is kept whole or dropped whole.
#[derive(Clone)]
pub struct LogBuffer(Arc<Shared>);

/// Stops the writer thread when dropped, after it has written everything buffered.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogBuffer {
    /// A buffer of `cap` bytes whose thread (named `name`) writes to `out`.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        cap: usize,
        name: &str,
    ) -> std::io::Result<(Self, FlushOnDrop)> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(cap.min(INITIAL_BYTES))),
            cap,
            high_water: cap / 4,
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || write_out(&s, out))?;
        Ok((
            LogBuffer(shared.clone()),
            FlushOnDrop {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Lines dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: every [`FLUSH_EVERY`], or when woken, swaps the buffer for an empty
/// one and writes what it took, outside the lock. A failed write loses those lines (there
/// is nowhere else to say so) but not the thread.
fn write_out<W: Write>(s: &Shared, mut out: W) {
    let mut spare = Vec::with_capacity(s.cap.min(INITIAL_BYTES));
    loop {
        let stopping = {
            let Ok(mut buf) = s.buf.lock() else { return };
            if buf.is_empty() && !s.stop.load(Ordering::Acquire) {
                buf = match s.wake.wait_timeout(buf, FLUSH_EVERY) {
                    Ok((b, _)) => b,
                    Err(_) => return,
                };
            }
            std::mem::swap(&mut *buf, &mut spare);
            s.stop.load(Ordering::Acquire) && spare.is_empty() && buf.is_empty()
        };
        if !spare.is_empty() {
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            // Cleared, not shrunk: the two buffers keep their size and trade places, so
            // the hot path never reallocates (growing and shrinking a few hundred KB,
            // past glibc's mmap threshold, cost more than the wake-ups this replaced).
            spare.clear();
        }
        if stopping {
            return;
        }
    }
}

impl Write for LogBuffer {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let s = &*self.0;
        let wake = {
            let Ok(mut buf) = s.buf.lock() else {
                return Ok(line.len());
            };
            if buf.len() + line.len() > s.cap {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(line.len());
            }
            let before = buf.len();
            buf.extend_from_slice(line);
            before < s.high_water && buf.len() >= s.high_water
        };
        if wake {
            s.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_leave_in_order_and_whole_and_the_guard_flushes() {
        let sink = Sink::default();
        let (mut w, guard) = LogBuffer::start(sink.clone(), 1 << 20, "t-log").unwrap();
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn a_quiet_line_leaves_without_waiting_for_more() {
        let sink = Sink::default();
        let (mut w, _guard) = LogBuffer::start(sink.clone(), 1 << 20, "t-log").unwrap();
        w.write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"alone\n");
    }

    /// A writer that blocks until released, as a stalled pipe to journald would.
    struct Stalled(Arc<(Mutex<bool>, Condvar)>, Sink);

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.0;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_buffer_drops_and_counts_whole_lines_without_blocking() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (mut w, guard) =
            LogBuffer::start(Stalled(gate.clone(), sink.clone()), 100, "t-log").unwrap();
        // The thread takes what it can and stalls writing it; then 10-byte lines fill
        // the 100 bytes of buffer, and every further line is dropped, at once.
        let line = b"123456789\n";
        for _ in 0..1000 {
            w.write_all(line).unwrap();
        }
        let dropped = w.dropped();
        assert!((980..=990).contains(&dropped), "dropped {dropped}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let out = sink.0.lock().unwrap().clone();
        // Everything not dropped was written, and only whole lines.
        assert_eq!(out.len() as u64, (1000 - dropped) * line.len() as u64);
        assert!(out.chunks(10).all(|c| c == line));
    }
}
