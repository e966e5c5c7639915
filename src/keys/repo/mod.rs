//! The key store: plans, keys, secrets, daily usage and audit events in
//! PostgreSQL or SQLite, through sqlx's Any driver.
//!
//! One set of queries serves both databases: times are BIGINT
//! milliseconds, lists and objects are JSON text, booleans are 0/1, and
//! every statement is a constant with bound parameters (no SQL is built
//! from input; the usage flush's multi-row statements are built from a row
//! count only). Rows are read into named row structs (`sqlx::FromRow`),
//! never by column index.
//!
//! Every admin change goes through one unit of work, [`Work`]: it begins
//! the transaction, and its only way to commit, [`Work::commit`], takes the
//! change's audit event and its change notice, writes the event, sends the
//! notice (PostgreSQL NOTIFY, delivered only if the change commits) and
//! commits. The change's result comes back as [`Committed`], whose value
//! can only be had by [announcing](Committed::announce) the notice (this
//! replica's cache, other replicas' buses), so no change can leave out a
//! step.
//!
//! Files, one per table group:
//! * `plans.rs`: `plans`.
//! * `keys.rs`: `api_keys` and `key_secrets`.
//! * `usage.rs`: `usage_daily`, `api_keys.last_used_at` and `usage_flushes`.
//! * `audit.rs`: `audit_events`.
//!
//! May depend on: `keys::model`, `secret`, `tls` (the PEM files a PostgreSQL URL
//! names), sqlx. Knows nothing of gRPC or caching.

mod audit;
mod keys;
mod plans;
mod usage;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor};

use super::model::{Actor, Millis, PlanLimit, StoredLimit};
use crate::secret::redact_url;

pub use keys::{Found, KeyChanges, KeyFilter};
pub use usage::{Applied, USAGE_ROWS_PER_STATEMENT, UsageDelta};

/// The channel key changes are announced on (PostgreSQL).
pub const NOTIFY_CHANNEL: &str = "sluice_keys";

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The TLS files a PostgreSQL URL names (`sslrootcert`, `sslcert`,
/// `sslkey`), read and parsed before connecting: sqlx would report a
/// missing file as an I/O error without its name, and start-up would wait
/// for it as if the server were down.
fn check_tls_files(url: &str) -> Result<(), RepoError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let (param, key) = match name.as_ref() {
            "sslrootcert" => ("sslrootcert", false),
            "sslcert" => ("sslcert", false),
            "sslkey" => ("sslkey", true),
            _ => continue,
        };
        let path = Path::new(value.as_ref());
        let bad = |source| RepoError::TlsFile { param, source };
        let bytes = std::fs::read(path).map_err(|source| {
            bad(crate::tls::TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        })?;
        if key {
            crate::tls::parse_key(path, &bytes).map_err(bad)?;
        } else {
            crate::tls::parse_certs(path, &bytes).map_err(bad)?;
        }
    }
    Ok(())
}

/// A key-store failure.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("unsupported database URL {0:?}: use postgres://... or sqlite://...")]
    Scheme(String),
    #[error("key store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path} for migrations")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt row in {table}: {what}")]
    Corrupt { table: &'static str, what: String },
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// A TLS file named in the PostgreSQL URL cannot be used.
    #[error("--database-url {param}: {source}")]
    TlsFile {
        param: &'static str,
        #[source]
        source: crate::tls::TlsError,
    },
}

impl RepoError {
    /// A bounded name for what went wrong, for metric labels and spans:
    /// `unavailable` (no connection, the connection broke, no pooled
    /// connection free in time), `database` (the server answered with an
    /// error, a cancelled statement included), `corrupt` (a row sluice
    /// cannot read) or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            RepoError::Db(e) | RepoError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                match e {
                    sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed => "unavailable",
                    sqlx::Error::Database(_) => "database",
                    sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. } => "corrupt",
                    _ => "other",
                }
            }
            RepoError::ConnectTimeout(_) => "unavailable",
            RepoError::Corrupt { .. } => "corrupt",
            RepoError::Scheme(_)
            | RepoError::Migrate(_)
            | RepoError::Create { .. }
            | RepoError::Lock { .. }
            | RepoError::TlsFile { .. } => "other",
        }
    }

    /// Whether the failure may pass by itself: the server is not up yet,
    /// is starting (PostgreSQL's 57P03), has no connection slot free, or
    /// dropped the connection. Start-up retries these, and only these; a
    /// wrong password, a missing database, a refused migration or a bad
    /// URL fail at once.
    pub fn is_transient(&self) -> bool {
        match self {
            RepoError::Db(e) | RepoError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                transient(e)
            }
            RepoError::ConnectTimeout(_) => true,
            RepoError::Scheme(_)
            | RepoError::Migrate(_)
            | RepoError::Create { .. }
            | RepoError::Lock { .. }
            | RepoError::Corrupt { .. }
            | RepoError::TlsFile { .. } => false,
        }
    }
}

fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // cannot_connect_now, too_many_connections, connection_exception.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c == "57P03" || c == "53300" || c.starts_with("08")),
        _ => false,
    }
}

/// How long connecting to the database may take, each time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a change found.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("no plan named {0:?}")]
    NoSuchPlan(String),
    #[error("plan {name:?} is used by {keys} key(s); move or revoke them first")]
    PlanInUse { name: String, keys: i64 },
    #[error("key {0} is revoked; a revoked key cannot change")]
    Revoked(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> ChangeError {
        ChangeError::Repo(RepoError::Db(e))
    }
}

/// The key store.
#[derive(Clone, Debug)]
pub struct Repository {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite database file; `None` for PostgreSQL and `:memory:`.
    sqlite_file: Option<PathBuf>,
}

impl Repository {
    /// Connects. A SQLite file is created if missing, mode 0600 (and the
    /// journal files SQLite makes beside it take its mode), in a directory
    /// created 0700, before SQLite opens it: nothing of the database is
    /// ever readable by others, not even for a moment.
    ///
    /// # Errors
    /// [`RepoError::Scheme`] for another URL; [`RepoError::Create`] when the
    /// SQLite file or its directory cannot be created; [`RepoError::Db`]
    /// when the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Repository, RepoError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(RepoError::Scheme(redact_url(url)));
        };
        let url = match backend {
            // Create the file on first start.
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let sqlite_file = match backend {
            Backend::Sqlite => create_sqlite_file(&url)?,
            Backend::Postgres => None,
        };
        if backend == Backend::Postgres {
            check_tls_files(&url)?;
        }
        let options = AnyConnectOptions::from_str(&url)?;
        if backend == Backend::Postgres {
            // One connection first, for the server's own answer: the pool
            // would only say that it timed out.
            let probe =
                tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect_with(&options))
                    .await
                    .map_err(|_| RepoError::ConnectTimeout(CONNECT_TIMEOUT))??;
            let _ = probe.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers never wait for the writer; writers wait
                        // for each other instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Repository {
            pool,
            backend,
            sqlite_file,
        })
    }

    /// A second pool on the same database for the request path's key
    /// lookups: connections of its own (admin changes and usage writes
    /// never hold them up) and a bound of its own: PostgreSQL cancels a
    /// statement past `timeout` (`statement_timeout`), SQLite waits at most
    /// `timeout` for a lock (`busy_timeout`); the caller bounds each
    /// lookup, connection wait included, by `timeout` too. Connects lazily
    /// and keeps one connection once open; [`Repository::warm`] opens it.
    pub fn lookups(&self, max_connections: u32, timeout: Duration) -> Repository {
        let backend = self.backend;
        let ms = timeout.as_millis().max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(1)
            // The pool's own bound is the longer one, so that
            // `warm` can take as long as a connection takes to open.
            .acquire_timeout(CONNECT_TIMEOUT.max(timeout))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match backend {
                        Backend::Postgres => {
                            conn.execute(format!("SET statement_timeout = {ms}").as_str())
                                .await?;
                        }
                        Backend::Sqlite => {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute(format!("PRAGMA busy_timeout = {ms}").as_str())
                                .await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_lazy_with((*self.pool.connect_options()).clone());
        Repository {
            pool,
            backend,
            sqlite_file: self.sqlite_file.clone(),
        }
    }

    /// Opens a connection now if none is open, within [`CONNECT_TIMEOUT`],
    /// and leaves it in the pool: on a pool made by [`Repository::lookups`]
    /// the first lookups after start-up then find one open instead of
    /// paying for TCP, TLS and authentication inside their own bound (100
    /// ms by default, less than a remote PostgreSQL may need).
    ///
    /// # Errors
    /// [`RepoError::ConnectTimeout`], or [`RepoError::Db`] when the
    /// database refuses.
    pub async fn warm(&self) -> Result<(), RepoError> {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.pool.acquire())
            .await
            .map_err(|_| RepoError::ConnectTimeout(CONNECT_TIMEOUT))??;
        drop(conn);
        Ok(())
    }

    pub const fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations. Concurrent callers (replicas starting
    /// together) take turns: on PostgreSQL sqlx holds an advisory lock; on
    /// SQLite, where sqlx takes no lock, an exclusive lock on the file
    /// `<database>.migrate-lock` beside the database is held meanwhile, so
    /// a second replica sees the first one's migrations as applied instead
    /// of applying them again (`table plans already exists`).
    ///
    /// # Errors
    /// [`RepoError::Migrate`] when a migration fails or the database holds
    /// migrations this binary does not know; [`RepoError::Lock`] when the
    /// lock file cannot be used or is held for longer than
    /// [`MIGRATION_LOCK_WAIT`].
    pub async fn migrate(&self) -> Result<(), RepoError> {
        match self.backend {
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?;
            }
            Backend::Sqlite => {
                let _lock = match &self.sqlite_file {
                    Some(db) => Some(MigrationLock::acquire(db).await?),
                    None => None,
                };
                sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
            }
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins an admin change.
    async fn begin(&self) -> Result<Work, ChangeError> {
        Ok(Work {
            tx: self.begin_write().await?,
            backend: self.backend,
        })
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock at once (`BEGIN IMMEDIATE`), waiting for it up to the
    /// connection's `busy_timeout`: a plain `BEGIN` reads first and takes
    /// the lock at its first write, and when another connection has
    /// committed in between, SQLite refuses that write at once ("database
    /// is locked") without waiting, so two admin changes, or one and a
    /// usage flush, would fail each other.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }
}

/// Creates the SQLite database file of `url` (and its directory) when
/// missing, owner-only from the start; returns its path (`None` for an
/// in-memory database).
fn create_sqlite_file(url: &str) -> Result<Option<PathBuf>, RepoError> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return Ok(None);
    }
    fn create(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
        move |source| RepoError::Create {
            path: path.to_path_buf(),
            source,
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(create(dir))?;
    }
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        file.mode(0o600);
    }
    file.open(path).map_err(create(path))?;
    Ok(Some(path.to_path_buf()))
}

/// The longest a replica waits for another one's SQLite migrations.
pub const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(60);

/// An exclusive lock on `<database>.migrate-lock`, released on drop (or
/// by the OS when the process dies, so a crash never leaves it held).
#[derive(Debug)]
struct MigrationLock {
    _file: std::fs::File,
}

impl MigrationLock {
    async fn acquire(db: &Path) -> Result<MigrationLock, RepoError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".migrate-lock");
        let path = PathBuf::from(name);
        let lock_err = |source| RepoError::Lock {
            path: path.clone(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(lock_err)?;
        let deadline = tokio::time::Instant::now() + MIGRATION_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(MigrationLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(lock_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another process has held it for {} s",
                        MIGRATION_LOCK_WAIT.as_secs()
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// === the unit of work ===

/// What other replicas are told when a change commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Nothing anyone could have cached changed (a new key or plan, a
    /// deleted plan no key uses).
    None,
    /// A key changed: its id.
    Key(String),
    /// A plan changed: every key on it.
    Plan(String),
}

impl Notice {
    /// The payload on the wire: a key id, `plan:<name>`.
    pub fn payload(&self) -> Option<String> {
        match self {
            Notice::None => None,
            Notice::Key(id) => Some(id.clone()),
            Notice::Plan(name) => Some(format!("plan:{name}")),
        }
    }
}

/// Applies and spreads a committed change's notice: this replica's cache,
/// and whatever carries notices to other replicas.
pub trait Announce {
    fn announce(&self, notice: &Notice);
}

/// The result of a committed change, with the notice that must go out
/// before anyone uses it.
#[derive(Debug)]
#[must_use = "a committed change must be announced: call .announce()"]
pub struct Committed<T> {
    value: T,
    notice: Notice,
}

impl<T> Committed<T> {
    /// Announces the change (nothing for [`Notice::None`]) and gives its
    /// result: the only way to it.
    pub fn announce(self, to: &impl Announce) -> T {
        if self.notice != Notice::None {
            to.announce(&self.notice);
        }
        self.value
    }
}

/// The audit event of a change.
#[derive(Debug)]
struct Audit<'a> {
    actor: &'a Actor,
    action: &'static str,
    target: String,
    details: serde_json::Value,
    at: Millis,
}

/// One admin change in progress: an open transaction. Dropped without
/// [`Work::commit`], it rolls back.
struct Work {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
}

impl Work {
    /// The transaction's connection, for the change's statements.
    fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Writes the audit event, sends the notice (PostgreSQL: NOTIFY in the
    /// same transaction, so it is delivered only if the change commits)
    /// and commits; the caller must still [announce](Committed::announce)
    /// the result.
    async fn commit<T>(
        mut self,
        audit: Audit<'_>,
        notice: Notice,
        value: T,
    ) -> Result<Committed<T>, sqlx::Error> {
        audit::insert(&mut self.tx, &audit).await?;
        if self.backend == Backend::Postgres
            && let Some(payload) = notice.payload()
        {
            sqlx::query("SELECT pg_notify($1, $2)::text")
                .bind(NOTIFY_CHANNEL)
                .bind(payload)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(Committed { value, notice })
    }
}

// === shared column codecs ===

fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn limits_json(limits: &[PlanLimit]) -> String {
    let stored: Vec<StoredLimit> = limits.iter().map(StoredLimit::from).collect();
    json_text(&stored)
}

fn parse_limits(table: &'static str, text: &str) -> Result<Vec<PlanLimit>, RepoError> {
    let stored: Vec<StoredLimit> =
        serde_json::from_str(text).map_err(|e| corrupt(table, format!("limits: {e}")))?;
    stored
        .into_iter()
        .map(|s| {
            s.into_limit()
                .ok_or_else(|| corrupt(table, "limits: unknown unit or algorithm"))
        })
        .collect()
}

fn corrupt(table: &'static str, what: impl std::fmt::Display) -> RepoError {
    RepoError::Corrupt {
        table,
        what: what.to_string(),
    }
}
