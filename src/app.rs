//! Composition root: the one place that names concrete types. It builds
//! the parts (counter store: memory, or Redis behind the resilience
//! wrapper; the engine; the key store and its parts: resolver, admin,
//! usage flusher, cache; admin authentication; the data-plane gRPC server, the admin gRPC server on
//! its own listener, the HTTP server; the config watcher) and runs them,
//! with their background tasks (store health, counter sweep, config
//! reload, TLS and admin-token key reload, usage flush, key-change
//! listeners), until shutdown.
//!
//! Shutdown follows the phases of [`crate::shutdown`]: on the signal,
//! health turns NOT_SERVING for every service and `/readyz` fails, while
//! every server keeps answering on old and new connections for
//! `shutdown_delay`; then the listeners close, HTTP/2 connections get
//! GOAWAY and open calls get `drain_timeout` to finish; then background
//! tasks stop, and the final usage flush and the key store's close each
//! get a deadline of their own. Every server task follows one
//! [`Coordinator`]; gRPC listeners are all served through `spawn_grpc`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic_reflection::server as reflection;
use tower_layer::{Identity, Stack};

use crate::admission::Admission;
use crate::auth::secrets::load_or_create_secret;
use crate::auth::{AdminAuth, AdminAuthConfig, KeyReload};
use crate::authz::{Gate, GateOptions};
use crate::config::{self, LoadOptions, watch::ConfigWatch};
use crate::core::clock::SystemClock;
use crate::core::stats::StatsRegistry;
use crate::engine::{Engine, HeaderMode, RequestLimits, Settings};
use crate::grpc::admission::Admitted;
use crate::grpc::observe::ObserveLayer;
use crate::grpc::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::grpc::pb::sluice::v1::admin_service_server::AdminServiceServer;
use crate::grpc::pb::sluice::v1::key_service_server::KeyServiceServer;
use crate::grpc::{AdminGate, AdminGrpc, AuthzGrpc, KeyGrpc, RlsService};
use crate::http::{self, HttpState};
use crate::keys::cache::KeyCache;
use crate::keys::hashing::KeyHasher;
use crate::keys::notify::RedisBus;
use crate::keys::repo::{Backend, RepoError, Repository};
use crate::keys::{KeyAdmin, KeyOptions, KeyParts, Resolver, UsageFlusher};
use crate::secret::{Secret, redact_url};
use crate::service::{CallerSource, Decider};
use crate::shutdown::{Coordinator, Phase, Shutdown};
use crate::store::MemoryStore;
use crate::store::redis::{ConnectError, RedisOptions, RedisStore};
use crate::store::resilient::{AnyStore, ResilienceOptions, Resilient};
use crate::telemetry::metrics::{self, Metrics};
use crate::tls::{Incoming, Reload, ReloadingServerConfig, ServerTlsFiles};

/// Everything `sluice serve` is told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub config_path: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin API's own gRPC listener; `None` turns the admin API off.
    pub admin_grpc_addr: Option<SocketAddr>,
    /// TLS (and mTLS) of the data-plane gRPC listener; `None`: plaintext.
    pub tls: Option<ServerTlsFiles>,
    /// TLS (and mTLS) of the admin listener; `None`: plaintext.
    pub admin_tls: Option<ServerTlsFiles>,
    pub headers: HeaderMode,
    pub shadow_mode: bool,
    pub merge_domains: bool,
    pub max_counters: u64,
    pub request_limits: RequestLimits,
    pub max_metric_keys: usize,
    pub max_request_bytes: usize,
    /// Decision calls in flight at most (0: no bound).
    pub max_concurrent_requests: usize,
    /// The longest a gRPC call may take when its deadline asks for more.
    pub request_timeout: Duration,
    /// How long sluice keeps answering, not ready, after the signal.
    pub shutdown_delay: Duration,
    /// How long calls still open after the delay get to finish.
    pub drain_timeout: Duration,
    /// How long start-up retries a database or Redis that cannot be
    /// reached yet (still starting beside sluice); zero: fail at once.
    pub startup_wait: Duration,
    /// Shifts the memory store's clock (tests of window alignment).
    pub clock_offset_ns: i64,
    /// Shared counters in Redis; `None` keeps them in memory.
    pub redis: Option<RedisConfig>,
    /// The gateway's ext_authz Check and /auth.
    pub authz: GateOptions,
    /// API keys, plans and the admin API.
    pub keys: KeysConfig,
    /// Who a caller is, for the failed-validation guard.
    pub caller: CallerSource,
}

/// The key store and admin authentication.
#[derive(Clone)]
pub struct KeysConfig {
    /// `postgres://...` or `sqlite://path` (created on first start).
    pub database_url: String,
    /// Apply migrations at start.
    pub migrate: bool,
    pub max_connections: u32,
    /// The HMAC secret keys are hashed under (`SLUICE_KEY_SECRET`);
    /// with SQLite, generated beside the database when not given.
    pub key_secret: Option<Secret>,
    pub auth: AdminAuthConfig,
    pub options: KeyOptions,
}

impl std::fmt::Debug for KeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field("migrate", &self.migrate)
            .field("key_secret", &self.key_secret)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Where the embedded database keeps its generated secrets: the SQLite
/// file's directory. `None` for PostgreSQL.
pub fn sqlite_dir(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    let parent = std::path::Path::new(path).parent()?;
    Some(if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_path_buf()
    })
}

/// The file holding the generated admin-token secret of an embedded
/// database (what `sluice token` reads when SLUICE_JWT_SECRET is unset).
pub fn jwt_secret_file(database_url: &str) -> Option<PathBuf> {
    sqlite_dir(database_url).map(|d| d.join("jwt-secret"))
}

/// Connects the key store (migrating unless told not to) and settles the
/// secrets: given ones win; with SQLite, missing ones are generated into
/// files beside the database; with PostgreSQL the key secret is required
/// and the admin API stays off without a token key. Given secrets and key
/// files are checked before anything is connected, so a bad one fails at
/// once; a database that cannot be reached yet is retried for
/// `startup_wait`.
///
/// # Errors
/// An unreachable database, a failed migration, or unusable secrets.
pub async fn open_key_store(
    cfg: &KeysConfig,
    startup_wait: Duration,
) -> anyhow::Result<(Repository, KeyHasher, AdminAuth)> {
    // Where missing secrets are generated: beside a SQLite database only.
    let dir = sqlite_dir(&cfg.database_url);
    let given_hasher = match &cfg.key_secret {
        Some(s) => Some(KeyHasher::new(s.expose())?),
        None if dir.is_none() => anyhow::bail!(
            "SLUICE_KEY_SECRET must be set (at least 32 bytes) when keys are stored in PostgreSQL; every replica needs the same one"
        ),
        None => None,
    };
    let no_admin_key = cfg.auth.hs256_secret.is_none()
        && cfg.auth.public_key_pem.is_none()
        && cfg.auth.jwks.is_none();
    let given_auth = if no_admin_key && dir.is_some() {
        None
    } else {
        Some(AdminAuth::from_config(&cfg.auth)?)
    };
    let url = redact_url(&cfg.database_url);
    let repo = retry_at_start(
        "the key store",
        startup_wait,
        RepoError::is_transient,
        || Repository::connect(&cfg.database_url, cfg.max_connections),
    )
    .await
    .with_context(|| format!("cannot open the key store at {url}"))?;
    if cfg.migrate {
        retry_at_start(
            "the key store",
            startup_wait,
            RepoError::is_transient,
            || repo.migrate(),
        )
        .await
        .with_context(|| format!("cannot migrate the key store at {url}"))?;
    }
    // `dir` is always set below: without it both were required above.
    let hasher = match (given_hasher, &dir) {
        (Some(h), _) => h,
        (None, d) => {
            let file = d.clone().unwrap_or_default().join("key-secret");
            let (s, created) = load_or_create_secret(&file, 32)?;
            if created {
                tracing::info!(file = %file.display(), "generated the key-hashing secret");
            }
            KeyHasher::new(s.expose())?
        }
    };
    let auth = match (given_auth, &dir) {
        (Some(a), _) => a,
        (None, d) => {
            let file = d.clone().unwrap_or_default().join("jwt-secret");
            let (s, created) = load_or_create_secret(&file, 32)?;
            tracing::info!(
                file = %file.display(),
                generated = created,
                "admin tokens are signed with the secret in this file; mint one with `sluice token`"
            );
            let mut auth_cfg = cfg.auth.clone();
            auth_cfg.hs256_secret = Some(s);
            AdminAuth::from_config(&auth_cfg)?
        }
    };
    if !auth.is_enabled() {
        tracing::warn!(
            "the admin API is disabled: set SLUICE_JWT_SECRET or --jwt-public-key / --jwt-jwks"
        );
    }
    Ok((repo, hasher, auth))
}

/// Runs `attempt` until it succeeds, fails for good, or `wait` has passed:
/// a dependency that is only slow to come up (PostgreSQL or Redis starting
/// in the same pod) is retried with backoff (0.1 s doubling to 2 s),
/// logged at most every 5 s; anything else fails at once.
///
/// # Errors
/// The first permanent error, or the last transient one once `wait` is
/// used up (saying so).
async fn retry_at_start<T, E, F, Fut>(
    what: &str,
    wait: Duration,
    is_transient: fn(&E) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + wait;
    let mut backoff = Duration::from_millis(100);
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !is_transient(&e) {
            return Err(e.into());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(anyhow::Error::new(e).context(format!(
                "still unreachable after {} s (--startup-wait {})",
                now.duration_since(start).as_secs(),
                wait.as_secs()
            )));
        }
        if logged.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(5)) {
            logged = Some(now);
            tracing::warn!(
                error = %e,
                waited_s = now.duration_since(start).as_secs(),
                startup_wait_s = wait.as_secs(),
                "{what} is not reachable yet; retrying"
            );
        }
        // The last attempt falls on the deadline.
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The Redis store and how to survive its failures.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub options: RedisOptions,
    pub resilience: ResilienceOptions,
}

type Store = AnyStore<RedisStore>;

/// A built, bound, not yet running service.
#[derive(Debug)]
pub struct Application {
    cfg: ServeConfig,
    grpc: TcpListener,
    http: TcpListener,
    admin: Option<TcpListener>,
    grpc_tls: Option<Arc<ReloadingServerConfig>>,
    admin_tls: Option<Arc<ReloadingServerConfig>>,
    engine: Arc<Engine<Store>>,
    stats: Arc<StatsRegistry>,
    metrics: Arc<Metrics>,
    /// Started before the first load, so no change can slip between them.
    watch: Option<ConfigWatch>,
    /// Fingerprint of the configuration that was loaded.
    loaded: u64,
    keys: Arc<Resolver<Store>>,
    key_admin: Arc<KeyAdmin>,
    flusher: UsageFlusher,
    key_cache: Arc<KeyCache>,
    repo: Repository,
    auth: Arc<AdminAuth>,
}

impl Application {
    /// Loads the configuration and binds both listeners.
    ///
    /// # Errors
    /// An invalid configuration (every problem listed) or a port that
    /// cannot be bound.
    pub async fn build(cfg: ServeConfig) -> anyhow::Result<Application> {
        let stats = Arc::new(StatsRegistry::default());
        let metrics = Arc::new(Metrics::default());
        let options = LoadOptions {
            merge_domains: cfg.merge_domains,
        };
        let watch = match ConfigWatch::start(&cfg.config_path, Duration::from_millis(200)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "configuration hot reload is off");
                None
            }
        };
        let loaded = config::fingerprint(&cfg.config_path);
        let rules = match config::load(&cfg.config_path, options, &stats) {
            Ok(r) => r,
            Err(e) => {
                metrics.config_load_error.inc();
                return Err(e).context("cannot load the configuration");
            }
        };
        metrics.config_load_success.inc();
        let local = MemoryStore::new(
            Arc::new(SystemClock {
                offset_ns: cfg.clock_offset_ns,
            }),
            cfg.max_counters,
        );
        let store = match &cfg.redis {
            None => AnyStore::Memory(local),
            Some(r) => {
                let url = redact_url(&r.options.url);
                let redis = retry_at_start(
                    "Redis",
                    cfg.startup_wait,
                    ConnectError::is_transient,
                    || RedisStore::connect(r.options.clone()),
                )
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
                tracing::info!(redis = %url, failure_mode = ?r.resilience.mode, "counters in Redis");
                AnyStore::Shared(Arc::new(Resilient::new(redis, local, r.resilience)))
            }
        };
        let engine = Arc::new(Engine::new(
            store,
            rules,
            Settings {
                global_shadow_mode: cfg.shadow_mode,
                headers: cfg.headers,
                request_limits: cfg.request_limits,
                max_metric_keys: cfg.max_metric_keys,
            },
        ));
        let (repo, hasher, auth) = open_key_store(&cfg.keys, cfg.startup_wait).await?;
        tracing::info!(
            database = %redact_url(&cfg.keys.database_url),
            admin_api = auth.is_enabled(),
            "key store ready"
        );
        let mut bus: Option<Arc<dyn crate::keys::ChangeBus>> = None;
        if let Some(r) = &cfg.redis {
            let o = &r.options;
            match RedisBus::connect(o).await {
                Ok(b) => bus = Some(Arc::new(b)),
                Err(e) => tracing::warn!(
                    error = %e,
                    "key changes will not be announced on Redis; other replicas see them at the cache TTL"
                ),
            }
        }
        let KeyParts {
            resolver: keys,
            admin: key_admin,
            flusher,
            cache: key_cache,
        } = KeyParts::new(repo.clone(), hasher, engine.clone(), cfg.keys.options, bus);
        keys.warm().await;
        let auth = Arc::new(auth);
        let grpc = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC address {}", cfg.grpc_addr))?;
        let http = TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("cannot bind the HTTP address {}", cfg.http_addr))?;
        let admin = match cfg.admin_grpc_addr {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind the admin gRPC address {addr}"))?,
            ),
        };
        let grpc_tls = load_tls("grpc", "--tls-", cfg.tls.as_ref())?;
        let admin_tls = match cfg.admin_grpc_addr {
            Some(_) => load_tls("admin", "--admin-tls-", cfg.admin_tls.as_ref())?,
            None => None,
        };
        if let Some(addr) = cfg.admin_grpc_addr
            && !addr.ip().is_loopback()
            && admin_tls.is_none()
        {
            tracing::warn!(
                admin_grpc_addr = %addr,
                "the admin API listens beyond loopback without TLS: bearer tokens and new key secrets cross the network in clear"
            );
        }
        Ok(Application {
            cfg,
            grpc,
            http,
            admin,
            grpc_tls,
            admin_tls,
            engine,
            stats,
            metrics,
            watch,
            loaded,
            keys,
            key_admin,
            flusher,
            key_cache,
            repo,
            auth,
        })
    }

    /// The bound gRPC address (the real port when 0 was asked for).
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound HTTP address.
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound admin gRPC address, if the admin API is on.
    ///
    /// # Errors
    /// When the OS cannot tell.
    pub fn admin_grpc_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr).transpose()
    }

    /// Serves until `signal` completes, then shuts down in the phases of
    /// [`crate::shutdown`]: not ready at once, still answering for
    /// `shutdown_delay`, then GOAWAY and at most `drain_timeout` for the
    /// calls already open, then the usage flush with its own deadline.
    ///
    /// # Errors
    /// When reflection cannot be built or a server fails.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Application {
            cfg,
            grpc,
            http,
            admin,
            grpc_tls,
            admin_tls,
            engine,
            stats,
            metrics,
            watch,
            loaded,
            keys,
            key_admin,
            flusher,
            key_cache,
            repo,
            auth,
        } = self;
        let coordinator = Coordinator::default();
        let shutdown = coordinator.subscribe();
        let ready = Arc::new(AtomicBool::new(true));

        // Health reports on "" and every service served; all of them turn
        // NOT_SERVING when shutdown begins.
        let mut health_services = vec![
            "",
            <RateLimitServiceServer<RlsService<Store>> as NamedService>::NAME,
            <KeyServiceServer<KeyGrpc<Store>> as NamedService>::NAME,
            <AuthorizationServer<AuthzGrpc<Store>> as NamedService>::NAME,
        ];
        if admin.is_some() {
            health_services.push(<AdminServiceServer<AdminGrpc> as NamedService>::NAME);
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        for service in &health_services {
            health
                .set_service_status(service, tonic_health::ServingStatus::Serving)
                .await;
        }

        // Each listener's reflection lists only what that listener serves.
        let data_plane = [
            <RateLimitServiceServer<RlsService<Store>> as NamedService>::NAME,
            <KeyServiceServer<KeyGrpc<Store>> as NamedService>::NAME,
            <AuthorizationServer<AuthzGrpc<Store>> as NamedService>::NAME,
            HEALTH_SERVICE,
        ];
        let admin_plane = [
            <AdminServiceServer<AdminGrpc> as NamedService>::NAME,
            HEALTH_SERVICE,
        ];
        let (reflection_v1, reflection_v1alpha) = reflection(&data_plane)?;

        let decider = Arc::new(Decider::new(engine.clone(), Some(keys.clone())));
        let caller = Arc::new(cfg.caller.clone());
        let admission = Admission::new(
            cfg.max_concurrent_requests,
            cfg.request_timeout,
            metrics.clone(),
        );
        let rls = RateLimitServiceServer::new(RlsService::new(
            decider.clone(),
            metrics.clone(),
            caller.clone(),
        ))
        .max_decoding_message_size(cfg.max_request_bytes);
        let key_service =
            KeyServiceServer::new(KeyGrpc::new(keys.clone(), metrics.clone(), caller.clone()))
                .max_decoding_message_size(cfg.max_request_bytes);
        // Every admin call passes the one gate: method → scope, token,
        // failed-authentication and admin-call allowances.
        let admin_service = AdminGate::new(
            AdminServiceServer::new(AdminGrpc::new(key_admin.clone()))
                .max_decoding_message_size(cfg.max_request_bytes),
            auth.clone(),
            key_admin,
            caller.clone(),
        );
        let gate = Arc::new(Gate::new(decider.clone(), cfg.authz.clone()));
        let authz_service = AuthorizationServer::new(AuthzGrpc::new(gate.clone(), metrics.clone()))
            .max_decoding_message_size(cfg.max_request_bytes);

        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        // Spans and admin call counts, on both listeners.
        let observe = ObserveLayer::new(metrics.clone());
        let grpc_task = spawn_grpc(
            tonic::transport::Server::builder()
                .layer(observe.clone())
                .add_service(Admitted::new(rls, admission.clone()))
                .add_service(Admitted::new(key_service, admission.clone()))
                .add_service(Admitted::new(authz_service, admission.clone()))
                .add_service(health_service.clone())
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha),
            connections(grpc, "grpc", grpc_tls.clone(), &metrics),
            &shutdown,
        );
        let admin_task = match admin {
            None => None,
            Some(listener) => {
                let (reflection_v1, reflection_v1alpha) = reflection(&admin_plane)?;
                Some(spawn_grpc(
                    tonic::transport::Server::builder()
                        .layer(observe)
                        .add_service(admin_service)
                        .add_service(health_service)
                        .add_service(reflection_v1)
                        .add_service(reflection_v1alpha),
                    connections(listener, "admin", admin_tls.clone(), &metrics),
                    &shutdown,
                ))
            }
        };

        let health_task = tokio::spawn(follow_store_health(
            decider.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        // A shared store's breaker probe (readiness and health do not
        // follow the store: its failure mode answers while it is down).
        let store_watch = engine.store().watch().map(tokio::spawn);
        let mut registry = metrics::registry(metrics.clone(), engine.clone());
        metrics::register_key_store(&mut registry, keys.clone());
        let http_state = Arc::new(HttpState {
            decider,
            caller,
            gate,
            metrics: metrics.clone(),
            registry,
            ready,
            shutdown: shutdown.clone(),
            admission: admission.clone(),
        });
        let http_task = tokio::spawn({
            let stop = shutdown.clone();
            axum::serve(
                http,
                http::router(http_state).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.reached(Phase::Stopping).await })
            .into_future()
        });
        let sweeper = tokio::spawn(sweep_forever(engine.clone()));
        let tls_reloaders: Vec<_> = [("grpc", grpc_tls), ("admin", admin_tls)]
            .into_iter()
            .filter_map(|(name, tls)| {
                tls.map(|t| tokio::spawn(reload_tls_forever(name, t, metrics.clone())))
            })
            .collect();
        let jwt_key_reloader = (!auth.key_files().is_empty())
            .then(|| tokio::spawn(reload_jwt_keys_forever(auth.clone())));
        let watcher = tokio::spawn(reload_forever(
            watch,
            loaded,
            cfg.config_path.clone(),
            LoadOptions {
                merge_domains: cfg.merge_domains,
            },
            engine.clone(),
            stats,
            metrics.clone(),
        ));
        let closed = || {
            let s = shutdown.clone();
            async move { s.reached(Phase::Closed).await }
        };
        let flusher = {
            let stop = closed();
            tokio::spawn(async move { flusher.run(stop).await })
        };
        let listener = (repo.backend() == Backend::Postgres).then(|| {
            tokio::spawn(crate::keys::notify::listen_postgres(
                cfg.keys.database_url.clone(),
                key_cache.clone(),
                closed(),
            ))
        });
        let redis_listener = cfg.redis.as_ref().map(|r| {
            tokio::spawn(crate::keys::notify::listen_redis(
                r.options.clone(),
                key_cache.clone(),
                closed(),
            ))
        });
        let admin_grpc_addr = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(%grpc_addr, %http_addr, %admin_grpc_addr, config = %cfg.config_path.display(), "sluice listening");

        signal.await;
        // 1. Not ready, at once; the health task is stopped first so it
        //    cannot turn anything back to SERVING.
        coordinator.enter(Phase::Draining);
        health_task.abort();
        let _ = health_task.await;
        for service in &health_services {
            health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        tracing::info!(
            shutdown_delay = ?cfg.shutdown_delay,
            drain_timeout = ?cfg.drain_timeout,
            "shutting down: not ready; still answering until the shutdown delay ends"
        );
        // 2. Keep answering while endpoints and load balancers catch up.
        tokio::time::sleep(cfg.shutdown_delay).await;
        // 3. Listeners closed, GOAWAY, open calls finish.
        tracing::info!("shutdown delay over: listeners closed, finishing open calls");
        coordinator.enter(Phase::Stopping);
        watcher.abort();
        for r in tls_reloaders.iter().chain(&jwt_key_reloader) {
            r.abort();
        }
        if let Some(w) = &store_watch {
            w.abort();
        }
        let drained = tokio::time::timeout(cfg.drain_timeout, async {
            let g = grpc_task.await;
            let h = http_task.await;
            let a = match admin_task {
                Some(t) => Some(t.await),
                None => None,
            };
            (g, h, a)
        })
        .await;
        let served = match drained {
            Ok((g, h, a)) => {
                tracing::info!("open calls finished");
                let g = g
                    .context("gRPC server task failed")
                    .and_then(|r| r.context("gRPC server failed"));
                let h = h
                    .context("HTTP server task failed")
                    .and_then(|r| r.context("HTTP server failed"));
                let a = a.map_or(Ok(()), |a| {
                    a.context("admin gRPC server task failed")
                        .and_then(|r| r.context("admin gRPC server failed"))
                });
                g.and(h).and(a)
            }
            Err(_) => {
                tracing::warn!(
                    drain_timeout = ?cfg.drain_timeout,
                    open_calls = admission.in_flight(),
                    "drain timeout reached; stopping with calls still open"
                );
                Ok(())
            }
        };
        // 4. Calls are done (or abandoned): stop background work and flush
        //    what they counted, bounded.
        coordinator.enter(Phase::Closed);
        sweeper.abort();
        for l in [listener, redis_listener].into_iter().flatten() {
            let _ = l.await;
        }
        match tokio::time::timeout(FINAL_FLUSH_DEADLINE, flusher).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "usage flusher failed"),
            Err(_) => tracing::error!(
                deadline = ?FINAL_FLUSH_DEADLINE,
                "usage flush did not finish in time; unflushed usage counts are lost"
            ),
        }
        if tokio::time::timeout(FINAL_FLUSH_DEADLINE, repo.close())
            .await
            .is_err()
        {
            tracing::warn!("the key store did not close in time");
        }
        if let AnyStore::Shared(r) = engine.store() {
            r.primary().shutdown().await;
        }
        tracing::info!("stopped");
        served
    }
}

/// The final usage flush and the key store's close each get this long.
const FINAL_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `router` on `incoming` (plain or TLS) until
/// [`Phase::Stopping`]: then the listener closes (TLS handshakes in
/// progress are abandoned), every connection gets GOAWAY, and the task
/// ends when the calls still open have finished. Every gRPC listener is
/// served through here, so that all of them drain alike.
fn spawn_grpc(
    router: tonic::transport::server::Router<Stack<ObserveLayer, Identity>>,
    incoming: Incoming,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let incoming = shutdown.until_stopping(incoming);
    let stop = shutdown.clone();
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        stop.reached(Phase::Stopping).await;
    }))
}

/// Loads a listener's TLS files, if it has any.
fn load_tls(
    listener: &str,
    flags: &str,
    files: Option<&ServerTlsFiles>,
) -> anyhow::Result<Option<Arc<ReloadingServerConfig>>> {
    let Some(files) = files else {
        return Ok(None);
    };
    let tls = ReloadingServerConfig::load(files.clone()).with_context(|| {
        format!("cannot set up TLS on the {listener} listener ({flags}cert, {flags}key, {flags}client-ca)")
    })?;
    let client_certificates = if files.client_ca.is_some() {
        "required"
    } else {
        "none"
    };
    tracing::info!(
        listener = %listener,
        cert = %files.cert.display(),
        fingerprint = %tls.fingerprint(),
        client_certificates = %client_certificates,
        "TLS on"
    );
    Ok(Some(Arc::new(tls)))
}

/// The connections a gRPC listener serves: TLS when it has a configuration.
fn connections(
    listener: TcpListener,
    name: &'static str,
    tls: Option<Arc<ReloadingServerConfig>>,
    metrics: &Metrics,
) -> Incoming {
    match tls {
        None => Incoming::plain(listener, name),
        Some(t) => {
            let failures = metrics
                .tls_handshake_failures
                .get_or_create(&vec![("listener", name)])
                .clone();
            Incoming::tls(listener, name, t, failures)
        }
    }
}

/// How often TLS files are re-read even without a change notice (a
/// watch that missed an event, a mount replaced under it).
const TLS_POLL: Duration = Duration::from_secs(30);

/// Re-reads a listener's TLS files when their directories change (and
/// every [`TLS_POLL`]); new handshakes get what is read, open connections
/// keep theirs. Unusable files are logged once and the previous
/// certificate keeps serving.
async fn reload_tls_forever(
    name: &'static str,
    tls: Arc<ReloadingServerConfig>,
    metrics: Arc<Metrics>,
) {
    let mut trigger = FileTrigger::new(
        &tls.files().paths(),
        &format!("TLS files of the {name} listener"),
    )
    .await;
    loop {
        trigger.next().await;
        let reloaded = {
            let tls = tls.clone();
            tokio::task::spawn_blocking(move || tls.reload()).await
        };
        let result = match reloaded {
            Ok(Ok(Reload::Unchanged | Reload::StillBroken)) => continue,
            Ok(Ok(Reload::Reloaded { fingerprint })) => {
                tracing::info!(listener = %name, %fingerprint, "TLS certificate reloaded; new handshakes get it");
                "ok"
            }
            Ok(Err(e)) => {
                tracing::error!(listener = %name, error = %e, "TLS files changed but cannot be used; the previous certificate keeps serving");
                "error"
            }
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "TLS reload failed");
                "error"
            }
        };
        metrics
            .tls_reloads
            .get_or_create(&vec![("listener", name), ("result", result)])
            .inc();
    }
}

/// When to re-read a set of files: on a change under their directories
/// (a watch), and every [`TLS_POLL`] whatever the watch says (a watch can
/// miss a change, e.g. a Kubernetes Secret's symlink swap, or fail to
/// start: then the timer alone). The first [`FileTrigger::next`] waits.
struct FileTrigger {
    watch: Option<ConfigWatch>,
    tick: tokio::time::Interval,
}

impl FileTrigger {
    /// `what` names the files in the warning logged when they cannot be
    /// watched.
    async fn new(paths: &[&std::path::Path], what: &str) -> FileTrigger {
        let watch = match ConfigWatch::start_files(paths, Duration::from_millis(200)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, poll = ?TLS_POLL, "{what} are not watched; re-read on a timer only");
                None
            }
        };
        let mut tick = tokio::time::interval(TLS_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        FileTrigger { watch, tick }
    }

    /// Waits until the files should be read again.
    async fn next(&mut self) {
        match &mut self.watch {
            Some(w) => tokio::select! {
                changed = w.changed() => if changed.is_none() { self.watch = None },
                _ = self.tick.tick() => {},
            },
            None => {
                self.tick.tick().await;
            }
        }
    }
}

/// Re-reads the admin-token key files (`--jwt-public-key`, `--jwt-jwks`)
/// when they change (a watch on their directories, and every
/// [`TLS_POLL`]), as the TLS files are: tokens are checked with the new
/// keys at once; a file that cannot be read or holds no usable key is
/// logged as an error and the previous keys stay.
async fn reload_jwt_keys_forever(auth: Arc<AdminAuth>) {
    let mut trigger = FileTrigger::new(&auth.key_files(), "admin-token key files").await;
    loop {
        trigger.next().await;
        let reloaded = {
            let auth = auth.clone();
            tokio::task::spawn_blocking(move || auth.reload()).await
        };
        match reloaded {
            Ok(Ok(KeyReload::Unchanged | KeyReload::StillBroken)) => {}
            Ok(Ok(KeyReload::Reloaded { keys })) => {
                tracing::info!(
                    keys,
                    "admin-token public keys reloaded; tokens are checked with them now"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "admin-token key files changed but cannot be used; the previous keys stay");
            }
            Err(e) => {
                tracing::error!(error = %e, "admin-token key reload failed");
            }
        }
    }
}

/// The name the gRPC health service is served under.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Reflection (v1 and v1alpha) listing exactly `services`.
fn reflection(
    services: &[&str],
) -> anyhow::Result<(
    reflection::v1::ServerReflectionServer<impl reflection::v1::ServerReflection>,
    reflection::v1alpha::ServerReflectionServer<impl reflection::v1alpha::ServerReflection>,
)> {
    let builder = || {
        let mut b = reflection::Builder::configure()
            .register_encoded_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let v1 = builder()
        .build_v1()
        .context("cannot build gRPC reflection (v1)")?;
    let v1alpha = builder()
        .build_v1alpha()
        .context("cannot build gRPC reflection (v1alpha)")?;
    Ok((v1, v1alpha))
}

/// Keeps gRPC health in step with the counter and key stores:
/// NOT_SERVING while one is unreachable and its failure mode cannot stand
/// in; also probes a failing key store, so it recovers without traffic.
/// Ends when shutdown begins (and is stopped by then anyway), so that
/// nothing turns health back to SERVING during the drain.
async fn follow_store_health(
    decider: Arc<Decider<Store>>,
    health: tonic_health::server::HealthReporter,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tokio::select! {
            () = shutdown.reached(Phase::Draining) => return,
            _ = tick.tick() => {}
        }
        if let Some(k) = decider.keys() {
            k.probe().await;
        }
        let ready = decider.health().ready;
        if ready != serving && !shutdown.is_draining() {
            serving = ready;
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <RateLimitServiceServer<RlsService<Store>> as NamedService>::NAME,
                    status,
                )
                .await;
        }
    }
}

/// Drops expired counters every second, on the blocking pool: a sweep
/// holds shard locks in short batches, but never on a request worker.
async fn sweep_forever(engine: Arc<Engine<Store>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let engine = engine.clone();
        if tokio::task::spawn_blocking(move || engine.store().sweep())
            .await
            .is_err()
        {
            tracing::warn!("counter sweep panicked");
        }
    }
}

/// Reloads the configuration whenever its path changes; a configuration
/// that fails to load is logged and counted, and the previous one keeps
/// serving.
async fn reload_forever(
    watch: Option<ConfigWatch>,
    mut last: u64,
    path: PathBuf,
    options: LoadOptions,
    engine: Arc<Engine<Store>>,
    stats: Arc<StatsRegistry>,
    metrics: Arc<Metrics>,
) {
    let Some(mut watch) = watch else {
        return;
    };
    while watch.changed().await.is_some() {
        let loaded = {
            let path = path.clone();
            let stats = stats.clone();
            tokio::task::spawn_blocking(move || {
                let now = config::fingerprint(&path);
                (now != last).then(|| (now, config::load(&path, options, &stats)))
            })
            .await
        };
        let loaded = match loaded {
            Ok(None) => continue,
            Ok(Some((now, result))) => {
                last = now;
                Ok(result)
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok(Ok(rules)) => {
                let domains = rules.domains().count();
                engine.set_rules(rules);
                metrics.config_load_success.inc();
                tracing::info!(domains, "configuration reloaded");
            }
            Ok(Err(e)) => {
                metrics.config_load_error.inc();
                tracing::error!(error = %e, "configuration reload rejected; keeping the previous one");
            }
            Err(e) => {
                metrics.config_load_error.inc();
                tracing::error!(error = %e, "configuration reload failed");
            }
        }
    }
}
