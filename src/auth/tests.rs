//! Tests of token checking and minting. The RSA, EC and Ed25519 keys are
//! test-only fixtures in `tests/fixtures/jwt/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ISS: &str = "sluice-test";
const AUD: &str = "sluice-admin";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// Claims valid for `ttl` seconds from now (negative: expired).
fn claims(ttl: i64) -> Value {
    json!({
        "sub": "ops",
        "iat": now(),
        "exp": now() + ttl,
        "iss": ISS,
        "aud": AUD,
        "scope": "keys:read keys:write",
    })
}

fn without(mut c: Value, field: &str) -> Value {
    c.as_object_mut().unwrap().remove(field);
    c
}

fn with(mut c: Value, field: &str, v: Value) -> Value {
    c[field] = v;
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, body: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, body, key).unwrap()
}

fn hs_token(body: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        body,
    )
}

/// A token with a hand-written header, signed by `sign_with` as HS256 (or
/// not signed at all).
fn forged(header: &Value, body: &Value, sign_with: Option<&[u8]>) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(body.to_string())
    );
    let signature = match sign_with {
        Some(secret) => jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap(),
        None => String::new(),
    };
    format!("{message}.{signature}")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn config() -> AdminAuthConfig {
    AdminAuthConfig {
        leeway_secs: 30,
        ..AdminAuthConfig::default()
    }
}

/// HS256 with a required issuer and audience, as most tests use.
fn hs() -> AdminAuth {
    AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        issuer: Some(ISS.into()),
        audience: Some(AUD.into()),
        ..config()
    })
    .unwrap()
}

fn pem(name: &str) -> AdminAuth {
    AdminAuth::from_config(&AdminAuthConfig {
        public_key_pem: Some(fixture(name)),
        ..config()
    })
    .unwrap()
}

fn jwks() -> AdminAuth {
    AdminAuth::from_config(&AdminAuthConfig {
        jwks: Some(fixture("jwks.json")),
        ..config()
    })
    .unwrap()
}

fn private_key(name: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(name)).unwrap();
    match name {
        n if n.starts_with("rsa") => EncodingKey::from_rsa_pem(&pem),
        n if n.starts_with("ec") => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap()
}

fn passes(auth: &AdminAuth, token: &str) -> Claims {
    auth.check(Some(&bearer(token)), Scope::KeysRead)
        .unwrap_or_else(|e| panic!("expected a pass, got {e}"))
}

/// The reason of an `Unauthenticated` rejection of `token`; also checks
/// that the message does not echo the token.
fn rejected(auth: &AdminAuth, token: &str) -> String {
    rejected_header(auth, Some(&bearer(token)))
}

fn rejected_header(auth: &AdminAuth, header: Option<&str>) -> String {
    match auth.check(header, Scope::KeysRead) {
        Err(e @ AuthError::Unauthenticated(_)) => {
            let message = e.to_string();
            for part in header.unwrap_or_default().split(['.', ' ']) {
                assert!(
                    part.len() < 8 || !message.contains(part),
                    "{message:?} echoes {part:?}"
                );
            }
            let AuthError::Unauthenticated(reason) = e else {
                unreachable!()
            };
            reason
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

fn assert_rejected(auth: &AdminAuth, token: &str, expect: &str) {
    let reason = rejected(auth, token);
    assert!(reason.contains(expect), "{reason:?} lacks {expect:?}");
}

// === passing tokens ===

#[test]
fn a_good_token_passes_with_its_claims() {
    let body = claims(60);
    let c = hs()
        .check(Some(&bearer(&hs_token(&body))), Scope::KeysWrite)
        .unwrap();
    assert_eq!(c.sub, "ops");
    assert_eq!(c.scopes, vec![Scope::KeysRead, Scope::KeysWrite]);
    assert_eq!(c.exp, body["exp"].as_u64().unwrap());
    assert!(c.has(Scope::KeysRead) && !c.has(Scope::AuditRead));
    assert_eq!(hs().authenticate(Some(&bearer(&hs_token(&body)))), Ok(c));
}

#[test]
fn scope_words_are_filtered_deduplicated_and_may_be_an_array() {
    let body = with(
        claims(60),
        "scope",
        "openid audit:read keys:delete audit:read  usage:read".into(),
    );
    let c = hs()
        .check(Some(&bearer(&hs_token(&body))), Scope::UsageRead)
        .unwrap();
    assert_eq!(c.scopes, vec![Scope::AuditRead, Scope::UsageRead]);
    let body = with(claims(60), "scope", json!(["plans:read", "x", "keys:read"]));
    let c = passes(&hs(), &hs_token(&body));
    assert_eq!(c.scopes, vec![Scope::PlansRead, Scope::KeysRead]);
    assert_rejected(
        &hs(),
        &hs_token(&with(claims(60), "scope", json!(7))),
        "malformed scope",
    );
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let t = hs_token(&claims(60));
    for h in [format!("bearer {t}"), format!("BEARER  {t} ")] {
        hs().check(Some(&h), Scope::KeysRead).unwrap();
    }
}

#[test]
fn leeway_covers_small_clock_skew() {
    // Expired 10 s ago and valid from 10 s ahead: inside the 30 s leeway.
    passes(&hs(), &hs_token(&claims(-10)));
    passes(
        &hs(),
        &hs_token(&with(claims(60), "nbf", json!(now() + 10))),
    );
    passes(&hs(), &hs_token(&with(claims(60), "nbf", json!(now() - 5))));
}

#[test]
fn iss_and_aud_are_free_when_not_configured() {
    let open = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        ..config()
    })
    .unwrap();
    passes(&open, &hs_token(&claims(60)));
    passes(
        &open,
        &hs_token(&without(without(claims(60), "iss"), "aud")),
    );
    passes(
        &open,
        &hs_token(&with(claims(60), "aud", json!(["a", "b"]))),
    );
}

#[test]
fn aud_may_be_an_array_holding_ours() {
    let body = with(claims(60), "aud", json!(["other", AUD]));
    passes(&hs(), &hs_token(&body));
}

// === every failure ===

#[test]
fn missing_or_unusable_header_values() {
    let a = hs();
    assert!(rejected_header(&a, None).contains("missing authorization"));
    assert!(rejected_header(&a, Some("")).contains("Bearer <token>"));
    let t = hs_token(&claims(60));
    assert!(rejected_header(&a, Some(&format!("Basic {t}"))).contains("scheme must be Bearer"));
    assert!(rejected_header(&a, Some(&t)).contains("Bearer <token>"));
    assert!(rejected_header(&a, Some("Bearer ")).contains("Bearer <token>"));
    // admin.rs passes a NUL for a non-ASCII header value.
    assert!(rejected_header(&a, Some("\u{0}")).contains("Bearer <token>"));
    let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
    assert!(rejected_header(&a, Some(&huge)).contains("too long"));
}

#[test]
fn garbage_tokens_are_malformed() {
    let a = hs();
    for t in ["garbage", "not.a.token", "a.b.c.d", "..", "eyJ.eyJ.sig"] {
        assert_rejected(&a, t, "malformed token");
    }
    // A well-signed payload that is not JSON.
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
        URL_SAFE_NO_PAD.encode("not json")
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(rejected(&a, &format!("{message}.{sig}")), "malformed token");
}

#[test]
fn a_token_signed_with_another_secret_has_a_bad_signature() {
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        None,
        &claims(60),
    );
    assert_eq!(rejected(&hs(), &other), "bad signature");
    // A payload swapped under a good signature.
    let good = hs_token(&claims(60));
    let evil = hs_token(&with(claims(60), "scope", "audit:read".into()));
    let (g, e): (Vec<&str>, Vec<&str>) = (good.split('.').collect(), evil.split('.').collect());
    assert_eq!(
        rejected(&hs(), &format!("{}.{}.{}", g[0], e[1], g[2])),
        "bad signature"
    );
}

#[test]
fn time_claims() {
    let a = hs();
    assert_eq!(rejected(&a, &hs_token(&claims(-120))), "token expired");
    assert_rejected(
        &a,
        &hs_token(&with(claims(600), "nbf", json!(now() + 300))),
        "nbf",
    );
    assert_eq!(
        rejected(&a, &hs_token(&without(claims(60), "exp"))),
        "missing exp claim"
    );
    // jsonwebtoken counts an unreadable exp as missing.
    assert_rejected(
        &a,
        &hs_token(&with(claims(60), "exp", "tomorrow".into())),
        "exp claim",
    );
    assert_eq!(
        rejected(&a, &hs_token(&with(claims(60), "nbf", "soon".into()))),
        "malformed nbf claim"
    );
}

#[test]
fn issuer_and_audience_are_checked_and_required_when_configured() {
    let a = hs();
    let t = |c: Value| hs_token(&c);
    assert_eq!(
        rejected(&a, &t(with(claims(60), "iss", "someone-else".into()))),
        "wrong issuer"
    );
    assert_rejected(&a, &t(without(claims(60), "iss")), "missing iss");
    assert_eq!(
        rejected(&a, &t(with(claims(60), "aud", "other".into()))),
        "wrong audience"
    );
    assert_eq!(
        rejected(&a, &t(with(claims(60), "aud", json!(["other", "x"])))),
        "wrong audience"
    );
    assert_rejected(&a, &t(without(claims(60), "aud")), "missing aud");
}

#[test]
fn the_subject_is_required_and_sane() {
    let a = hs();
    assert_eq!(
        rejected(&a, &hs_token(&without(claims(60), "sub"))),
        "missing sub claim"
    );
    for bad in [json!(""), json!("a\nb"), json!("x".repeat(257))] {
        assert_rejected(&a, &hs_token(&with(claims(60), "sub", bad)), "sub must be");
    }
    passes(
        &a,
        &hs_token(&with(claims(60), "sub", "x".repeat(256).into())),
    );
}

#[test]
fn alg_none_is_rejected() {
    for alg in ["none", "None", "NONE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        let unsigned = forged(&header, &claims(60), None);
        assert!(unsigned.ends_with('.'));
        assert_rejected(&hs(), &unsigned, "alg none");
        // Even with something in the signature place.
        assert_rejected(&hs(), &format!("{unsigned}c2ln"), "alg none");
    }
}

#[test]
fn algorithms_outside_the_allow_list_are_rejected() {
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = sign(alg, &EncodingKey::from_secret(SECRET), None, &claims(60));
        assert_rejected(&hs(), &t, "only HS256, RS256, ES256 and EdDSA");
    }
    let t = sign(Algorithm::PS256, &private_key("rsa.key"), None, &claims(60));
    assert_rejected(&pem("rsa.pub"), &t, "not accepted");
    // crit names extensions this checker does not understand.
    let header = json!({"alg": "HS256", "crit": ["exp"]});
    assert_rejected(&hs(), &forged(&header, &claims(60), Some(SECRET)), "crit");
}

#[test]
fn algorithm_confusion_is_rejected() {
    // An HS256 token whose "secret" is the RSA public key PEM, checked by
    // a server that only has that public key.
    let public = std::fs::read(fixture("rsa.pub")).unwrap();
    let body = without(without(claims(60), "iss"), "aud");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        None,
        &body,
    );
    assert_eq!(
        rejected(&pem("rsa.pub"), &confused),
        "algorithm HS256 is not allowed for the configured keys"
    );
    assert_rejected(&jwks(), &confused, "HS256 is not allowed");
    // With an HS256 secret configured too, it meets the real secret.
    let both = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        public_key_pem: Some(fixture("rsa.pub")),
        ..config()
    })
    .unwrap();
    assert_eq!(rejected(&both, &confused), "bad signature");
    // An RS256 header over an HMAC made with the public key.
    let rs_header = forged(&json!({"alg": "RS256"}), &body, Some(&public));
    assert_eq!(rejected(&pem("rsa.pub"), &rs_header), "bad signature");
    // A token of one key family named as a key of another.
    let es = sign(
        Algorithm::ES256,
        &private_key("ec.key"),
        Some("rsa-1"),
        &body,
    );
    assert_eq!(rejected(&jwks(), &es), "unknown kid");
    assert_rejected(&pem("rsa.pub"), &es, "ES256 is not allowed");
    let ed = sign(Algorithm::EdDSA, &private_key("ed.key"), None, &body);
    assert_rejected(&pem("ec.pub"), &ed, "EdDSA is not allowed");
}

#[test]
fn public_keys_from_pem_and_jwks() {
    let body = without(without(claims(60), "iss"), "aud");
    let jwks = jwks();
    for (name, alg, kid) in [
        ("rsa", Algorithm::RS256, "rsa-1"),
        ("ec", Algorithm::ES256, "ec-1"),
        ("ed", Algorithm::EdDSA, "ed-1"),
    ] {
        let key = private_key(&format!("{name}.key"));
        let pem = pem(&format!("{name}.pub"));
        assert_eq!(passes(&pem, &sign(alg, &key, None, &body)).sub, "ops");
        // A kid never falls back to the PEM key, which has none.
        assert_eq!(
            rejected(&pem, &sign(alg, &key, Some("any"), &body)),
            "unknown kid",
            "{name}"
        );
        assert_eq!(passes(&jwks, &sign(alg, &key, Some(kid), &body)).sub, "ops");
        let t = sign(alg, &key, Some("unknown-kid"), &body);
        assert_eq!(rejected(&jwks, &t), "unknown kid", "{name}");
        if name == "rsa" {
            // Another RSA key's signature.
            let other = sign(alg, &private_key("rsa2.key"), None, &body);
            assert_eq!(rejected(&pem, &other), "bad signature");
        } else {
            assert_other_family(&jwks, name, &body);
        }
    }
}

fn assert_other_family(jwks: &AdminAuth, name: &str, body: &Value) {
    // The EC and Ed25519 keys have no sibling; signing with the other
    // family under their kid is refused by kid and algorithm.
    let (alg, key, kid) = match name {
        "ec" => (Algorithm::EdDSA, private_key("ed.key"), "ec-1"),
        _ => (Algorithm::ES256, private_key("ec.key"), "ed-1"),
    };
    assert_eq!(
        rejected(jwks, &sign(alg, &key, Some(kid), body)),
        "unknown kid"
    );
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let body = without(without(claims(60), "iss"), "aud");
    let (rsa1, rsa2) = (private_key("rsa.key"), private_key("rsa2.key"));
    let jwks = jwks();
    passes(&jwks, &sign(Algorithm::RS256, &rsa2, Some("rsa-2"), &body));
    assert_eq!(
        rejected(&jwks, &sign(Algorithm::RS256, &rsa2, Some("rsa-1"), &body)),
        "bad signature"
    );
    // No kid: fine when one key of the algorithm exists, refused when two.
    passes(
        &jwks,
        &sign(Algorithm::ES256, &private_key("ec.key"), None, &body),
    );
    assert_rejected(
        &jwks,
        &sign(Algorithm::RS256, &rsa1, None, &body),
        "no kid and several keys",
    );
    // The PEM key (no kid) beside the JWKS answers tokens without a kid.
    let mixed = AdminAuth::from_config(&AdminAuthConfig {
        public_key_pem: Some(fixture("rsa.pub")),
        jwks: Some(fixture("jwks.json")),
        ..config()
    })
    .unwrap();
    passes(&mixed, &sign(Algorithm::RS256, &rsa1, None, &body));
    passes(&mixed, &sign(Algorithm::RS256, &rsa2, Some("rsa-2"), &body));
    // An unknown kid never falls to the key without a kid, even when that
    // key did sign the token.
    assert_eq!(
        rejected(&mixed, &sign(Algorithm::RS256, &rsa1, Some("x"), &body)),
        "unknown kid"
    );
}

#[test]
fn secret_and_public_keys_together() {
    let all = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        public_key_pem: Some(fixture("ed.pub")),
        jwks: Some(fixture("jwks.json")),
        ..config()
    })
    .unwrap();
    let body = without(without(claims(60), "iss"), "aud");
    passes(&all, &hs_token(&body));
    passes(
        &all,
        &sign(Algorithm::EdDSA, &private_key("ed.key"), None, &body),
    );
    passes(
        &all,
        &sign(
            Algorithm::ES256,
            &private_key("ec.key"),
            Some("ec-1"),
            &body,
        ),
    );
    // Minted tokens carry no kid; a kid the keys do not have is refused,
    // never checked with the secret.
    let hs_kid = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        Some("k"),
        &body,
    );
    assert_eq!(rejected(&all, &hs_kid), "unknown kid");
    assert_eq!(rejected(&hs(), &hs_kid), "unknown kid");
}

/// HS256 without iss/aud, with `max` as `--jwt-max-lifetime`.
fn bounded(max: u64) -> AdminAuth {
    AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        max_lifetime_secs: Some(max),
        ..config()
    })
    .unwrap()
}

#[test]
fn the_lifetime_is_bounded_when_configured() {
    let a = bounded(3600);
    // exp - iat = 3600: at the bound.
    let body = with(claims(3600), "iat", json!(now()));
    passes(&a, &hs_token(&body));
    // One second over.
    let body = with(claims(3601), "iat", json!(now()));
    let r = rejected(&a, &hs_token(&body));
    assert!(
        r.contains("lifetime") && r.contains("3601 s") && r.contains("3600 s"),
        "{r}"
    );
    assert!(r.contains("--jwt-max-lifetime"), "{r}");
    // An old iat counts: issued 2 h ago, valid 10 more minutes.
    let body = with(claims(600), "iat", json!(now() - 7200));
    assert_rejected(&a, &hs_token(&body), "over the maximum");
    // No iat: refused, since the lifetime is unknown.
    let r = rejected(&a, &hs_token(&without(claims(60), "iat")));
    assert!(r.contains("missing iat"), "{r}");
    assert_rejected(
        &a,
        &hs_token(&with(claims(60), "iat", json!("yesterday"))),
        "malformed iat",
    );
    // An iat in the future would stretch the lifetime past the bound.
    let body = with(claims(7200), "iat", json!(now() + 7000));
    assert_rejected(&a, &hs_token(&body), "issued in the future");
    // Inside the leeway it is clock skew.
    let body = with(claims(60), "iat", json!(now() + 10));
    passes(&a, &hs_token(&body));
    // No exp is refused either way.
    assert_rejected(&a, &hs_token(&without(claims(60), "exp")), "missing exp");
    // Unbounded (the default of AdminAuthConfig), iat is not needed.
    let open = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        ..config()
    })
    .unwrap();
    passes(&open, &hs_token(&without(claims(400 * 86_400), "iat")));
}

#[test]
fn minted_tokens_fit_a_bound_as_long_as_their_ttl() {
    let t = mint_hs256(
        SECRET,
        "ops",
        &[Scope::KeysRead],
        Duration::from_secs(3600),
        None,
        None,
    )
    .unwrap();
    passes(&bounded(3600), &t);
    assert_rejected(&bounded(3599), &t, "over the maximum");
}

#[test]
fn the_leeway_is_configurable() {
    let with_leeway = |secs| {
        AdminAuth::from_config(&AdminAuthConfig {
            hs256_secret: Some(SECRET.to_vec().into()),
            leeway_secs: secs,
            ..AdminAuthConfig::default()
        })
        .unwrap()
    };
    let expired_20s_ago = hs_token(&without(without(claims(-20), "iss"), "aud"));
    passes(&with_leeway(30), &expired_20s_ago);
    assert_rejected(&with_leeway(10), &expired_20s_ago, "token expired");
    assert_rejected(&with_leeway(0), &expired_20s_ago, "token expired");
    let later = hs_token(&with(
        without(without(claims(120), "iss"), "aud"),
        "nbf",
        json!(now() + 20),
    ));
    passes(&with_leeway(30), &later);
    assert_rejected(&with_leeway(10), &later, "not valid yet");
}

#[test]
fn a_missing_scope_is_permission_denied() {
    let t = hs_token(&with(claims(60), "scope", "keys:read".into()));
    let e = hs()
        .check(Some(&bearer(&t)), Scope::PlansWrite)
        .unwrap_err();
    assert_eq!(
        e,
        AuthError::PermissionDenied {
            needed: Scope::PlansWrite
        }
    );
    assert!(e.to_string().contains("plans:write"), "{e}");
    let t = hs_token(&without(claims(60), "scope"));
    assert!(matches!(
        hs().check(Some(&bearer(&t)), Scope::KeysRead),
        Err(AuthError::PermissionDenied { .. })
    ));
    // Authentication still works without a scope.
    assert_eq!(
        hs().authenticate(Some(&bearer(&t))).unwrap().scopes,
        Vec::<Scope>::new()
    );
}

#[test]
fn scopes_parse_and_print() {
    for s in Scope::ALL {
        assert_eq!(Scope::parse(s.as_str()), Some(s));
        assert_eq!(s.to_string(), s.as_str());
    }
    let words: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        words,
        [
            "keys:read",
            "keys:write",
            "plans:read",
            "plans:write",
            "usage:read",
            "audit:read"
        ]
    );
    for w in ["keys:delete", "KEYS:READ", "keys:read ", "", "all"] {
        assert_eq!(Scope::parse(w), None, "{w:?}");
    }
    assert_eq!(
        Scope::parse_list(" usage:read x keys:read usage:read "),
        [Scope::UsageRead, Scope::KeysRead]
    );
    assert_eq!(Scope::join(&Scope::ALL), words.join(" "));
}

// === configuration ===

#[test]
fn disabled_when_nothing_is_configured() {
    for off in [
        AdminAuth::from_config(&AdminAuthConfig::default()).unwrap(),
        AdminAuth::disabled(),
    ] {
        assert!(!off.is_enabled());
        let t = hs_token(&claims(60));
        for h in [None, Some(bearer(&t))] {
            assert_eq!(
                off.check(h.as_deref(), Scope::KeysRead),
                Err(AuthError::NotConfigured)
            );
        }
    }
    let m = AuthError::NotConfigured.to_string();
    for hint in [
        "SLUICE_JWT_SECRET",
        "32 bytes",
        "--jwt-public-key",
        "--jwt-jwks",
    ] {
        assert!(m.contains(hint), "{m}");
    }
    assert!(hs().is_enabled() && pem("ed.pub").is_enabled());
}

#[test]
fn short_secrets_and_large_leeway_are_config_errors() {
    for len in [0, 1, 31] {
        let e = AdminAuth::from_config(&AdminAuthConfig {
            hs256_secret: Some(vec![b'x'; len].into()),
            ..config()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SLUICE_JWT_SECRET") && e.contains("at least 32"),
            "{e}"
        );
    }
    AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(vec![b'x'; 32].into()),
        ..config()
    })
    .unwrap();
    let e = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        leeway_secs: u64::MAX,
        ..config()
    })
    .unwrap_err();
    assert!(matches!(e, AuthConfigError::Leeway { .. }), "{e}");
}

fn pem_error(path: &Path) -> String {
    AdminAuth::from_config(&AdminAuthConfig {
        public_key_pem: Some(path.to_path_buf()),
        ..config()
    })
    .unwrap_err()
    .to_string()
}

fn jwks_error(path: &Path) -> String {
    AdminAuth::from_config(&AdminAuthConfig {
        jwks: Some(path.to_path_buf()),
        ..config()
    })
    .unwrap_err()
    .to_string()
}

#[test]
fn bad_pem_files_are_named_with_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let rsa_pub = std::fs::read_to_string(fixture("rsa.pub")).unwrap();
    let ec_pub = std::fs::read_to_string(fixture("ec.pub")).unwrap();
    let cases = [
        (fixture("README.txt"), "not a PEM file"),
        (fixture("missing.pem"), "cannot read"),
        (fixture("rsa.key"), "private key"),
        (fixture("ec.key"), "private key"),
        (fixture("ed.key"), "private key"),
        (fixture("ec384.pub"), "P-384"),
        (fixture("rsa1024.pub"), "1024 bits; at least 2048"),
        (fixture("jwks.json"), "not a PEM file"),
        (
            write(
                "cert.pem",
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            ),
            "certificate",
        ),
        (
            write("two.pem", &format!("{rsa_pub}{ec_pub}")),
            "2 PEM blocks",
        ),
        (
            write(
                "junk.pem",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            ),
            "not an RSA, EC P-256 or Ed25519 public key",
        ),
    ];
    for (path, expect) in cases {
        let e = pem_error(&path);
        let file = path.file_name().unwrap().to_str().unwrap();
        assert!(e.contains(file) && e.contains(expect), "{file}: {e}");
    }
}

#[test]
fn bad_jwks_files_are_named_with_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let key = |kid: &str| {
        good["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone()
    };
    let zeros = URL_SAFE_NO_PAD.encode([0u8; 32]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("not-json", "{".into(), "not JSON"),
        ("no-keys", "{}".into(), "not a JWKS"),
        ("empty", r#"{"keys": []}"#.into(), "holds no keys"),
        (
            "oct",
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string(),
            "keys[0]: symmetric (oct)",
        ),
        (
            "private",
            json!({"keys": [with(key("ec-1"), "d", zeros.clone().into())]}).to_string(),
            "private key material",
        ),
        (
            "dup",
            json!({"keys": [key("rsa-1"), with(key("rsa-2"), "kid", "rsa-1".into())]})
                .to_string(),
            "keys[1] (kid \"rsa-1\"): the kid is used twice",
        ),
        (
            "enc",
            json!({"keys": [with(key("rsa-1"), "use", "enc".into())]}).to_string(),
            "use is \"enc\"",
        ),
        (
            "ops",
            json!({"keys": [with(key("rsa-1"), "key_ops", json!(["encrypt"]))]}).to_string(),
            "key_ops",
        ),
        (
            "p384",
            json!({"keys": [with(key("ec-1"), "crv", "P-384".into())]}).to_string(),
            "curve \"P-384\" is not supported",
        ),
        (
            "rs384",
            json!({"keys": [with(key("rsa-1"), "alg", "RS384".into())]}).to_string(),
            "alg \"RS384\" is not supported",
        ),
        (
            "short-ed",
            json!({"keys": [with(key("ed-1"), "x", URL_SAFE_NO_PAD.encode([1u8; 31]).into())]})
                .to_string(),
            "32 bytes",
        ),
        (
            "off-curve",
            json!({"keys": [with(with(key("ec-1"), "x", zeros.clone().into()), "y", zeros.into())]})
                .to_string(),
            "not a valid P-256 public key",
        ),
        (
            "small-rsa",
            json!({"keys": [with(key("rsa-1"), "n", URL_SAFE_NO_PAD.encode([0xc3u8; 128]).into())]})
                .to_string(),
            "1024 bits",
        ),
        (
            "no-e",
            json!({"keys": [without(key("rsa-1"), "e")]}).to_string(),
            "has no e",
        ),
        (
            "kty",
            json!({"keys": [{"kty": "XYZ"}]}).to_string(),
            "key type \"XYZ\" is not supported",
        ),
    ];
    for (name, text, expect) in cases {
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, text).unwrap();
        let e = jwks_error(&p);
        assert!(
            e.contains(&format!("{name}.json")) && e.contains(expect),
            "{name}: {e}"
        );
    }
    let e = jwks_error(&fixture("missing.json"));
    assert!(e.contains("missing.json"), "{e}");
    // Padding and a key without alg or use are tolerated.
    let ed = key("ed-1");
    let padded = format!("{}=", ed["x"].as_str().unwrap());
    let lenient = json!({"keys": [with(without(without(ed, "alg"), "use"), "x", padded.into())]});
    let p = dir.path().join("lenient.json");
    std::fs::write(&p, lenient.to_string()).unwrap();
    let auth = AdminAuth::from_config(&AdminAuthConfig {
        jwks: Some(p),
        ..config()
    })
    .unwrap();
    let body = without(without(claims(60), "iss"), "aud");
    passes(
        &auth,
        &sign(Algorithm::EdDSA, &private_key("ed.key"), None, &body),
    );
}

#[test]
fn debug_output_hides_the_secret() {
    let c = AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        ..config()
    };
    let text = format!("{c:?} {:?}", AdminAuth::from_config(&c).unwrap());
    assert!(!text.contains("0123456789abcdef"), "{text}");
    assert!(text.contains("***") && text.contains("HS256"), "{text}");
}

// === minting ===

#[test]
fn minted_tokens_verify() {
    let t = mint_hs256(
        SECRET,
        "alice",
        &[Scope::PlansRead, Scope::UsageRead, Scope::PlansRead],
        Duration::from_secs(600),
        Some(ISS),
        Some(AUD),
    )
    .unwrap();
    let c = hs().check(Some(&bearer(&t)), Scope::PlansRead).unwrap();
    assert_eq!(c.sub, "alice");
    assert_eq!(c.scopes, [Scope::PlansRead, Scope::UsageRead]);
    assert_eq!(
        hs().check(Some(&bearer(&t)), Scope::KeysRead),
        Err(AuthError::PermissionDenied {
            needed: Scope::KeysRead
        })
    );
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let iat = payload["iat"].as_i64().unwrap();
    assert!((iat - now()).abs() <= 2, "{payload}");
    assert_eq!(payload["nbf"], payload["iat"]);
    assert_eq!(payload["exp"].as_i64().unwrap(), iat + 600);
    assert_eq!(payload["iss"], ISS);
    assert_eq!(payload["aud"], AUD);
    assert_eq!(payload["scope"], "plans:read usage:read");
    // Without iss and aud the token lacks both, which this server requires
    // (which one is reported first is not fixed).
    let bare = mint_hs256(
        SECRET,
        "bob",
        &Scope::ALL,
        Duration::from_secs(60),
        None,
        None,
    )
    .unwrap();
    let reason = rejected(&hs(), &bare);
    assert!(
        reason.starts_with("missing iss") || reason.starts_with("missing aud"),
        "{reason}"
    );
}

#[test]
fn minting_refuses_bad_input() {
    let mint = |secret: &[u8], sub: &str, scopes: &[Scope], ttl: Duration| {
        mint_hs256(secret, sub, scopes, ttl, None, None)
    };
    let hour = Duration::from_secs(3600);
    let all = &Scope::ALL[..];
    assert!(matches!(
        mint(SECRET, "a", all, Duration::ZERO),
        Err(MintError::Ttl)
    ));
    assert!(matches!(
        mint(SECRET, "a", all, Duration::from_millis(500)),
        Err(MintError::Ttl)
    ));
    assert!(matches!(
        mint(SECRET, "a", all, MAX_TTL + Duration::from_secs(1)),
        Err(MintError::Ttl)
    ));
    mint(SECRET, "a", all, MAX_TTL).unwrap();
    mint(SECRET, "a", all, Duration::from_secs(1)).unwrap();
    assert!(MintError::Ttl.to_string().contains("366 days"));
    assert!(matches!(
        mint(b"short", "a", all, hour),
        Err(MintError::ShortSecret { len: 5 })
    ));
    for sub in ["", "a\tb", &"x".repeat(257)] {
        assert!(matches!(
            mint(SECRET, sub, all, hour),
            Err(MintError::Subject)
        ));
    }
    assert!(matches!(
        mint(SECRET, "a", &[], hour),
        Err(MintError::NoScopes)
    ));
}

// === reloading key files ===

#[test]
fn key_files_reload_and_a_bad_file_keeps_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("admin.pub");
    std::fs::copy(fixture("rsa.pub"), &pem_path).unwrap();
    let auth = AdminAuth::from_config(&AdminAuthConfig {
        public_key_pem: Some(pem_path.clone()),
        ..config()
    })
    .unwrap();
    assert_eq!(auth.key_files(), vec![pem_path.as_path()]);
    let body = without(without(claims(60), "iss"), "aud");
    let by_rsa1 = sign(Algorithm::RS256, &private_key("rsa.key"), None, &body);
    let by_rsa2 = sign(Algorithm::RS256, &private_key("rsa2.key"), None, &body);
    passes(&auth, &by_rsa1);
    assert_eq!(rejected(&auth, &by_rsa2), "bad signature");
    assert_eq!(auth.reload().unwrap(), KeyReload::Unchanged);

    // A rotation: the new key verifies, the old one no longer does.
    std::fs::copy(fixture("rsa2.pub"), &pem_path).unwrap();
    assert_eq!(auth.reload().unwrap(), KeyReload::Reloaded { keys: 1 });
    passes(&auth, &by_rsa2);
    assert_eq!(rejected(&auth, &by_rsa1), "bad signature");

    // A bad file: an error once, then StillBroken; the keys stay.
    std::fs::write(&pem_path, "not a key").unwrap();
    let e = auth.reload().unwrap_err().to_string();
    assert!(
        e.contains("admin.pub") && e.contains("not a PEM file"),
        "{e}"
    );
    assert_eq!(auth.reload().unwrap(), KeyReload::StillBroken);
    passes(&auth, &by_rsa2);
    // A missing file too.
    std::fs::remove_file(&pem_path).unwrap();
    assert!(matches!(auth.reload(), Err(AuthConfigError::Read { .. })));
    passes(&auth, &by_rsa2);
    // Back to a good file.
    std::fs::copy(fixture("rsa.pub"), &pem_path).unwrap();
    assert_eq!(auth.reload().unwrap(), KeyReload::Reloaded { keys: 1 });
    passes(&auth, &by_rsa1);
}

#[test]
fn a_jwks_reload_adds_and_removes_kids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let only = |kids: &[&str]| {
        let keys: Vec<Value> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
            .cloned()
            .collect();
        json!({ "keys": keys }).to_string()
    };
    std::fs::write(&path, only(&["rsa-1"])).unwrap();
    let secret_too = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec().into()),
        jwks: Some(path.clone()),
        ..config()
    })
    .unwrap();
    let body = without(without(claims(60), "iss"), "aud");
    let rsa2 = sign(
        Algorithm::RS256,
        &private_key("rsa2.key"),
        Some("rsa-2"),
        &body,
    );
    let rsa1 = sign(
        Algorithm::RS256,
        &private_key("rsa.key"),
        Some("rsa-1"),
        &body,
    );
    assert_eq!(rejected(&secret_too, &rsa2), "unknown kid");
    std::fs::write(&path, only(&["rsa-1", "rsa-2"])).unwrap();
    assert_eq!(
        secret_too.reload().unwrap(),
        KeyReload::Reloaded { keys: 2 }
    );
    passes(&secret_too, &rsa2);
    passes(&secret_too, &rsa1);
    std::fs::write(&path, only(&["rsa-2"])).unwrap();
    secret_too.reload().unwrap();
    assert_eq!(rejected(&secret_too, &rsa1), "unknown kid");
    // The secret is not a file key: it stays through every reload.
    passes(&secret_too, &hs_token(&body));
    // No key files: nothing to reload.
    assert_eq!(hs().reload().unwrap(), KeyReload::Unchanged);
    assert!(hs().key_files().is_empty());
}
