//! A PostgreSQL database of its own per test.
//!
//! [`TestDb::create`] makes `fg_test_<random>` on the test server and drops
//! it (connections included) when the guard goes, even when the test
//! panics, so tests run in parallel and leave nothing behind. The server is
//! `FLEXGATE_TEST_PG` (libpq key=value settings without `dbname`; default
//! [`DEFAULT_SERVER`], 127.0.0.1:5432). When it cannot be reached the test
//! is skipped with a loud message, except under `CI=true`, where it fails
//! ([`super::skip_or_fail`]).
//!
//! Usable from plain `#[test]`s and from any tokio test runtime alike: the
//! database is created and dropped on a thread and runtime of its own.

use flexgate::pg::PgPool;
use std::future::Future;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

pub const DEFAULT_SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";

/// The test server's settings (libpq key=value, without `dbname`).
pub fn server() -> String {
    std::env::var("FLEXGATE_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
}

/// A database of its own for one test; dropped when the guard goes.
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// A fresh empty database, or `None` (the test is skipped) when
    /// PostgreSQL cannot be reached outside CI.
    pub fn create() -> Option<TestDb> {
        let name = format!("fg_test_{:016x}", fastrand::u64(..));
        let created = on_own_runtime(async {
            let admin = connect("postgres").await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
            Ok::<_, String>(())
        });
        match created {
            Ok(()) => Some(TestDb { name }),
            Err(why) => {
                super::skip_or_fail(&format!(
                    "PostgreSQL not reachable at {:?} ({why}); set FLEXGATE_TEST_PG or start \
                     PostgreSQL to run this test",
                    server()
                ));
                None
            }
        }
    }

    /// A fresh database with the schema applied ([`TestDb::migrate`]).
    pub async fn migrated() -> Option<TestDb> {
        let db = TestDb::create()?;
        db.migrate().await;
        Some(db)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL (`postgres://user@host:port/name`, from the
    /// server's host, port, user and password), for a store, a gateway's
    /// `database.url` or the `migrate` command.
    pub fn url(&self) -> String {
        let cfg: tokio_postgres::Config = server()
            .parse()
            .expect("FLEXGATE_TEST_PG: libpq key=value settings");
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            None => "127.0.0.1".to_string(),
            Some(other) => panic!("FLEXGATE_TEST_PG: a TCP host is needed, not {other:?}"),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = encode(cfg.get_user().unwrap_or("postgres").as_bytes());
        let password = cfg
            .get_password()
            .map(|p| format!(":{}", encode(p)))
            .unwrap_or_default();
        format!("postgres://{user}{password}@{host}:{port}/{}", self.name)
    }

    /// A pool on the database, as the gateway makes one.
    pub fn pool(&self) -> PgPool {
        PgPool::new(&self.url(), None).expect("valid URL")
    }

    /// Applies the schema (`flexgate migrate`).
    pub async fn migrate(&self) {
        flexgate::store::migrate::run(&self.pool())
            .await
            .expect("migrate");
    }

    /// A direct connection, for looking behind the store's back.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.name)
            .await
            .expect("connect to the test database")
    }

    /// The one integer `query` answers.
    pub async fn int(&self, query: &str) -> i64 {
        self.client()
            .await
            .query_one(query, &[])
            .await
            .unwrap_or_else(|e| panic!("{query}: {e:?}"))
            .get(0)
    }

    /// The rows of `table`.
    pub async fn count(&self, table: &str) -> i64 {
        self.int(&format!("SELECT count(*) FROM {table}")).await
    }

    /// A blocking connection, for tests without a runtime of their own.
    pub fn sql(&self) -> Sql {
        Sql::connect(&self.name).expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = &self.name;
        let dropped = on_own_runtime(async {
            connect("postgres")
                .await?
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .map_err(|e| e.to_string())
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {name}: {e}");
        }
    }
}

/// A blocking connection to a database of the test server, with a runtime
/// of its own (not for use inside a tokio runtime).
pub struct Sql {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Sql {
    /// A connection to `db` (`postgres`: the server's admin database).
    pub fn connect(db: &str) -> Result<Sql, String> {
        let rt = runtime();
        let client = rt.block_on(connect(db))?;
        Ok(Sql { rt, client })
    }

    pub fn exec(&self, statements: &str) {
        self.rt
            .block_on(self.client.batch_execute(statements))
            .unwrap_or_else(|e| panic!("{statements}: {e:?}"));
    }

    pub fn rows(&self, query: &str) -> Vec<tokio_postgres::Row> {
        self.rt
            .block_on(self.client.query(query, &[]))
            .unwrap_or_else(|e| panic!("{query}: {e:?}"))
    }

    pub fn int(&self, query: &str) -> i64 {
        self.rows(query)[0].get(0)
    }

    pub fn text(&self, query: &str) -> String {
        self.rows(query)[0].get(0)
    }
}

/// A connection to `db` on the test server, its connection task spawned on
/// the current runtime; an error when there is no answer within 3 s.
async fn connect(db: &str) -> Result<tokio_postgres::Client, String> {
    let url = format!("{} dbname={db}", server());
    match tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(&url, NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3s".to_string()),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `work` on a thread and runtime of its own: works from a plain test,
/// from any test runtime, and while unwinding.
fn on_own_runtime<T: Send>(work: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| runtime().block_on(work))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Percent-encodes all but the unreserved characters of a URL.
fn encode(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
