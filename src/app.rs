//! Composition root: builds the concrete parts (memory store, engine,
//! gRPC and HTTP servers, config watcher) and runs them until shutdown.
//!
//! Shutdown: health turns NOT_SERVING and readiness fails, new RPCs are
//! answered UNAVAILABLE, both servers stop accepting and let in-flight
//! requests finish; after `drain_timeout` whatever is left is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::config::{self, LoadOptions, watch::ConfigWatch};
use crate::core::clock::SystemClock;
use crate::core::stats::StatsRegistry;
use crate::engine::{Engine, HeaderMode, RequestLimits, Settings};
use crate::grpc::RlsService;
use crate::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::http::{self, HttpState};
use crate::store::redis::{RedisOptions, RedisStore, redacted};
use crate::store::resilient::{AnyStore, ResilienceOptions, Resilient};
use crate::store::{CounterStore, MemoryStore};
use crate::telemetry::metrics::{self, Metrics};

/// Everything `sluice serve` is told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub config_path: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub headers: HeaderMode,
    pub shadow_mode: bool,
    pub merge_domains: bool,
    pub max_counters: u64,
    pub request_limits: RequestLimits,
    pub max_metric_keys: usize,
    pub max_request_bytes: usize,
    pub drain_timeout: Duration,
    /// Shifts the memory store's clock (tests of window alignment).
    pub clock_offset_ns: i64,
    /// Shared counters in Redis; `None` keeps them in memory.
    pub redis: Option<RedisConfig>,
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
    engine: Arc<Engine<Store>>,
    stats: Arc<StatsRegistry>,
    metrics: Arc<Metrics>,
    /// Started before the first load, so no change can slip between them.
    watch: Option<ConfigWatch>,
    /// Fingerprint of the configuration that was loaded.
    loaded: u64,
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
                let url = redacted(&r.options.url);
                let redis = RedisStore::connect(r.options.clone())
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
        let grpc = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the gRPC address {}", cfg.grpc_addr))?;
        let http = TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("cannot bind the HTTP address {}", cfg.http_addr))?;
        Ok(Application {
            cfg,
            grpc,
            http,
            engine,
            stats,
            metrics,
            watch,
            loaded,
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

    /// Serves until `shutdown` completes, then drains.
    ///
    /// # Errors
    /// When reflection cannot be built or a server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Application {
            cfg,
            grpc,
            http,
            engine,
            stats,
            metrics,
            watch,
            loaded,
        } = self;
        let draining = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(true));
        let (stop_tx, stop_rx) = watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<RateLimitServiceServer<RlsService<Store>>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build gRPC reflection (v1)")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build gRPC reflection (v1alpha)")?;

        let rls = RateLimitServiceServer::new(RlsService::new(
            engine.clone(),
            metrics.clone(),
            draining.clone(),
        ))
        .max_decoding_message_size(cfg.max_request_bytes);

        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
        let mut grpc_stop = stop_rx.clone();
        let grpc_server = tonic::transport::Server::builder()
            .add_service(rls)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            });

        let health_task = tokio::spawn(follow_store_health(engine.clone(), health.clone()));
        let registry = metrics::registry(metrics.clone(), engine.clone());
        let http_state = Arc::new(HttpState {
            engine: engine.clone(),
            metrics: metrics.clone(),
            registry,
            ready,
            draining: draining.clone(),
        });
        let mut http_stop = stop_rx.clone();
        let http_server =
            axum::serve(http, http::router(http_state)).with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            });

        let grpc_task = tokio::spawn(grpc_server);
        let http_task = tokio::spawn(http_server.into_future());
        let sweeper = tokio::spawn(sweep_forever(engine.clone()));
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
        tracing::info!(%grpc_addr, %http_addr, config = %cfg.config_path.display(), "sluice listening");

        shutdown.await;
        tracing::info!(drain_timeout = ?cfg.drain_timeout, "shutting down: draining in-flight requests");
        draining.store(true, Ordering::SeqCst);
        health
            .set_not_serving::<RateLimitServiceServer<RlsService<Store>>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_task.abort();
        let _ = stop_tx.send(true);
        watcher.abort();
        sweeper.abort();

        let drained = tokio::time::timeout(cfg.drain_timeout, async {
            let g = grpc_task.await;
            let h = http_task.await;
            (g, h)
        })
        .await;
        match drained {
            Ok((g, h)) => {
                g.context("gRPC server task failed")?
                    .context("gRPC server failed")?;
                h.context("HTTP server task failed")?
                    .context("HTTP server failed")?;
                tracing::info!("drained; stopped");
            }
            Err(_) => tracing::warn!("drain timeout reached; stopping with requests still open"),
        }
        if let AnyStore::Shared(r) = engine.store() {
            r.primary().shutdown().await;
        }
        Ok(())
    }
}

/// Keeps gRPC health in step with the counter store: NOT_SERVING while a
/// shared store is unreachable and the failure mode cannot stand in.
async fn follow_store_health(
    engine: Arc<Engine<Store>>,
    health: tonic_health::server::HealthReporter,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tick.tick().await;
        let ready = engine.store().health().ready;
        if ready != serving {
            serving = ready;
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            if ready {
                health
                    .set_serving::<RateLimitServiceServer<RlsService<Store>>>()
                    .await;
            } else {
                health
                    .set_not_serving::<RateLimitServiceServer<RlsService<Store>>>()
                    .await;
            }
        }
    }
}

/// Drops expired counters every second.
async fn sweep_forever(engine: Arc<Engine<Store>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        engine.store().sweep();
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
