//! The pure decision model: time units, limits, the three algorithms, the
//! rule tree and its matching, counter-key encoding and per-rule accounting.
//!
//! May depend on: std and small data crates (ahash, smallvec). Nothing here
//! is async or does I/O, and nothing here knows of gRPC, Redis, SQL or tokio;
//! the engine, the stores and the config loader build on it.

pub mod algorithm;
pub mod authz;
pub mod clock;
pub mod key;
pub mod limit;
pub mod rules;
pub mod stats;
pub mod unit;
pub mod wildcard;
