//! `sluice check-config`: validates and prints every error.

use std::process::Command;

use crate::support::BIN;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ok.yaml");
    std::fs::write(&f, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n").unwrap();
    let (ok, out, err) = run(&["check-config", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("1 domain"), "{out}");
}

#[test]
fn every_error_is_printed_with_file_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: k\n  - key: w\n    value: plain\n    share_threshold: true\n";
    std::fs::write(dir.path().join("a.yaml"), bad).unwrap();
    std::fs::write(dir.path().join("b.yaml"), "domain: d\n").unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
    let (ok, _, err) = run(&["check-config", dir.path().to_str().unwrap()]);
    assert!(!ok);
    for needle in [
        "a.yaml: descriptors[0](key=k).rate_limit.unit: unknown unit 'fortnight'",
        "duplicate descriptor",
        "share_threshold",
        "b.yaml: domain: domain 'd' is already defined",
        "5 error(s)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
    assert!(!err.contains(".hidden"), "{err}");
}

#[test]
fn merge_domains_allows_one_domain_in_several_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
    std::fs::write(dir.path().join("b.yml"), "domain: d\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 1}\n").unwrap();
    let path = dir.path().to_str().unwrap();
    assert!(!run(&["check-config", path]).0);
    let (ok, out, err) = run(&["check-config", path, "--merge-domains"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 rule(s)"), "{out}");
}
