//! `envoy.service.auth.v3.CheckRequest` as the ext_authz server decodes
//! it: the message of proto/envoy/service/auth/v3/external_auth.proto
//! (same field numbers, so the same bytes on the wire), with only the
//! fields sluice reads. The rest (destination, request id, scheme,
//! protocol, ...) is skipped as unknown fields are.
//!
//! Envoy sends a dozen or more request headers with every Check. Decoded as
//! the proto's `map<string, string>`, each would be two allocations, a
//! UTF-8 check and a map insertion, on every request: most of the cost of
//! decoding it. Here `headers` is read as what a map is on the wire, a
//! repeated key/value entry, whose key and value are slices of the received
//! buffer ([`Bytes`]: no copy); a header is looked for only when the
//! gateway asks for it, and must be UTF-8 then. Everything else keeps the
//! proto's types and strictness (a route setting that is not UTF-8 fails
//! the decode, as before).
//!
//! The proto's own generated types stay what reflection describes and
//! what clients may use; this type is wire-identical to theirs (tested
//! below against an encoding of the generated `AttributeContext`).

use std::collections::HashMap;

use bytes::Bytes;

use super::pb::envoy::config::core::v3::HeaderMap;
use super::pb::envoy::service::auth::v3::attribute_context::Peer;

/// The request Envoy's ext_authz filter sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    /// Boxed: the handler's future holds the request, and tonic copies
    /// that future into a box on every call.
    #[prost(message, optional, boxed, tag = "1")]
    pub attributes: Option<Box<AttributeContext>>,
}

/// The request's attributes (`AttributeContext`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    /// The downstream client (the last hop).
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// The route's settings (`sluice.domain`, `sluice.scopes`,
    /// `sluice.cost`).
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// The proto's `map<string, string> headers`, entry by entry, as sent.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<HeaderEntry>,
    /// Instead of `headers` when the filter sets `encode_raw_headers`.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
}

/// One entry of the `headers` map (map entries are key 1, value 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderEntry {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl HeaderEntry {
    /// An entry, for clients building a request.
    pub fn new(key: &str, value: &str) -> HeaderEntry {
        HeaderEntry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }
}

impl HttpRequest {
    /// The value of header `name` (Envoy sends lower-case names) in the
    /// `headers` map; as in a map, a repeated entry's last value wins. A
    /// value that is not UTF-8 is no value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|e| e.key == name.as_bytes())
            .and_then(|e| std::str::from_utf8(&e.value).ok())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::grpc::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use crate::grpc::pb::envoy::service::auth::v3::{AttributeContext as Full, attribute_context};

    /// What the proto's own types encode (every field sluice skips
    /// included) decodes into this view with the same values.
    #[test]
    fn the_view_reads_what_the_generated_types_encode() {
        let peer = |ip: &str| attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    ..SocketAddress::default()
                })),
            }),
            service: "svc".into(),
            principal: "spiffe://x".into(),
        };
        let full = Full {
            source: Some(peer("10.0.0.7")),
            destination: Some(peer("10.0.0.1")),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    headers: [
                        ("authorization", "Bearer sk_abc"),
                        ("x-api-key", "sk_def"),
                        (":path", "/v1/orders?x=1"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                    header_map: None,
                    path: "/v1/orders?x=1".into(),
                    host: "api.example".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                }),
            }),
            context_extensions: [("sluice.domain", "api"), ("sluice.scopes", "orders:write")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // CheckRequest { attributes = 1 }: a length-delimited field 1.
        let inner = full.encode_to_vec();
        let mut wire = Vec::new();
        prost::encoding::bytes::encode(1, &inner, &mut wire);
        let got = CheckRequest::decode(wire.as_slice()).expect("decodes");
        let attrs = got.attributes.expect("attributes");
        let source = attrs.source.expect("source");
        assert_eq!(source, peer("10.0.0.7"));
        let http = attrs.request.and_then(|r| r.http).expect("http");
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/v1/orders?x=1");
        assert_eq!(http.host, "api.example");
        assert_eq!(http.header("authorization"), Some("Bearer sk_abc"));
        assert_eq!(http.header("x-api-key"), Some("sk_def"));
        assert_eq!(http.header("X-Api-Key"), None, "names are as sent");
        assert_eq!(http.header("cookie"), None);
        assert_eq!(
            attrs
                .context_extensions
                .get("sluice.domain")
                .map(String::as_str),
            Some("api")
        );
        assert_eq!(
            attrs
                .context_extensions
                .get("sluice.scopes")
                .map(String::as_str),
            Some("orders:write")
        );
        // And back: the view encodes what the generated types decode.
        let round = Full::decode(http_only(&http).as_slice()).expect("decodes");
        let h = round.request.and_then(|r| r.http).expect("http");
        assert_eq!(
            h.headers.get("x-api-key").map(String::as_str),
            Some("sk_def")
        );
        assert_eq!(h.method, "POST");
    }

    fn http_only(http: &HttpRequest) -> Vec<u8> {
        AttributeContext {
            source: None,
            request: Some(Request {
                http: Some(http.clone()),
            }),
            context_extensions: HashMap::new(),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_repeated_header_entry_reads_as_a_map_does_and_non_utf8_is_no_value() {
        let http = HttpRequest {
            headers: vec![
                HeaderEntry::new("x-api-key", "first"),
                HeaderEntry::new("x-api-key", "last"),
                HeaderEntry {
                    key: Bytes::from_static(b"x-bin"),
                    value: Bytes::from_static(b"\xff\xfe"),
                },
            ],
            ..HttpRequest::default()
        };
        assert_eq!(http.header("x-api-key"), Some("last"));
        assert_eq!(http.header("x-bin"), None);
    }

    #[test]
    fn a_route_setting_that_is_not_utf8_fails_the_decode() {
        // AttributeContext.context_extensions (10) = {"sluice.scopes": 0xff}
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, &"sluice.scopes".to_string(), &mut entry);
        prost::encoding::bytes::encode(2, &vec![0xffu8], &mut entry);
        let mut attrs = Vec::new();
        prost::encoding::bytes::encode(10, &entry, &mut attrs);
        let mut wire = Vec::new();
        prost::encoding::bytes::encode(1, &attrs, &mut wire);
        assert!(CheckRequest::decode(wire.as_slice()).is_err());
    }
}
