//! The one writer: a dedicated thread owns the only write connection and commits
//! concurrent writes together (group commit). Each operation runs inside its own
//! SAVEPOINT, so one failing operation rolls back alone; a reply leaves only after the
//! COMMIT has returned, so an answer built on it is durable.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::StoreError;

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
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("totpd-writer".into())
            .spawn(move || run(conn, rx))?;
        Ok(Self {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        })
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
        self.tx
            .send(Msg::Job(job))
            .map_err(|_| StoreError::Closed)?;
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

fn run(conn: Connection, rx: mpsc::Receiver<Msg>) {
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
            run_batch(&conn, batch);
        }
    }
    // Jobs sent after shutdown was asked for: refuse them rather than leave callers hanging.
    while let Ok(Msg::Job(j)) = rx.try_recv() {
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
    let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
    if let Err(e) = &commit {
        tracing::error!(error = %e, "commit failed; batch rolled back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(commit.clone().map_err(StoreError::Backend));
    }
}
