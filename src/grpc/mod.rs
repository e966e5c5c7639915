//! gRPC: `ShouldRateLimit` ([`rls`]), `ValidateKey` ([`keys`]), Envoy's
//! ext_authz `Check` ([`authz`], decoding its request as
//! [`check_request`]) and the admin API ([`admin`]); health and
//! reflection are wired in `app`. The only module (with `http`) that sees
//! generated protocol types: it translates them to the types of
//! `service`, `authz`, `keys` and `engine` and back ([`convert`],
//! [`status`]), and decides nothing itself.
//!
//! May depend on: `service`, `authz`, `engine` (its types), `keys`,
//! `auth`, `store` (the trait), `telemetry`.

pub mod admin;
pub mod admin_gate;
pub mod admission;
pub mod authz;
pub mod check_request;
pub mod convert;
pub mod keys;
pub mod observe;
pub mod pb;
pub mod rls;
pub mod status;

pub use admin::AdminGrpc;
pub use admin_gate::AdminGate;
pub use authz::AuthzGrpc;
pub use keys::KeyGrpc;
pub use rls::RlsService;
