//! `sluice probe`: is a running sluice healthy and deciding? What the Helm
//! chart's `helm test` Pod runs, from the same image as the server.
//!
//! Two steps, each bounded by `--timeout`: gRPC health (`grpc.health.v1`,
//! service `""`) must answer SERVING; then, when `--domain` is given, one
//! `ShouldRateLimit` must answer OK or OVER_LIMIT (or what `--expect`
//! says). The probe's descriptors carry `hits_addend: 0`, so it reads the
//! counters without spending anything.
//!
//! Parsing is pure ([`parse_descriptor`], [`ProbeArgs::request`]); only
//! [`probe`] does I/O.
//!
//! May depend on: the generated Envoy rate-limit and health clients.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::grpc::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use crate::grpc::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, rate_limit_response::Code, rate_limit_service_client::RateLimitServiceClient,
};

/// `sluice probe` arguments.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The sluice gRPC (data-plane) address.
    #[arg(
        long,
        env = "SLUICE_PROBE_ADDR",
        default_value = "http://127.0.0.1:8081"
    )]
    pub addr: String,
    #[command(flatten)]
    pub tls: super::ClientTls,
    /// Seconds each step may take.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// Ask ShouldRateLimit about this domain after the health check.
    #[arg(long, requires = "descriptors")]
    pub domain: Option<String>,
    /// A descriptor as key=value[,key=value...] (repeat for several).
    #[arg(long = "descriptor", requires = "domain")]
    pub descriptors: Vec<String>,
    /// The overall answer the decision must have.
    #[arg(long, value_enum, default_value = "decided")]
    pub expect: Expect,
}

/// What `sluice probe` accepts as the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Expect {
    /// OK or OVER_LIMIT: sluice decided (UNKNOWN or an error fails).
    Decided,
    Ok,
    OverLimit,
}

impl ProbeArgs {
    /// The ShouldRateLimit request the probe sends, if `--domain` is set.
    ///
    /// # Errors
    /// A descriptor that is not `key=value[,key=value...]`.
    pub fn request(&self) -> Result<Option<RateLimitRequest>, String> {
        let Some(domain) = &self.domain else {
            return Ok(None);
        };
        let descriptors = self
            .descriptors
            .iter()
            .map(|d| parse_descriptor(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RateLimitRequest {
            domain: domain.clone(),
            descriptors,
            hits_addend: 0,
        }))
    }
}

/// `key=value[,key=value...]` → a descriptor that spends no hits.
///
/// # Errors
/// An empty descriptor, an entry without `=`, or an empty key.
pub fn parse_descriptor(text: &str) -> Result<RateLimitDescriptor, String> {
    let mut entries = Vec::new();
    for part in text.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("--descriptor {text:?}: {part:?} is not key=value"));
        };
        if key.is_empty() {
            return Err(format!("--descriptor {text:?}: an entry has an empty key"));
        }
        entries.push(Entry {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(RateLimitDescriptor {
        entries,
        limit: None,
        // Read the counters, write nothing: probing spends no budget.
        hits_addend: Some(pbjson_types::UInt64Value { value: 0 }),
    })
}

fn code_name(code: i32) -> &'static str {
    match Code::try_from(code) {
        Ok(Code::Ok) => "OK",
        Ok(Code::OverLimit) => "OVER_LIMIT",
        Ok(Code::Unknown) | Err(_) => "UNKNOWN",
    }
}

/// Runs the probe; the text says what was checked.
///
/// # Errors
/// Not reachable, not SERVING, or a decision other than expected.
pub async fn probe(a: ProbeArgs) -> Result<String, CliError> {
    let request = a.request().map_err(CliError::Usage)?;
    let timeout = Duration::from_secs(a.timeout.max(1));
    let channel = super::channel(&a.addr, &a.tls, timeout).await?;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(CliError::Rpc)?
        .into_inner()
        .status();
    if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
        return Err(CliError::Usage(format!(
            "{}: health is {}, not SERVING",
            a.addr,
            status.as_str_name()
        )));
    }
    let mut out = format!("{}: health SERVING\n", a.addr);
    let Some(request) = request else {
        return Ok(out);
    };
    let domain = request.domain.clone();
    let answer = RateLimitServiceClient::new(channel)
        .should_rate_limit(request)
        .await
        .map_err(CliError::Rpc)?
        .into_inner();
    let overall = code_name(answer.overall_code);
    let accepted = match a.expect {
        Expect::Decided => overall != "UNKNOWN",
        Expect::Ok => overall == "OK",
        Expect::OverLimit => overall == "OVER_LIMIT",
    };
    let statuses: Vec<String> = answer
        .statuses
        .iter()
        .map(|s| match &s.current_limit {
            Some(l) => format!(
                "{} ({}/{}, {} left)",
                code_name(s.code),
                l.requests_per_unit,
                unit_name(l.unit),
                s.limit_remaining
            ),
            None => format!("{} (no limit)", code_name(s.code)),
        })
        .collect();
    let line = format!("domain {domain}: {overall} [{}]", statuses.join(", "));
    if !accepted {
        let want = match a.expect {
            Expect::Decided => "OK or OVER_LIMIT",
            Expect::Ok => "OK",
            Expect::OverLimit => "OVER_LIMIT",
        };
        return Err(CliError::Usage(format!("{line}: expected {want}")));
    }
    out.push_str(&line);
    out.push('\n');
    Ok(out)
}

fn unit_name(unit: i32) -> String {
    use crate::grpc::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
    Unit::try_from(unit).map_or_else(|_| "?".to_owned(), |u| u.as_str_name().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_parse_and_spend_nothing() {
        let d = parse_descriptor("generic_key=limited,user=a=b").unwrap();
        assert_eq!(d.entries.len(), 2);
        assert_eq!(d.entries[0].key, "generic_key");
        assert_eq!(d.entries[1].value, "a=b");
        assert_eq!(d.hits_addend.map(|h| h.value), Some(0));
        assert!(
            parse_descriptor("novalue")
                .unwrap_err()
                .contains("not key=value")
        );
        assert!(parse_descriptor("=x").unwrap_err().contains("empty key"));
        assert!(parse_descriptor("a=1,").is_err());
    }
}
