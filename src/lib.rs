//! sluice: a rate-limit decision service, wire-compatible with Envoy's
//! external rate-limit protocol.
//!
//! # Layout
//!
//! Dependencies point inward:
//!
//! * [`core`]: the pure model: units, limits, algorithms, the rule tree and
//!   its matching, counter keys, per-rule statistics. No I/O, no async.
//! * [`store`]: the counter-store trait; the in-memory and Redis stores
//!   and the resilience layer in front of Redis.
//! * [`engine`]: request → decision, over `core` and the store trait.
//! * [`auth`]: admin tokens (JWT) and server secret files.
//! * [`authz`]: API keys at the gateway: what Envoy's ext_authz `Check`
//!   and the forward-auth `/auth` endpoint share (reading the request,
//!   the keyed decision, the HTTP-shaped answer).
//! * [`keys`]: API keys and plans: the request-path resolver, the admin
//!   side, the usage flusher, the SQL repository (PostgreSQL or SQLite),
//!   cache and change notices.
//! * [`config`]: YAML files → `core` rules, validation, the file watcher.
//! * [`service`]: the keyed decision both transports call: resolve the
//!   request's API keys, attach their limits, decide, record usage; who
//!   the caller is. Over `engine` and the key resolver.
//! * [`grpc`], [`http`]: protocol adapters; translate and call `service`
//!   (or the key resolver and admin for the key APIs).
//! * [`telemetry`]: logging and Prometheus metrics.
//! * [`tls`]: TLS for the gRPC listeners (certificates re-read when their
//!   files change, mTLS) and client TLS configurations.
//! * [`cli`]: the admin client commands (`sluice keys|plans|usage|audit`).
//! * [`shutdown`]: the shutdown phases every server and task follows.
//! * [`admission`]: the bound on decision calls in flight (overload).
//! * [`secret`]: [`secret::Secret`] and the URL redactor: what never reaches
//!   a log. A leaf every module may use.
//! * [`app`]: the one place that wires concrete parts together and runs
//!   them until shutdown.

pub mod admission;
pub mod app;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod config;
pub mod core;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
