//! The read pool: a fixed set of threads, each owning one read-only connection, behind
//! one bounded queue. Nothing a client does grows threads or connections; a read that
//! finds the queue full fails at once with `Unavailable` (503 and `Retry-After` to the
//! client) instead of waiting without bound.
//!
//! Beside the threads, a few connections for point reads run where they are asked for
//! ([`Readers::read_now`]): a lookup by key takes microseconds, less than the two thread
//! switches of a trip to a reader thread and back, which profiles showed to be most of
//! a code read's cost. There is one per async worker and one more, so the workers
//! rarely find them all taken; when they do, the read goes to the queue as any other.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::configure;
use crate::store::StoreError;

type Job = Box<dyn FnOnce(&Connection) + Send>;

enum Msg {
    Job(Job),
    Stop,
}

pub(super) struct Readers {
    tx: SyncSender<Msg>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Connections for [`Readers::read_now`]; `None` once shut down.
    inline: Vec<Mutex<Option<Connection>>>,
}

impl Readers {
    /// Opens `count` read-only connections to `path` (failing early if one cannot be
    /// opened) and starts a thread for each, with room for `queue` waiting reads.
    pub(super) fn start(path: &Path, count: usize, queue: usize) -> Result<Self, StoreError> {
        let open = || -> Result<Connection, StoreError> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&conn)?;
            Ok(conn)
        };
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let inline = (0..=workers)
            .map(|_| Ok(Mutex::new(Some(open()?))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let conn = open()?;
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("totpd-read-{i}"))
                .spawn(move || run(conn, rx))
                .map_err(|e| StoreError::Setup(format!("cannot start a reader thread: {e}")))?;
            threads.push(t);
        }
        Ok(Readers {
            tx,
            threads: Mutex::new(threads),
            inline,
        })
    }

    /// Runs `f` here, on the caller's thread, with a free inline connection; when every
    /// one is taken, on the pool as [`Readers::read`]. Only for reads that cannot take
    /// long: a lookup by primary or unique key, whose pages are in the cache. A read
    /// that scans belongs on the pool, off the async workers.
    pub(super) async fn read_now<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        for slot in &self.inline {
            let guard = match slot.try_lock() {
                Ok(g) => g,
                // A read that panicked holding it left the connection as it was.
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            return match guard.as_ref() {
                Some(conn) => f(conn),
                None => Err(StoreError::Closed),
            };
        }
        self.read(f).await
    }

    /// Runs `f` on the next free reader connection.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = otx.send(f(conn));
        });
        match self.tx.try_send(Msg::Job(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Unavailable),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        // A job dropped unrun (the pool stopped, or it panicked) drops its sender.
        orx.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets queued reads finish, then stops every thread and closes its connection, and
    /// closes the inline connections (waiting for a read using one).
    pub(super) fn shutdown(&self) {
        for slot in &self.inline {
            let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
            g.take();
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for _ in &threads {
            let _ = self.tx.send(Msg::Stop);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, rx: Arc<Mutex<Receiver<Msg>>>) {
    loop {
        // The lock is held only while taking one message off the queue.
        let msg = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => break,
        };
        match msg {
            Ok(Msg::Job(job)) => {
                // A panicking read must not take the thread (and a connection) with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn))).is_err() {
                    tracing::error!("a read operation panicked");
                }
            }
            Ok(Msg::Stop) | Err(_) => break,
        }
    }
}
