//! A throwaway PostgreSQL database per test, made in the cluster `TOTPD_TEST_POSTGRES`
//! names (a connection URL whose role may create databases; `.ci/postgres` starts such
//! a cluster and exports it).
//!
//! Each [`TestDb`] is a database of its own, `totpd_test_<random>`, created empty and
//! dropped (`WITH (FORCE)`, so connections left open do not stop it) when the value is
//! dropped: tests running in parallel never see each other's rows, and each one's
//! store migrates its database under the advisory lock exactly as a daemon does.
//!
//! Without the variable, outside CI, a test says so loudly on stderr and passes; with
//! `CI` set, it fails: CI must run these tests.
//!
//! Tests with `mod common` reach it as `common::postgres`; the others include it alone
//! with `#[path = "common/postgres.rs"] mod pg;`.
#![allow(dead_code)]

use std::io::Write;

/// The variable naming the cluster the tests may create databases in.
pub const ENV: &str = "TOTPD_TEST_POSTGRES";

/// A database for one test, dropped with it.
pub struct TestDb {
    /// The admin URL, as given in [`ENV`].
    admin: String,
    /// The database's name.
    pub name: String,
    /// A URL for the database (the admin URL with its database replaced).
    pub url: String,
}

/// The admin URL, or `None` after the skip notice (a panic in CI).
pub fn admin_url() -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
                panic!(
                    "{ENV} is not set, and CI must run the PostgreSQL tests (.ci/run starts a throwaway PostgreSQL cluster)"
                );
            }
            let test = std::thread::current()
                .name()
                .unwrap_or("a PostgreSQL test")
                .to_string();
            // Straight to the process's stderr: the test harness captures `eprintln!`
            // of a passing test, and this must be seen.
            // One write, so the line is not torn by the harness's own output.
            let line = format!(
                "*** SKIPPED: {ENV} is not set (.ci/run starts a throwaway PostgreSQL cluster) *** {test}\n"
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

impl TestDb {
    /// A new empty database, or `None` (the test should return at once, passing) when
    /// [`ENV`] is not set outside CI.
    pub fn create() -> Option<TestDb> {
        let admin = admin_url()?;
        let name = format!(
            "totpd_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        let url = with_dbname(&admin, &name);
        Some(TestDb { admin, name, url })
    }

    /// Runs `sql` (several statements allowed) on this database, as the admin role.
    pub fn sql(&self, sql: &str) {
        admin_sql(&self.url, sql);
    }

    /// Closes every connection to this database but the caller's (as a server restart
    /// or a failover would), returning how many it closed.
    pub fn drop_connections(&self) -> i64 {
        let q = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        );
        run(&self.admin, move |c| async move {
            c.query_one(&q, &[]).await.map(|r| r.get::<_, i64>(0))
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin = self.admin.clone();
        // Never panic in drop (a failing test is already unwinding through here).
        let _ = std::thread::spawn(move || admin_sql(&admin, &sql)).join();
    }
}

/// `url` with its database replaced by `dbname`: the path of a URL, or a `dbname=`
/// appended to a `key=value` string (the last one counts).
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={dbname}");
    };
    let rest_at = scheme_end + 3;
    let rest = &url[rest_at..];
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after_hosts = &rest[hosts_end..];
    let query = after_hosts.find('?').map_or("", |q| &after_hosts[q..]);
    format!("{}{}/{dbname}{query}", &url[..rest_at], &rest[..hosts_end])
}

/// Runs `sql` on `url` in a thread of its own (callable from sync code and from inside
/// a runtime alike); panics with the server's message if it fails.
pub fn admin_sql(url: &str, sql: &str) {
    let sql = sql.to_string();
    run(url, move |c| async move { c.batch_execute(&sql).await })
}

/// Every row `sql` answers on `url`, each value as PostgreSQL's text form (`None` for
/// NULL): the simple query protocol, so any column type reads back as text.
pub fn query_text(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let sql = sql.to_string();
    run(url, move |c| async move {
        let msgs = c.simple_query(&sql).await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    })
}

/// Every stored byte of every table in `url`'s database, for grepping: `bytea` values
/// as their raw bytes (a hex or escape rendering would hide a secret stored in clear),
/// every other value as text. The counterpart of reading a SQLite file whole.
pub fn table_bytes(url: &str) -> Vec<u8> {
    run(url, move |c| async move {
        let cols = c
            .query(
                "SELECT c.table_name::text, c.column_name::text, c.data_type::text
                   FROM information_schema.columns c
                   JOIN information_schema.tables t
                     ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                  WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'",
                &[],
            )
            .await?;
        let mut all = Vec::new();
        for col in cols {
            let (table, column, ty): (String, String, String) =
                (col.get(0), col.get(1), col.get(2));
            if ty == "bytea" {
                let q = format!("SELECT \"{column}\" FROM \"{table}\"");
                for row in c.query(&q, &[]).await? {
                    all.extend(row.get::<_, Option<Vec<u8>>>(0).unwrap_or_default());
                    all.push(0);
                }
            } else {
                let q = format!("SELECT \"{column}\"::text FROM \"{table}\"");
                for row in c.query(&q, &[]).await? {
                    all.extend(
                        row.get::<_, Option<String>>(0)
                            .unwrap_or_default()
                            .into_bytes(),
                    );
                    all.push(0);
                }
            }
        }
        Ok(all)
    })
}

/// Connects to `url` (without TLS) on a runtime of its own in another thread and runs
/// `f` with the client.
fn run<T, F, Fut>(url: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to {ENV}: {e} ({:?})", e.as_db_error()));
            let task = tokio::spawn(conn);
            let out = f(client)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL: {e} ({:?})", e.as_db_error()));
            task.abort();
            out
        })
    })
    .join()
    .expect("the PostgreSQL admin thread panicked")
}

/// A TCP proxy to the cluster's Unix socket that a test can stop (refusing new
/// connections and cutting those open, as a database that went down), stall (holding
/// connections open and passing nothing, as a network that drops packets), and start
/// again on the same port.
pub struct PgProxy {
    pub addr: std::net::SocketAddr,
    socket: std::path::PathBuf,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl PgProxy {
    pub async fn start(url: &str) -> PgProxy {
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        let dir = cfg
            .get_hosts()
            .iter()
            .find_map(|h| match h {
                tokio_postgres::config::Host::Unix(p) => Some(p.clone()),
                _ => None,
            })
            .expect("TOTPD_TEST_POSTGRES names a Unix socket directory");
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = PgProxy {
            addr: listener.local_addr().unwrap(),
            socket: dir.join(format!(".s.PGSQL.{port}")),
            stalled: std::sync::Arc::default(),
            tasks: std::sync::Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    /// `url`'s user and database, through the proxy.
    pub fn url(&self, url: &str) -> String {
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        format!(
            "postgresql://{}@{}/{}",
            cfg.get_user().unwrap_or("postgres"),
            self.addr,
            cfg.get_dbname().unwrap()
        )
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (socket, stalled, tasks) = (
            self.socket.clone(),
            std::sync::Arc::clone(&self.stalled),
            std::sync::Arc::clone(&self.tasks),
        );
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(unix) = tokio::net::UnixStream::connect(&socket).await else {
                    continue;
                };
                let (tr, tw) = tcp.into_split();
                let (ur, uw) = unix.into_split();
                let mut t = tasks.lock().unwrap();
                t.push(tokio::spawn(pump(tr, uw, std::sync::Arc::clone(&stalled))));
                t.push(tokio::spawn(pump(ur, tw, std::sync::Arc::clone(&stalled))));
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Down: the port refuses connections and every open one is cut.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Up again, on the same port.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies bytes from `from` to `to`, holding them while the proxy is stalled.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
