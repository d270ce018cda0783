//! The store backends the contract tests run against, each on a fresh database: SQLite in a
//! temporary folder always; PostgreSQL and MariaDB/MySQL when their servers answer, each test on
//! a database of its own, dropped afterwards. Without a server the test says it skipped that
//! backend and why; with `BELAY_TEST_REQUIRE_SERVICES=1` (set by `.ci/run`) a missing server
//! fails the test instead.
#![allow(dead_code)]

pub mod process;
pub mod proxy;
pub mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use belay::domain::UserId;
use belay::store::{self, Store};
use sqlx::Connection;

/// A database server the tests can create databases on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    MySql,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Postgres => "postgres",
            Server::MySql => "mysql",
        }
    }

    /// Where the server is: `BELAY_TEST_POSTGRES_URL` / `BELAY_TEST_MYSQL_URL`, or this
    /// machine's servers (trust auth, root with no password).
    pub fn admin_url(self) -> String {
        let (var, default) = match self {
            Server::Postgres => (
                "BELAY_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            Server::MySql => ("BELAY_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// The URL of database `name` on this server.
    pub fn url_of(self, name: &str) -> String {
        let admin = self.admin_url();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        format!("{base}/{name}")
    }
}

/// Whether a missing server fails the test instead of skipping it.
pub fn services_required() -> bool {
    ["BELAY_TEST_REQUIRE_SERVICES", "BELAY_REQUIRE_DATABASES"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// A fresh database on `server`, dropped when the guard goes; `None` (after saying why) when
/// the server does not answer and services are not required.
pub async fn fresh_database(server: Server) -> Option<Database> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "belay_t{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin = server.admin_url();
    let created = tokio::time::timeout(Duration::from_secs(10), async {
        execute(server, &admin, &format!("CREATE DATABASE {name}")).await
    })
    .await
    .map_err(|_| "timed out".to_owned())
    .and_then(|r| r);
    match created {
        Ok(()) => Some(Database {
            server,
            url: server.url_of(&name),
            name,
        }),
        Err(error) if services_required() => panic!(
            "{} at {admin} is required (BELAY_TEST_REQUIRE_SERVICES) but: {error}",
            server.name()
        ),
        Err(error) => {
            eprintln!(
                "skipping the {} backend: no server at {admin} ({error}); \
                 set BELAY_TEST_{}_URL to test it",
                server.name(),
                server.name().to_uppercase()
            );
            None
        }
    }
}

async fn execute(server: Server, url: &str, sql: &str) -> Result<(), String> {
    let result = match server {
        Server::Postgres => match sqlx::PgConnection::connect(url).await {
            Ok(mut c) => sqlx::raw_sql(sql).execute(&mut c).await.map(|_| ()),
            Err(e) => Err(e),
        },
        Server::MySql => match sqlx::MySqlConnection::connect(url).await {
            Ok(mut c) => sqlx::raw_sql(sql).execute(&mut c).await.map(|_| ()),
            Err(e) => Err(e),
        },
    };
    result.map_err(|e| e.to_string())
}

/// A database created for one test; dropped with the guard.
pub struct Database {
    pub server: Server,
    pub name: String,
    pub url: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let (server, name) = (self.server, self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let sql = match server {
                Server::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                Server::MySql => format!("DROP DATABASE IF EXISTS {name}"),
            };
            runtime.block_on(execute(server, &server.admin_url(), &sql))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

pub struct Backend {
    pub store: Arc<dyn Store>,
    /// The database URL the store was opened with.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _database: Option<Database>,
}

/// Opens a second store on the same database, as a second node would.
impl Backend {
    pub async fn another_node(&self) -> Arc<dyn Store> {
        store::connect(&self.url, 4).await.unwrap()
    }
}

/// The backends the contract tests run against.
const SERVERS: &[Server] = &[Server::Postgres, Server::MySql];

/// Every backend this build has, each on its own fresh database.
pub async fn backends() -> Vec<(&'static str, Backend)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/contract.db", dir.path().display());
    let sqlite = store::connect(&url, 4).await.unwrap();
    let mut all = vec![(
        "sqlite",
        Backend {
            store: sqlite,
            url,
            _dir: Some(dir),
            _database: None,
        },
    )];
    for &server in SERVERS {
        if let Some(database) = fresh_database(server).await {
            let url = database.url.clone();
            let store = store::connect(&url, 4).await.unwrap();
            all.push((
                server.name(),
                Backend {
                    store,
                    url,
                    _dir: None,
                    _database: Some(database),
                },
            ));
        }
    }
    all
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}
