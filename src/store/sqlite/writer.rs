//! The one writer: a dedicated thread owns the only write connection and commits
//! concurrent writes together (group commit). Each operation runs inside its own
//! SAVEPOINT, so one failing operation rolls back alone; a reply leaves only after the
//! COMMIT has returned, so an answer built on it is durable.
//!
//! It counts, with atomics only, the operations waiting for it (its queue depth) and
//! how many operations each transaction carried (a batch-size histogram), for
//! `sys/status` and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::metrics::{CountHistogram, BATCH_SIZE_BOUNDS};
use crate::store::{StoreError, WriterStats};

/// Most operations folded into one transaction; bounds the latency one batch adds.
const MAX_BATCH: usize = 256;

/// An operation, run on the writer thread. It returns whether it succeeded (else its
/// savepoint is rolled back) and a reply to send once the batch's commit is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Msg {
    Job(Job),
    Shutdown,
}

pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    load: Arc<Load>,
}

/// What the writer counts as it goes: shared by the senders and the writer thread.
struct Load {
    /// Operations sent and not yet taken off the queue by the writer thread.
    queued: AtomicU64,
    /// Operations per transaction.
    batches: CountHistogram,
}

impl Load {
    /// One operation taken off the queue.
    fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let load = Arc::new(Load {
            queued: AtomicU64::new(0),
            batches: CountHistogram::new(BATCH_SIZE_BOUNDS),
        });
        let thread_load = load.clone();
        let thread = std::thread::Builder::new()
            .name("totpd-writer".into())
            .spawn(move || run(conn, rx, &thread_load))?;
        Ok(Self {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
            load,
        })
    }

    /// Operations waiting now, and the batch sizes so far.
    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            queue_depth: self.load.queued.load(Ordering::Relaxed),
            batch_sizes: self.load.batches.snapshot(),
        }
    }

    /// Runs `f` in the next batch; resolves after its transaction committed.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let _ = otx.send(commit.and(result));
            });
            (ok, reply)
        });
        // Counted before it is sent, so the writer never takes one not yet counted.
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Job(job)).is_err() {
            self.load.taken();
            return Err(StoreError::Closed);
        }
        orx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes every queued write, then stops the thread and closes the connection.
    pub(super) fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Msg>, load: &Load) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { break };
        let mut batch = Vec::new();
        match first {
            Msg::Job(j) => batch.push(j),
            Msg::Shutdown => stopping = true,
        }
        while batch.len() < MAX_BATCH && !stopping {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => batch.push(j),
                Ok(Msg::Shutdown) => stopping = true,
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            load.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            load.batches.observe(batch.len() as u64);
            run_batch(&conn, batch);
        }
    }
    // Jobs sent after shutdown was asked for: refuse them rather than leave callers hanging.
    while let Ok(Msg::Job(j)) = rx.try_recv() {
        load.taken();
        drop(j);
    }
    if let Err(e) = conn.execute_batch("PRAGMA optimize;") {
        tracing::warn!(error = %e, "optimize at close failed");
    }
    if let Err((_, e)) = conn.close() {
        tracing::error!(error = %e, "closing the database failed");
    }
}

fn run_batch(conn: &Connection, batch: Vec<Job>) {
    // A job that never runs is dropped with its reply sender: its caller gets
    // `StoreError::Closed`, never a false success.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "cannot begin write transaction");
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            tracing::error!(error = %e, "cannot open savepoint");
            continue;
        }
        // A panicking operation must not take the writer (and every later write) with it:
        // its savepoint is rolled back and its caller, whose reply is dropped, gets an error.
        let (ok, reply) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)))
        {
            Ok((ok, reply)) => (ok, Some(reply)),
            Err(_) => {
                tracing::error!("a write operation panicked; rolled back");
                (false, None)
            }
        };
        let end = if ok {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!(error = %e, "cannot close savepoint");
        }
        replies.extend(reply);
    }
    // FAULT INJECTION, only with the test feature `fault-reply-before-commit` (off by
    // default; compiled out otherwise): acknowledge every operation BEFORE the COMMIT,
    // then hold the commit back, so a kill -9 in that window loses acknowledged writes.
    // `tests/crash.rs` must catch this.
    #[cfg(feature = "fault-reply-before-commit")]
    {
        for reply in replies.drain(..) {
            reply(Ok(()));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
    if let Err(e) = &commit {
        tracing::error!(error = %e, "commit failed; batch rolled back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(commit.clone().map_err(StoreError::Backend));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_depth_and_batch_sizes_are_counted() {
        let w = Writer::start(Connection::open_in_memory().unwrap()).unwrap();
        assert_eq!(w.stats().queue_depth, 0);
        assert_eq!(w.stats().batch_sizes.count(), 0);
        // Hold the writer inside one operation, so the next ones wait in the queue.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let w = Arc::new(w);
        let held = {
            let w = w.clone();
            tokio::spawn(async move {
                w.write(move |_| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
                .await
            })
        };
        tokio::task::block_in_place(|| entered_rx.recv().unwrap());
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let w = w.clone();
                tokio::spawn(async move { w.write(|_| Ok(())).await })
            })
            .collect();
        let mut depth = 0;
        for _ in 0..500 {
            depth = w.stats().queue_depth;
            if depth == 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(depth, 5, "five operations wait behind the held one");
        release_tx.send(()).unwrap();
        held.await.unwrap().unwrap();
        for t in waiting {
            t.await.unwrap().unwrap();
        }
        let s = w.stats();
        assert_eq!(s.queue_depth, 0);
        // Six operations in all: the held one alone, the five in one or more batches.
        assert_eq!(s.batch_sizes.sum, 6);
        assert!((2..=6).contains(&s.batch_sizes.count()), "{s:?}");
        assert!(
            s.batch_sizes.counts[0] >= 1,
            "the held operation ran alone: {s:?}"
        );
        w.shutdown();
    }
}
