//! gRPC: the rate-limit service, health and reflection. The only module
//! (with `http`) that sees generated protocol types; it translates them to
//! engine types and back, and nothing else.
//!
//! May depend on: `engine`, `store` (the trait), `telemetry`.

pub mod convert;
pub mod pb;
pub mod rls;
pub mod status;

pub use rls::RlsService;
