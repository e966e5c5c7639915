//! Integration tests: each starts the real `sluice` binary on ephemeral
//! loopback ports and talks gRPC and HTTP to it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::zombie_processes
)]

mod support;

mod admin_auth;
mod admin_listener;
mod alerts;
mod authz;
mod chart;
mod check_config;
mod concurrency;
mod envoy;
mod gateway;
mod grpcurl;
mod http;
mod image;
mod istio;
mod key_path;
mod key_store;
mod keys;
mod lifecycle;
mod log_flood;
mod overload;
mod probe;
mod redis_fixtures_selftest;
mod redis_store;
mod reload;
mod rls;
mod store_tls;
mod tls;
mod traces;
mod usage_flush;
