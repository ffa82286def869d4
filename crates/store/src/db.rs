//! Opening the database and the errors every query can return.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use time::OffsetDateTime;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The record changed since it was read; re-read and retry.
    #[error("workspace {0} was changed by another request; try again")]
    Conflict(String),
    /// A unique name is taken.
    #[error("{0}")]
    Duplicate(String),
    /// An image name belongs to someone else.
    #[error("image name {name} belongs to {owner}")]
    NameTaken {
        /// The name.
        name: String,
        /// Its owner's DN.
        owner: String,
    },
    /// A stored value could not be decoded.
    #[error("corrupt record {id}: {message}")]
    Corrupt {
        /// Which record.
        id: String,
        /// What was wrong.
        message: String,
    },
    /// Something the change needs went away meanwhile.
    #[error("{0}")]
    Gone(String),
    /// An insert past the owner's quota.
    #[error("{0}")]
    OverQuota(String),
    /// Something is still used (an image by workspaces).
    #[error("{0}")]
    InUse(String),
    /// A list cursor that this store did not hand out.
    #[error("{0:?} is not a list cursor")]
    BadCursor(String),
    /// The database URL is not one vws understands.
    #[error("unsupported database URL {0:?}: expected sqlite:PATH or postgres://…")]
    BadUrl(String),
}

impl StoreError {
    pub(crate) fn corrupt(id: &str, message: impl ToString) -> Self {
        StoreError::Corrupt {
            id: id.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn from_insert(e: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate(what()),
            _ => StoreError::Db(e),
        }
    }
}

/// Unix milliseconds of a time.
pub fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A time from Unix milliseconds.
pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The repository database.
#[derive(Clone)]
pub struct Store {
    /// Connections for reads.
    pub(crate) pool: AnyPool,
    /// Connections for writes: on SQLite one connection, so writers queue
    /// for it in the process (in order, awake at once) rather than in
    /// SQLite's busy handler, which sleeps 1 ms and more between tries;
    /// on PostgreSQL the same pool as reads.
    pub(crate) writer: AnyPool,
    backend: Backend,
    /// The database URL (PostgreSQL's LISTEN needs a connection of its own).
    pub(crate) url: String,
    /// Wake-ups for event followers, started on first use.
    pub(crate) wakeups: std::sync::Arc<std::sync::OnceLock<tokio::sync::watch::Receiver<u64>>>,
}

// Not derived: the URL may carry a password.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to `url` (`sqlite:/path/vws.db` or `postgres://…`), creating a
    /// SQLite file if needed, and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let connect = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL lets readers run beside the writer; the busy
                            // timeout turns contention with another process
                            // (an administrator's `sqlite3`) into waiting.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(options.clone())
        };
        let (pool, writer) = match backend {
            Backend::Sqlite => {
                let writer = connect(1).await?;
                (connect(4).await?, writer)
            }
            Backend::Postgres => {
                let pool = connect(16).await?;
                (pool.clone(), pool)
            }
        };
        MIGRATOR.run(&writer).await?;
        Ok(Store {
            pool,
            writer,
            backend,
            url,
            wakeups: Default::default(),
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// Which free item a pool allocation tries: the first on the first attempt
/// (so a quiet pool hands out the lowest), a random one of the first 256
/// after a lost race, so that racers spread out instead of all taking the
/// same next one. `None` when nothing is free.
pub(crate) fn pick_free<T>(free: impl Iterator<Item = T>, attempt: usize) -> Option<T> {
    let mut free: Vec<T> = free.take(256).collect();
    if free.is_empty() {
        return None;
    }
    let i = if attempt == 0 {
        0
    } else {
        rand::Rng::gen_range(&mut rand::thread_rng(), 0..free.len())
    };
    Some(free.swap_remove(i))
}

impl Store {
    /// Makes an empty database `name` on the PostgreSQL server `server`
    /// (an administrator's URL) and returns its URL: the benchmarks' fresh
    /// repositories.
    pub async fn create_postgres_database(server: &str, name: &str) -> Result<String, StoreError> {
        use sqlx::Connection;
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::BadUrl(format!("database name {name:?}")));
        }
        let mut conn = sqlx::PgConnection::connect(server).await?;
        conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let _ = conn.close().await;
        let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
        Ok(format!("{base}/{name}"))
    }

    /// Adds `n` copies of workspace `template`'s record, owned in turn by
    /// `owners` made-up owners (`/O=vws/OU=bench/CN=ownerK`): records for
    /// the scale benchmark to list and place among, without their history.
    /// PostgreSQL only.
    pub async fn seed_workspace_copies(
        &self,
        template: &str,
        n: u64,
        owners: u64,
    ) -> Result<u64, StoreError> {
        if self.backend != Backend::Postgres {
            return Err(StoreError::BadUrl(
                "seeding records needs PostgreSQL".into(),
            ));
        }
        let done = sqlx::query(
            "INSERT INTO workspaces SELECT (jsonb_populate_record(w, jsonb_build_object( \
                'id', 'ws-seed-' || g, 'name', 'seed-' || g, \
                'owner', '/O=vws/OU=bench/CN=owner' || (g % $3)))).* \
             FROM workspaces w, generate_series(1, $2) g WHERE w.id = $1",
        )
        .bind(template)
        .bind(n as i64)
        .bind(owners.max(1) as i64)
        .execute(&self.writer)
        .await?;
        // The owners' counts, as creates would have kept them.
        sqlx::query(
            "INSERT INTO owner_locks (owner, workspaces, ram_bytes) \
             SELECT owner, COUNT(*), SUM(ram_bytes) FROM workspaces GROUP BY owner \
             ON CONFLICT (owner) DO UPDATE SET workspaces = EXCLUDED.workspaces, ram_bytes = EXCLUDED.ram_bytes",
        )
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }
}
