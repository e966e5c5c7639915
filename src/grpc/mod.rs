//! gRPC: the rate-limit service, ValidateKey, Envoy's ext_authz `Check`,
//! the admin API, health and reflection. The only module (with `http`)
//! that sees generated protocol types; it translates them to engine,
//! keys and gateway types and back, and nothing else.
//!
//! May depend on: `engine`, `keys`, `auth`, `authz`, `store` (the trait),
//! `telemetry`.

pub mod admin;
pub mod authz;
pub mod convert;
pub mod keys;
pub mod observe;
pub mod pb;
pub mod rls;
pub mod status;

pub use admin::AdminGrpc;
pub use authz::AuthzGrpc;
pub use keys::KeyGrpc;
pub use rls::RlsService;
