//! `sluice probe` (what the Helm chart's `helm test` Pod runs) against the
//! real server: health, then a decision that spends nothing.

use std::process::Command;

use crate::support::{BIN, Sluice};

const CONFIG: &str = r#"
domain: edge
descriptors:
  - key: generic_key
    value: limited
    rate_limit: {unit: minute, requests_per_unit: 2}
"#;

fn probe(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).arg("probe").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn probe_checks_health_and_a_decision_without_spending() {
    let s = Sluice::start(CONFIG, &[]);
    let addr = format!("http://{}", s.grpc_addr);
    let (ok, text) = probe(&["--addr", &addr]);
    assert!(ok, "{text}");
    assert!(text.contains("health SERVING"), "{text}");

    let decide = [
        "--addr",
        &addr,
        "--domain",
        "edge",
        "--descriptor",
        "generic_key=limited",
    ];
    // Many probes, and the limit of 2 is still untouched: hits_addend 0.
    for _ in 0..4 {
        let (ok, text) = probe(&decide);
        assert!(ok, "{text}");
        assert!(
            text.contains("domain edge: OK [OK (2/minute, 2 left)]"),
            "{text}"
        );
    }
    let (ok, text) = probe(&[&decide[..], &["--expect", "over-limit"]].concat());
    assert!(!ok, "{text}");
    assert!(text.contains("expected OVER_LIMIT"), "{text}");
    let (ok, text) = probe(&[&decide[..], &["--expect", "ok"]].concat());
    assert!(ok, "{text}");
    // A domain sluice does not know answers OK (no rule applies): decided.
    let (ok, text) = probe(&["--addr", &addr, "--domain", "nope", "--descriptor", "a=b"]);
    assert!(ok, "{text}");
    let (ok, text) = probe(&["--addr", &addr, "--domain", "edge", "--descriptor", "bad"]);
    assert!(!ok && text.contains("is not key=value"), "{text}");
}

#[test]
fn probe_fails_when_nothing_listens() {
    let port = crate::support::redis::free_port();
    let (ok, text) = probe(&[
        "--addr",
        &format!("http://127.0.0.1:{port}"),
        "--timeout",
        "2",
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("cannot connect"), "{text}");
}
