use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn hs() -> AdminAuth {
    AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        issuer: Some("sluice-test".into()),
        audience: Some("sluice-admin".into()),
        ..AdminAuthConfig::default()
    })
    .unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(exp: i64) -> serde_json::Value {
    serde_json::json!({
        "sub": "ops",
        "exp": (now() as i64 + exp),
        "iss": "sluice-test",
        "aud": "sluice-admin",
        "scope": "keys:read keys:write",
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, body: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, body, key).unwrap()
}

fn hs_token(body: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        None,
        body,
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn rejected(auth: &AdminAuth, header: Option<&str>) -> String {
    match auth.check(header, Scope::KeysRead) {
        Err(AuthError::Unauthenticated(m)) => m,
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[test]
fn a_good_token_passes_with_its_scopes() {
    let c = hs()
        .check(Some(&bearer(&hs_token(&claims(60)))), Scope::KeysWrite)
        .unwrap();
    assert_eq!(c.sub, "ops");
    assert!(c.scopes.contains(&Scope::KeysRead) && c.scopes.contains(&Scope::KeysWrite));
}

#[test]
fn every_bad_token_is_unauthenticated() {
    let a = hs();
    assert!(rejected(&a, None).contains("missing"));
    assert!(rejected(&a, Some("Basic abc")).contains("Bearer"));
    assert!(rejected(&a, Some("Bearer not.a.token")).contains("malformed"));
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        None,
        &claims(60),
    );
    assert_eq!(rejected(&a, Some(&bearer(&other))), "bad signature");
    assert_eq!(
        rejected(&a, Some(&bearer(&hs_token(&claims(-120))))),
        "expired"
    );
    let mut early = claims(600);
    early["nbf"] = serde_json::json!(now() + 300);
    assert!(rejected(&a, Some(&bearer(&hs_token(&early)))).contains("nbf"));
    let mut iss = claims(60);
    iss["iss"] = "someone-else".into();
    assert_eq!(rejected(&a, Some(&bearer(&hs_token(&iss)))), "wrong issuer");
    let mut aud = claims(60);
    aud["aud"] = serde_json::json!(["other"]);
    assert_eq!(
        rejected(&a, Some(&bearer(&hs_token(&aud)))),
        "wrong audience"
    );
    let mut no_exp = claims(60);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        rejected(&a, Some(&bearer(&hs_token(&no_exp)))),
        "missing exp"
    );
    let mut no_sub = claims(60);
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        rejected(&a, Some(&bearer(&hs_token(&no_sub)))),
        "missing sub"
    );
}

#[test]
fn alg_none_is_rejected() {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let token = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(60))
    );
    assert!(rejected(&hs(), Some(&bearer(&token))).contains("malformed"));
}

#[test]
fn algorithm_confusion_is_rejected() {
    // An HS256 token whose "secret" is the RSA public key, checked by a
    // server that only knows that public key.
    let rsa = AdminAuth::from_config(&AdminAuthConfig {
        public_key_pem: Some(fixture("rsa.pub")),
        ..AdminAuthConfig::default()
    })
    .unwrap();
    let public = std::fs::read(fixture("rsa.pub")).unwrap();
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        None,
        &claims(60),
    );
    assert!(rejected(&rsa, Some(&bearer(&forged))).contains("no configured key"));
}

#[test]
fn missing_scope_is_permission_denied() {
    let mut c = claims(60);
    c["scope"] = "keys:read".into();
    match hs().check(Some(&bearer(&hs_token(&c))), Scope::PlansWrite) {
        Err(AuthError::PermissionDenied { needed }) => assert_eq!(needed, Scope::PlansWrite),
        other => panic!("{other:?}"),
    }
}

#[test]
fn disabled_and_short_secret() {
    let off = AdminAuth::from_config(&AdminAuthConfig::default()).unwrap();
    assert!(!off.is_enabled());
    assert!(matches!(
        off.check(None, Scope::KeysRead),
        Err(AuthError::NotConfigured)
    ));
    assert!(
        AuthError::NotConfigured
            .to_string()
            .contains("SLUICE_JWT_SECRET")
    );
    let e = AdminAuth::from_config(&AdminAuthConfig {
        hs256_secret: Some(b"short".to_vec()),
        ..AdminAuthConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("at least 32"), "{e}");
}

#[test]
fn public_keys_from_pem_and_jwks() {
    let cases = [
        ("rsa", Algorithm::RS256, "rsa-1"),
        ("ec", Algorithm::ES256, "ec-1"),
        ("ed", Algorithm::EdDSA, "ed-1"),
    ];
    let jwks = AdminAuth::from_config(&AdminAuthConfig {
        jwks: Some(fixture("jwks.json")),
        ..AdminAuthConfig::default()
    })
    .unwrap();
    let mut c = claims(60);
    c.as_object_mut().unwrap().remove("iss");
    c.as_object_mut().unwrap().remove("aud");
    for (name, alg, kid) in cases {
        let private = std::fs::read(fixture(&format!("{name}.key"))).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&private),
            _ => EncodingKey::from_ed_pem(&private),
        }
        .unwrap();
        let pem = AdminAuth::from_config(&AdminAuthConfig {
            public_key_pem: Some(fixture(&format!("{name}.pub"))),
            ..AdminAuthConfig::default()
        })
        .unwrap();
        let t = sign(alg, &key, None, &c);
        assert_eq!(
            pem.check(Some(&bearer(&t)), Scope::KeysRead).unwrap().sub,
            "ops",
            "{name} pem"
        );
        let t = sign(alg, &key, Some(kid), &c);
        assert_eq!(
            jwks.check(Some(&bearer(&t)), Scope::KeysRead).unwrap().sub,
            "ops",
            "{name} jwks"
        );
        let t = sign(alg, &key, Some("unknown-kid"), &c);
        assert!(
            rejected(&jwks, Some(&bearer(&t))).contains("no configured key"),
            "{name}"
        );
    }
    // A key signed by EC but named as the RSA kid fails.
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec.key")).unwrap()).unwrap();
    let t = sign(Algorithm::ES256, &ec, Some("rsa-1"), &c);
    assert!(jwks.check(Some(&bearer(&t)), Scope::KeysRead).is_err());
}

#[test]
fn bad_key_files_are_named() {
    let e = AdminAuth::from_config(&AdminAuthConfig {
        public_key_pem: Some(fixture("README.txt")),
        ..AdminAuthConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("README.txt") && e.contains("PEM"), "{e}");
    let e = AdminAuth::from_config(&AdminAuthConfig {
        jwks: Some(fixture("missing.json")),
        ..AdminAuthConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing.json"), "{e}");
}

#[test]
fn minted_tokens_verify() {
    let t = mint_hs256(
        SECRET,
        "alice",
        &[Scope::PlansRead],
        Duration::from_secs(60),
        Some("sluice-test"),
        Some("sluice-admin"),
    )
    .unwrap();
    let c = hs().check(Some(&bearer(&t)), Scope::PlansRead).unwrap();
    assert_eq!(c.sub, "alice");
    assert!(matches!(
        hs().check(Some(&bearer(&t)), Scope::KeysRead),
        Err(AuthError::PermissionDenied { .. })
    ));
    assert!(mint_hs256(SECRET, "a", &[], Duration::ZERO, None, None).is_err());
    assert!(mint_hs256(SECRET, "a", &[], MAX_TTL * 2, None, None).is_err());
    assert!(mint_hs256(b"short", "a", &[], Duration::from_secs(1), None, None).is_err());
}

#[test]
fn scopes_parse() {
    for s in Scope::ALL {
        assert_eq!(Scope::parse(s.as_str()), Some(s));
    }
    assert_eq!(Scope::parse("keys:delete"), None);
}
