//! gRPC: the rate-limit service, health and reflection. The only module
//! (with `http`) that sees generated protocol types; it translates them to
//! engine types and back, and nothing else.
//!
//! May depend on: `engine`, `keys`, `auth`, `store` (the trait),
//! `telemetry`.

pub mod admin;
pub mod convert;
pub mod keys;
pub mod observe;
pub mod pb;
pub mod rls;
pub mod status;

pub use admin::AdminGrpc;
pub use keys::KeyGrpc;
pub use rls::RlsService;
