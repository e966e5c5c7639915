//! A gateway request as both transports see it: method, path, host, the
//! client's address, headers by lower-case name, and the route's settings
//! (`sluice.domain`, `sluice.scopes`, `sluice.cost`). From it: the API key
//! (per the domain's `key_from`), the route's scopes and cost, and the
//! descriptors the domain builds.

use std::borrow::Cow;

use crate::core::authz::ValueSource;
use crate::core::authz::{AuthzRule, DescriptorTemplate, KeySource, MAX_COST, MAX_SCOPES};

/// The route-setting names, as Envoy's `context_extensions` keys and as
/// query parameters of `/auth`.
pub const DOMAIN: &str = "sluice.domain";
pub const SCOPES: &str = "sluice.scopes";
pub const COST: &str = "sluice.cost";

/// Header lookup by lower-case name; repeated headers joined by `,`.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

/// Settings a route gives (raw text, checked here so both transports
/// refuse the same things).
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteSettings<'a> {
    pub domain: Option<&'a str>,
    pub scopes: Option<&'a str>,
    pub cost: Option<&'a str>,
}

/// One request to authorize.
#[derive(Clone, Copy, Debug)]
pub struct GateRequest<'a, H> {
    pub method: &'a str,
    /// Path and query, as sent by the client.
    pub path: &'a str,
    pub host: &'a str,
    /// The downstream client, as the proxy saw it.
    pub remote_address: Option<&'a str>,
    pub headers: &'a H,
    pub route: RouteSettings<'a>,
}

/// A route setting that cannot be used; the operator's mistake, answered
/// as a server error naming the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct BadSetting {
    pub setting: &'static str,
    pub problem: String,
}

/// `sluice.scopes`: scopes separated by spaces or commas.
///
/// # Errors
/// More than 32 scopes, or one that is not 1 to 64 visible ASCII.
pub fn parse_scopes(text: &str) -> Result<Vec<String>, BadSetting> {
    let scopes: Vec<String> = text
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if scopes.len() > MAX_SCOPES {
        return Err(BadSetting {
            setting: SCOPES,
            problem: format!(
                "has {} scopes; at most {MAX_SCOPES} are allowed",
                scopes.len()
            ),
        });
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(BadSetting {
            setting: SCOPES,
            problem: format!("{bad:?} is not a scope (1 to 64 visible ASCII characters)"),
        });
    }
    Ok(scopes)
}

/// `sluice.cost`: a whole number from 0 to 1,000,000.
///
/// # Errors
/// Anything else.
pub fn parse_cost(text: &str) -> Result<u64, BadSetting> {
    match text.trim().parse::<u64>() {
        Ok(c) if c <= MAX_COST => Ok(c),
        _ => Err(BadSetting {
            setting: COST,
            problem: format!("{text:?} is not a whole number from 0 to {MAX_COST}"),
        }),
    }
}

/// Where the key was found, so the answer can keep it from the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carrier<'r> {
    Header(&'r str),
    Query(&'r str),
}

/// The request's key: the first of the domain's sources that is present
/// and not empty, with where it was found.
pub fn find_key<'a, 'r, H: Headers>(
    rule: &'r AuthzRule,
    req: &GateRequest<'a, H>,
) -> Option<(Cow<'a, str>, Carrier<'r>)> {
    for source in &rule.key_sources {
        match source {
            KeySource::Header(name) => {
                if let Some(v) = req.headers.get(name).map(str::trim)
                    && !v.is_empty()
                {
                    return Some((Cow::Borrowed(v), Carrier::Header(name)));
                }
            }
            KeySource::Bearer => {
                if let Some(v) = req.headers.get("authorization").and_then(bearer) {
                    return Some((Cow::Borrowed(v), Carrier::Header("authorization")));
                }
            }
            KeySource::Query(name) => {
                if let Some(v) = query_value(req.path, name) {
                    return Some((v, Carrier::Query(name)));
                }
            }
        }
    }
    None
}

/// The credentials of `Bearer <credentials>` (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The first value of query parameter `name` in `path`, percent-decoded
/// (`+` is a space); `None` when absent or empty.
pub fn query_value<'a>(path: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The path without its query.
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// The descriptors the domain builds from this request, as entry lists;
/// a descriptor naming a header the request lacks is left out.
pub fn build_descriptors<'a, H: Headers>(
    templates: &'a [DescriptorTemplate],
    req: &GateRequest<'a, H>,
) -> Vec<Vec<(&'a str, &'a str)>> {
    templates
        .iter()
        .filter_map(|t| {
            t.entries
                .iter()
                .map(|e| {
                    let value = match &e.value {
                        ValueSource::Fixed(v) => Some(&**v),
                        ValueSource::RemoteAddress => req.remote_address,
                        ValueSource::Method => Some(req.method),
                        ValueSource::Path => Some(path_only(req.path)),
                        ValueSource::Host => Some(req.host),
                        ValueSource::Header(name) => req.headers.get(name),
                    }?;
                    Some((&*e.key, value))
                })
                .collect::<Option<Vec<_>>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::authz::EntryTemplate;

    struct Map(Vec<(&'static str, &'static str)>);
    impl Headers for Map {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        }
    }

    fn req<'a>(path: &'a str, headers: &'a Map) -> GateRequest<'a, Map> {
        GateRequest {
            method: "GET",
            path,
            host: "api.example",
            remote_address: Some("203.0.113.9"),
            headers,
            route: RouteSettings::default(),
        }
    }

    #[test]
    fn keys_are_found_in_source_order() {
        let rule = AuthzRule {
            key_sources: vec![
                KeySource::Header("x-api-key".into()),
                KeySource::Bearer,
                KeySource::Query("api_key".into()),
            ],
            ..AuthzRule::default()
        };
        let h = Map(vec![("x-api-key", " k1 "), ("authorization", "Bearer k2")]);
        let (k, c) = find_key(&rule, &req("/", &h)).unwrap();
        assert_eq!((&*k, c), ("k1", Carrier::Header("x-api-key")));
        let h = Map(vec![("x-api-key", ""), ("authorization", "bearer  k2 ")]);
        let (k, c) = find_key(&rule, &req("/", &h)).unwrap();
        assert_eq!((&*k, c), ("k2", Carrier::Header("authorization")));
        let h = Map(vec![("authorization", "Basic dXNlcg==")]);
        let (k, c) = find_key(&rule, &req("/a?x=1&api_key=sk%5Fa+b#f", &h)).unwrap();
        assert_eq!((&*k, c), ("sk_a b", Carrier::Query("api_key")));
        assert!(find_key(&rule, &req("/a?api_key=", &Map(vec![]))).is_none());
        assert!(find_key(&rule, &req("/a", &Map(vec![("authorization", "Bearer ")]))).is_none());
    }

    #[test]
    fn route_settings_are_checked() {
        assert_eq!(parse_scopes("a b,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(parse_scopes(" ").unwrap(), Vec::<String>::new());
        assert!(parse_scopes("a\u{7f}").is_err());
        let many = vec!["s"; 33].join(" ");
        assert!(
            parse_scopes(&many)
                .unwrap_err()
                .to_string()
                .contains("33 scopes")
        );
        assert_eq!(parse_cost(" 3 ").unwrap(), 3);
        assert_eq!(parse_cost("0").unwrap(), 0);
        for bad in ["-1", "1.5", "x", "1000001", ""] {
            assert!(
                parse_cost(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("sluice.cost: ")
            );
        }
    }

    #[test]
    fn descriptors_come_from_the_request() {
        let e = |key: &str, value| EntryTemplate {
            key: key.into(),
            value,
        };
        let templates = vec![
            DescriptorTemplate {
                entries: vec![
                    e("remote_address", ValueSource::RemoteAddress),
                    e("path", ValueSource::Path),
                ],
            },
            DescriptorTemplate {
                entries: vec![e("tenant", ValueSource::Header("x-tenant".into()))],
            },
            DescriptorTemplate {
                entries: vec![
                    e("method", ValueSource::Method),
                    e("host", ValueSource::Host),
                    e("tier", ValueSource::Fixed("gold".into())),
                ],
            },
        ];
        let h = Map(vec![]);
        let r = req("/orders?page=2", &h);
        assert_eq!(
            build_descriptors(&templates, &r),
            vec![
                vec![("remote_address", "203.0.113.9"), ("path", "/orders")],
                vec![("method", "GET"), ("host", "api.example"), ("tier", "gold")],
            ]
        );
        let h = Map(vec![("x-tenant", "acme")]);
        assert_eq!(
            build_descriptors(&templates, &req("/", &h))[1],
            [("tenant", "acme")]
        );
    }
}
