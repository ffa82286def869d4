//! Fresh databases for tests, on either backend.
//!
//! PostgreSQL tests need `VWS_TEST_POSTGRES` (an admin URL; `scripts/test`
//! starts a server and sets it). Without it they fail loudly rather than pass.

use sqlx::Connection;

use crate::{Backend, Store};

/// A database that lives as long as this value (the SQLite file's folder is
/// removed on drop; PostgreSQL databases are named uniquely per test).
pub struct TestDb {
    /// Its URL.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Opens a store on it.
    pub async fn store(&self) -> Store {
        Store::open(&self.url).await.expect("open test store")
    }
}

/// Makes an empty database.
pub async fn fresh(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite:{}", dir.path().join("vws.db").display());
            TestDb {
                url,
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            let admin = std::env::var("VWS_TEST_POSTGRES").expect(
                "VWS_TEST_POSTGRES is not set: PostgreSQL tests need a server (scripts/test starts one and sets it)",
            );
            let name = format!("vws_test_{:016x}", rand::random::<u64>());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to VWS_TEST_POSTGRES");
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            TestDb {
                url: format!("{base}/{name}"),
                _dir: None,
            }
        }
    }
}
