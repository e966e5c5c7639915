//! Reading an untrusted `authorization` header just far enough to pick a
//! key: the `Bearer` scheme, the three-part compact JWS shape and the
//! protected header (`alg`, `kid`, `crit`). Nothing read here is trusted
//! until [`super::verify`] has checked the signature.
//!
//! Every rejection is a `&'static str`, so no part of a token can ever be
//! echoed back to a client or into a log.
//!
//! May depend on: base64, serde_json; [`super::keys::Alg`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::keys::Alg;

/// Longest token accepted; admin tokens are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

const MALFORMED: &str = "malformed token";

/// What the unverified header of a token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unverified {
    pub alg: Alg,
    pub kid: Option<String>,
}

/// The token in an `authorization` header value: `Bearer <token>`, the
/// scheme in any case (RFC 9110 §11.1).
pub(super) fn bearer_token(header: Option<&str>) -> Result<&str, &'static str> {
    let value = header
        .ok_or("missing authorization header; send `authorization: Bearer <token>`")?
        .trim();
    let (scheme, token) = value
        .split_once([' ', '\t'])
        .ok_or("authorization must be `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("authorization scheme must be Bearer");
    }
    let token = token.trim_start_matches([' ', '\t']);
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token too long");
    }
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(MALFORMED);
    }
    Ok(token)
}

/// Reads the protected header of a compact JWS. Only HS256, RS256, ES256
/// and EdDSA pass; `alg: none` (in any case), unknown algorithms, `crit`
/// (no extension is understood here, RFC 7515 §4.1.11) and unsigned
/// tokens are refused.
pub(super) fn inspect(token: &str) -> Result<Unverified, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(MALFORMED);
    }
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| MALFORMED)?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(MALFORMED);
    };
    let alg = match fields.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        Some(_) => return Err(MALFORMED),
        None => return Err("token header has no alg"),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err("unsigned tokens (alg none) are not accepted");
    }
    let alg = Alg::from_name(alg)
        .ok_or("algorithm not accepted; only HS256, RS256, ES256 and EdDSA are")?;
    if fields.contains_key("crit") {
        return Err("critical header parameters (crit) are not supported");
    }
    let kid = match fields.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(MALFORMED),
    };
    if signature.is_empty() {
        return Err("token is not signed");
    }
    Ok(Unverified { alg, kid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn with_header(h: Value) -> String {
        format!("{}.{}.c2ln", b64(&h), b64(&serde_json::json!({"sub": "x"})))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        assert_eq!(bearer_token(Some("Bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some("  bearer   a.b.c ")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some("BEARER\ta.b.c")), Ok("a.b.c"));
    }

    #[test]
    fn bad_authorization_values() {
        assert!(bearer_token(None).is_err_and(|e| e.contains("missing")));
        assert!(bearer_token(Some("")).is_err());
        assert!(bearer_token(Some("Bearer")).is_err());
        assert!(bearer_token(Some("Bearer   ")).is_err());
        assert!(bearer_token(Some("a.b.c")).is_err());
        assert!(bearer_token(Some("Basic dXNlcjpwYXNz")).is_err_and(|e| e.contains("Bearer")));
        assert!(bearer_token(Some("Bearer a.b .c")).is_err());
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token(Some(&long)), Err("token too long"));
    }

    #[test]
    fn header_fields() {
        let ok = inspect(&with_header(
            serde_json::json!({"alg": "ES256", "kid": "k1"}),
        ));
        assert_eq!(
            ok,
            Ok(Unverified {
                alg: Alg::Es256,
                kid: Some("k1".into())
            })
        );
        for alg in ["none", "None", "NONE"] {
            let e = inspect(&with_header(serde_json::json!({ "alg": alg })));
            assert!(e.is_err_and(|e| e.contains("alg none")), "{alg}");
        }
        for alg in ["HS384", "RS512", "PS256", "ES384", "hs256", ""] {
            let e = inspect(&with_header(serde_json::json!({ "alg": alg })));
            assert!(e.is_err_and(|e| e.contains("not accepted")), "{alg}");
        }
        let crit = serde_json::json!({"alg": "HS256", "crit": ["b64"], "b64": false});
        assert!(inspect(&with_header(crit)).is_err_and(|e| e.contains("crit")));
        let kid = serde_json::json!({"alg": "HS256", "kid": 7});
        assert_eq!(inspect(&with_header(kid)), Err(MALFORMED));
        assert!(inspect(&with_header(serde_json::json!({}))).is_err_and(|e| e.contains("no alg")));
    }

    #[test]
    fn malformed_shapes() {
        let h = b64(&serde_json::json!({"alg": "HS256"}));
        for t in [
            "".to_string(),
            "abc".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{h}..c2ln"),
            format!(".{h}.c2ln"),
            format!("{h}=.e30.c2ln"),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json")),
        ] {
            assert_eq!(inspect(&t), Err(MALFORMED), "{t}");
        }
        assert_eq!(inspect(&format!("{h}.e30.")), Err("token is not signed"));
    }
}
