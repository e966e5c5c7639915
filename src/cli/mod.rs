//! The client commands: `sluice keys|plans|usage|audit`, talking to
//! the admin gRPC API with a bearer token, printing tables or protojson;
//! and `sluice probe` ([`probe`]), the health-and-decision check.
//!
//! Argument parsing and request building are pure functions (tested
//! here); only [`run`] does I/O.
//!
//! May depend on: the generated `sluice.v1`, Envoy rate-limit and health
//! clients and types.

pub mod probe;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::grpc::pb::sluice::v1 as pb;
use crate::grpc::pb::sluice::v1::admin_service_client::AdminServiceClient;

pub use probe::ProbeArgs;
pub use spec::{parse_duration, parse_limit, render_limit};

/// How to reach the admin API.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The sluice admin gRPC address (`serve --admin-grpc-addr`).
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADDR",
        default_value = "http://127.0.0.1:8082"
    )]
    pub addr: String,
    #[command(flatten)]
    pub tls: ClientTls,
    /// Admin token (from `sluice token`).
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print responses as JSON (protojson).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
}

/// TLS towards sluice (the admin listener, or the data plane for
/// `sluice probe`).
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTls {
    /// PEM CA certificates to trust for the server's certificate (TLS;
    /// without it, `https://` uses the system's roots).
    #[arg(long, global = true, env = "SLUICE_CACERT")]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate, for a listener that requires one (mTLS).
    #[arg(long, global = true, env = "SLUICE_CLIENT_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, env = "SLUICE_CLIENT_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Active,
    Disabled,
    Expired,
    Revoked,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        plan: String,
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// RFC 3339 time.
        #[arg(long, conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// From now, e.g. 30d.
        #[arg(long)]
        expires_in: Option<String>,
        /// The key's readable prefix (default sk_live).
        #[arg(long)]
        prefix: Option<String>,
        /// Limits replacing the plan's: 100/minute, 5000/90s, 10/second:token_bucket:burst=20.
        #[arg(long = "limit")]
        limits: Vec<String>,
    },
    /// List keys.
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        #[arg(long)]
        page_token: Option<String>,
        /// Follow every page (at most 1000).
        #[arg(long)]
        all: bool,
    },
    /// Show one key.
    Get { id: String },
    /// Change a key; only the options given change.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, conflicts_with = "scopes")]
        clear_scopes: bool,
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long, conflicts_with_all = ["expires_in", "no_expiry"])]
        expires_at: Option<String>,
        #[arg(long, conflicts_with = "no_expiry")]
        expires_in: Option<String>,
        #[arg(long)]
        no_expiry: bool,
        #[arg(long = "limit")]
        limits: Vec<String>,
        /// Drop the key's own limits; its plan's apply again.
        #[arg(long, conflicts_with = "limits")]
        plan_limits: bool,
    },
    /// Revoke a key, at once and for good.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Issue a new secret; the old one keeps working for --grace.
    Rotate {
        id: String,
        #[arg(long, default_value = "0s")]
        grace: String,
    },
}

#[derive(Debug, Args)]
pub struct PlansArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: PlansCommand,
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Create a plan.
    Create(PlanSpecArgs),
    /// List plans.
    List {
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Show one plan.
    Get { name: String },
    /// Replace a plan's limits, quota and description.
    Update(PlanSpecArgs),
    /// Delete a plan no key uses.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct PlanSpecArgs {
    pub name: String,
    /// 100/minute, 5000/90s, 10/second:token_bucket:burst=20 (repeat).
    #[arg(long = "limit")]
    pub limits: Vec<String>,
    /// Monthly quota (requests).
    #[arg(long)]
    pub quota: Option<u64>,
    /// Day of the month the quota refills (1-28).
    #[arg(long, default_value_t = 1)]
    pub refill_day: u32,
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// One key's id; all keys when absent. (`--key` is the TLS client
    /// key, as for every admin command.)
    #[arg(long)]
    pub key_id: Option<String>,
    /// First day, YYYY-MM-DD (default: 30 days ago).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (default: today).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub page_size: u32,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// key/<id> or plan/<name>.
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
}

/// One admin command.
#[derive(Debug)]
pub enum Command {
    Keys(KeysArgs),
    Plans(PlansArgs),
    Usage(UsageArgs),
    Audit(AuditArgs),
    Probe(ProbeArgs),
}

/// A command failed before or after talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("{:?}: {}{}", .0.code(), .0.message(), hint(.0))]
    Rpc(tonic::Status),
}

fn hint(s: &tonic::Status) -> &'static str {
    if s.code() == tonic::Code::Unauthenticated {
        " (pass --token or set SLUICE_TOKEN; mint one with `sluice token`)"
    } else {
        ""
    }
}

/// Runs a command, printing its result; the exit code says how it went.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(command)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The URI to dial and its TLS: `https://` addresses, and bare
/// `host:port` ones when a TLS flag is given, speak TLS (trusting
/// `--cacert`, else the system's roots; presenting `--cert`/`--key`).
fn endpoint_tls(
    addr: &str,
    conn: &ClientTls,
) -> Result<(String, Option<ClientTlsConfig>), CliError> {
    let tls_flags = conn.cacert.is_some() || conn.cert.is_some();
    let addr = addr.trim();
    let uri = if addr.starts_with("https://") {
        addr.to_string()
    } else if addr.starts_with("http://") {
        if tls_flags {
            return Err(CliError::Usage(format!(
                "--cacert/--cert/--key need a TLS address: use https:// instead of {addr}"
            )));
        }
        return Ok((addr.to_string(), None));
    } else if tls_flags {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    if !uri.starts_with("https://") {
        return Ok((uri, None));
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &conn.cacert {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&conn.cert, &conn.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok((uri, Some(tls)))
}

struct Client {
    inner: AdminServiceClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    json: bool,
}

impl Client {
    async fn connect(conn: &Conn) -> Result<Client, CliError> {
        let channel = channel(
            &conn.addr,
            &conn.tls,
            Duration::from_secs(conn.timeout.max(1)),
        )
        .await?;
        let token = match &conn.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| CliError::Usage("--token: not a valid header value".into()))?,
            ),
        };
        Ok(Client {
            inner: AdminServiceClient::new(channel),
            token,
            json: conn.json,
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }
}

/// A channel to `addr` (TLS per [`ClientTls`]), every call and the
/// connection bounded by `timeout`.
///
/// # Errors
/// A bad address, unreadable TLS files, or no connection within `timeout`.
pub async fn channel(addr: &str, tls: &ClientTls, timeout: Duration) -> Result<Channel, CliError> {
    let err = |e: &dyn std::fmt::Display| CliError::Connect {
        addr: addr.to_owned(),
        error: e.to_string(),
    };
    let (uri, tls) = endpoint_tls(addr, tls)?;
    let mut endpoint = Channel::from_shared(uri).map_err(|e| err(&e))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| err(&e))?;
    }
    let endpoint = endpoint.timeout(timeout).connect_timeout(timeout);
    endpoint.connect().await.map_err(|e| err(&e))
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v)
        .map_or_else(|e| format!("{{\"error\":\"{e}\"}}\n"), |s| s + "\n")
}

async fn execute(command: Command) -> Result<String, CliError> {
    match command {
        Command::Keys(a) => keys(a).await,
        Command::Plans(a) => plans(a).await,
        Command::Usage(a) => usage_cmd(a).await,
        Command::Audit(a) => audit(a).await,
        Command::Probe(a) => probe::probe(a).await,
    }
}

/// A timestamp from `--expires-at` (RFC 3339) or `--expires-in` (from now).
pub fn expiry(
    at: Option<&str>,
    within: Option<&str>,
) -> Result<Option<pbjson_types::Timestamp>, String> {
    if let Some(at) = at {
        let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("--expires-at: {at:?} is not an RFC 3339 time: {e}"))?;
        return Ok(Some(pbjson_types::Timestamp {
            seconds: t.unix_timestamp(),
            nanos: 0,
        }));
    }
    if let Some(d) = within {
        let d = parse_duration(d).map_err(|e| format!("--expires-in: {e}"))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        return Ok(Some(pbjson_types::Timestamp {
            seconds: now + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            nanos: 0,
        }));
    }
    Ok(None)
}

/// `--metadata` JSON → Struct; only objects.
pub fn metadata(text: &str) -> Result<pbjson_types::Struct, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("--metadata: not JSON: {e}"))?;
    if !v.is_object() {
        return Err("--metadata: must be a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| format!("--metadata: {e}"))
}

fn limits(specs: &[String]) -> Result<Vec<pb::Limit>, String> {
    specs.iter().map(|s| parse_limit(s)).collect()
}

/// The UpdateKeyRequest for `keys update`: only what was given is set.
#[allow(clippy::too_many_arguments)]
pub fn update_request(
    id: String,
    name: Option<String>,
    plan: Option<String>,
    scopes: Vec<String>,
    clear_scopes: bool,
    metadata_json: Option<&str>,
    enable: bool,
    disable: bool,
    expires_at: Option<&str>,
    expires_in: Option<&str>,
    no_expiry: bool,
    limit_specs: &[String],
    plan_limits: bool,
) -> Result<pb::UpdateKeyRequest, String> {
    Ok(pb::UpdateKeyRequest {
        id,
        name,
        plan,
        scopes: (clear_scopes || !scopes.is_empty()).then_some(pb::Scopes { scopes }),
        metadata: metadata_json.map(metadata).transpose()?,
        enabled: if enable {
            Some(true)
        } else if disable {
            Some(false)
        } else {
            None
        },
        expires_at: expiry(expires_at, expires_in)?,
        clear_expires_at: no_expiry,
        limits: if plan_limits {
            Some(pb::Limits { limits: Vec::new() })
        } else if limit_specs.is_empty() {
            None
        } else {
            Some(pb::Limits {
                limits: limits(limit_specs)?,
            })
        },
    })
}

/// The Plan message for `plans create|update`.
pub fn plan_message(a: &PlanSpecArgs) -> Result<pb::Plan, String> {
    Ok(pb::Plan {
        name: a.name.clone(),
        description: a.description.clone(),
        limits: limits(&a.limits)?,
        monthly_quota: a.quota.map(|q| pb::Quota {
            requests: q,
            refill_day: a.refill_day,
        }),
        created_at: None,
        updated_at: None,
    })
}

fn rfc3339(t: Option<&pbjson_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn state_name(s: i32) -> &'static str {
    match pb::KeyState::try_from(s) {
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Disabled) => "disabled",
        Ok(pb::KeyState::Expired) => "expired",
        Ok(pb::KeyState::Revoked) => "revoked",
        _ => "-",
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

fn keys_table(keys: &[pb::Key]) -> String {
    let mut t = table(&[
        "ID",
        "NAME",
        "OWNER",
        "PLAN",
        "STATE",
        "HINT",
        "SCOPES",
        "EXPIRES",
        "LAST USED",
    ]);
    for k in keys {
        t.add_row(vec![
            k.id.clone(),
            k.name.clone(),
            k.owner_id.clone(),
            k.plan.clone(),
            state_name(k.state).into(),
            k.hint.clone(),
            k.scopes.join(" "),
            rfc3339(k.expires_at.as_ref()),
            rfc3339(k.last_used_at.as_ref()),
        ]);
    }
    format!("{t}\n")
}

fn plans_table(plans: &[pb::Plan]) -> String {
    let mut t = table(&["NAME", "LIMITS", "QUOTA", "DESCRIPTION"]);
    for p in plans {
        t.add_row(vec![
            p.name.clone(),
            p.limits
                .iter()
                .map(render_limit)
                .collect::<Vec<_>>()
                .join(", "),
            p.monthly_quota.as_ref().map_or_else(
                || "-".into(),
                |q| format!("{}/month (day {})", q.requests, q.refill_day.max(1)),
            ),
            p.description.clone(),
        ]);
    }
    format!("{t}\n")
}

async fn keys(a: KeysArgs) -> Result<String, CliError> {
    let mut c = Client::connect(&a.conn).await?;
    match a.command {
        KeysCommand::Create {
            name,
            owner,
            plan,
            scopes,
            metadata: meta,
            expires_at,
            expires_in,
            prefix,
            limits: specs,
        } => {
            let msg = pb::CreateKeyRequest {
                name,
                owner_id: owner,
                plan,
                scopes,
                metadata: meta.as_deref().map(metadata).transpose().map_err(usage)?,
                expires_at: expiry(expires_at.as_deref(), expires_in.as_deref()).map_err(usage)?,
                prefix: prefix.unwrap_or_default(),
                limits: limits(&specs).map_err(usage)?,
            };
            let r = c
                .inner
                .create_key(c.req(msg))
                .await
                .map_err(CliError::Rpc)?
                .into_inner();
            if c.json {
                return Ok(to_json(&r));
            }
            let keys: Vec<pb::Key> = r.key.into_iter().collect();
            Ok(format!(
                "{}\nsecret: {}\n(shown only this once; store it now)\n",
                keys_table(&keys),
                r.secret
            ))
        }
        KeysCommand::List {
            owner,
            plan,
            state,
            page_size,
            page_token,
            all,
        } => {
            let state = state.map_or(pb::KeyState::Unspecified, |s| match s {
                StateArg::Active => pb::KeyState::Active,
                StateArg::Disabled => pb::KeyState::Disabled,
                StateArg::Expired => pb::KeyState::Expired,
                StateArg::Revoked => pb::KeyState::Revoked,
            });
            let mut token = page_token.unwrap_or_default();
            let mut keys = Vec::new();
            let mut next;
            let mut pages = 0;
            loop {
                let msg = pb::ListKeysRequest {
                    page_size,
                    page_token: token.clone(),
                    owner_id: owner.clone().unwrap_or_default(),
                    plan: plan.clone().unwrap_or_default(),
                    state: state.into(),
                };
                let r = c
                    .inner
                    .list_keys(c.req(msg))
                    .await
                    .map_err(CliError::Rpc)?
                    .into_inner();
                keys.extend(r.keys);
                next = r.next_page_token;
                pages += 1;
                if !all || next.is_empty() || pages >= 1000 {
                    break;
                }
                token.clone_from(&next);
            }
            if c.json {
                return Ok(to_json(&pb::ListKeysResponse {
                    keys,
                    next_page_token: next,
                }));
            }
            let mut out = keys_table(&keys);
            if !next.is_empty() {
                out.push_str(&format!("next page: --page-token {next}\n"));
            }
            Ok(out)
        }
        KeysCommand::Get { id } => {
            let k = c
                .inner
                .get_key(c.req(pb::GetKeyRequest { id }))
                .await
                .map_err(CliError::Rpc)?
                .into_inner();
            Ok(if c.json {
                to_json(&k)
            } else {
                keys_table(&[k])
            })
        }
        KeysCommand::Update {
            id,
            name,
            plan,
            scopes,
            clear_scopes,
            metadata: meta,
            enable,
            disable,
            expires_at,
            expires_in,
            no_expiry,
            limits: specs,
            plan_limits,
        } => {
            let msg = update_request(
                id,
                name,
                plan,
                scopes,
                clear_scopes,
                meta.as_deref(),
                enable,
                disable,
                expires_at.as_deref(),
                expires_in.as_deref(),
                no_expiry,
                &specs,
                plan_limits,
            )
            .map_err(usage)?;
            let k = c
                .inner
                .update_key(c.req(msg))
                .await
                .map_err(CliError::Rpc)?
                .into_inner();
            Ok(if c.json {
                to_json(&k)
            } else {
                keys_table(&[k])
            })
        }
        KeysCommand::Revoke { id, reason } => {
            let k = c
                .inner
                .revoke_key(c.req(pb::RevokeKeyRequest { id, reason }))
                .await
                .map_err(CliError::Rpc)?
                .into_inner();
            Ok(if c.json {
                to_json(&k)
            } else {
                keys_table(&[k])
            })
        }
        KeysCommand::Rotate { id, grace } => {
            let grace = parse_duration(&grace).map_err(|e| usage(format!("--grace: {e}")))?;
            let msg = pb::RotateKeyRequest {
                id,
                grace_period: Some(pbjson_types::Duration {
                    seconds: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
            };
            let r = c
                .inner
                .rotate_key(c.req(msg))
                .await
                .map_err(CliError::Rpc)?
                .into_inner();
            if c.json {
                return Ok(to_json(&r));
            }
            let keys: Vec<pb::Key> = r.key.into_iter().collect();
            Ok(format!(
                "{}\nsecret: {}\n(shown only this once; the previous secret works until {})\n",
                keys_table(&keys),
                r.secret,
                rfc3339(r.previous_secret_expires_at.as_ref())
            ))
        }
    }
}

async fn plans(a: PlansArgs) -> Result<String, CliError> {
    let mut c = Client::connect(&a.conn).await?;
    let plan = match a.command {
        PlansCommand::Create(spec) => {
            let plan = plan_message(&spec).map_err(usage)?;
            c.inner
                .create_plan(c.req(pb::CreatePlanRequest { plan: Some(plan) }))
                .await
                .map_err(CliError::Rpc)?
                .into_inner()
        }
        PlansCommand::Update(spec) => {
            let plan = plan_message(&spec).map_err(usage)?;
            c.inner
                .update_plan(c.req(pb::UpdatePlanRequest { plan: Some(plan) }))
                .await
                .map_err(CliError::Rpc)?
                .into_inner()
        }
        PlansCommand::Get { name } => c
            .inner
            .get_plan(c.req(pb::GetPlanRequest { name }))
            .await
            .map_err(CliError::Rpc)?
            .into_inner(),
        PlansCommand::Delete { name } => {
            c.inner
                .delete_plan(c.req(pb::DeletePlanRequest { name: name.clone() }))
                .await
                .map_err(CliError::Rpc)?;
            return Ok(if c.json {
                "{}\n".into()
            } else {
                format!("deleted plan {name}\n")
            });
        }
        PlansCommand::List { page_size } => {
            let r = c
                .inner
                .list_plans(c.req(pb::ListPlansRequest {
                    page_size,
                    page_token: String::new(),
                }))
                .await
                .map_err(CliError::Rpc)?
                .into_inner();
            return Ok(if c.json {
                to_json(&r)
            } else {
                plans_table(&r.plans)
            });
        }
    };
    Ok(if c.json {
        to_json(&plan)
    } else {
        plans_table(&[plan])
    })
}

async fn usage_cmd(a: UsageArgs) -> Result<String, CliError> {
    let mut c = Client::connect(&a.conn).await?;
    let r = c
        .inner
        .get_usage(c.req(pb::GetUsageRequest {
            key_id: a.key_id.unwrap_or_default(),
            from_day: a.from.unwrap_or_default(),
            to_day: a.to.unwrap_or_default(),
            page_size: a.page_size,
            page_token: String::new(),
        }))
        .await
        .map_err(CliError::Rpc)?
        .into_inner();
    if c.json {
        return Ok(to_json(&r));
    }
    let mut t = table(&["KEY", "DAY", "ADMITTED", "LIMITED"]);
    for d in &r.days {
        t.add_row(vec![
            d.key_id.clone(),
            d.day.clone(),
            d.admitted.to_string(),
            d.limited.to_string(),
        ]);
    }
    Ok(format!("{t}\n"))
}

async fn audit(a: AuditArgs) -> Result<String, CliError> {
    let mut c = Client::connect(&a.conn).await?;
    let r = c
        .inner
        .list_audit_events(c.req(pb::ListAuditEventsRequest {
            page_size: a.page_size,
            page_token: String::new(),
            target: a.target.unwrap_or_default(),
            actor: a.actor.unwrap_or_default(),
        }))
        .await
        .map_err(CliError::Rpc)?
        .into_inner();
    if c.json {
        return Ok(to_json(&r));
    }
    let mut t = table(&["ID", "TIME", "ACTOR", "ACTION", "TARGET", "REQUEST ID"]);
    for e in &r.events {
        t.add_row(vec![
            e.id.to_string(),
            rfc3339(e.time.as_ref()),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            e.request_id.clone(),
        ]);
    }
    Ok(format!("{t}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_sets_only_what_was_given() {
        let r = update_request(
            "key_1".into(),
            None,
            Some("pro".into()),
            Vec::new(),
            false,
            None,
            false,
            true,
            None,
            None,
            false,
            &[],
            false,
        )
        .unwrap();
        assert_eq!(r.plan.as_deref(), Some("pro"));
        assert_eq!(r.enabled, Some(false));
        assert!(r.name.is_none() && r.scopes.is_none() && r.metadata.is_none());
        assert!(r.limits.is_none() && r.expires_at.is_none() && !r.clear_expires_at);
        let r = update_request(
            "k".into(),
            None,
            None,
            Vec::new(),
            true,
            None,
            false,
            false,
            None,
            None,
            true,
            &[],
            true,
        )
        .unwrap();
        assert_eq!(r.scopes.unwrap().scopes.len(), 0);
        assert!(r.clear_expires_at);
        assert!(r.limits.unwrap().limits.is_empty());
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(metadata(r#"{"team":"a","n":1}"#).is_ok());
        assert!(metadata("[1]").unwrap_err().contains("object"));
        assert!(metadata("{").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn expiry_parses_both_forms() {
        let t = expiry(Some("2030-01-01T00:00:00Z"), None).unwrap().unwrap();
        assert_eq!(t.seconds, 1_893_456_000);
        assert!(expiry(None, Some("1d")).unwrap().is_some());
        assert!(expiry(Some("tomorrow"), None).is_err());
        assert!(expiry(None, None).unwrap().is_none());
    }
}
