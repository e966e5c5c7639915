//! Hot reload: valid changes apply within 2 s, invalid ones are rejected
//! and counted, counters of unchanged rules survive, and a Kubernetes
//! ConfigMap `..data` symlink swap is picked up.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use crate::support::{
    OK, OVER, Opts, Sluice, avoid_minute_boundary, call, codes, desc, eventually, req,
};

const V1: &str = r#"
domain: hot
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

const V2: &str = r#"
domain: hot
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: c
    rate_limit: {unit: minute, requests_per_unit: 0}
"#;

async fn metric(s: &Sluice, name: &str) -> String {
    let text = s.metrics().await;
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn valid_change_applies_and_counters_survive() {
    avoid_minute_boundary(15).await;
    let s = Sluice::start(V1, &[]);
    let mut c = s.client().await;
    let a = req("hot", vec![desc(&[("a", "x")])]);
    assert_eq!(codes(&mut c, &a, 2).await, vec![OK, OK]);

    std::fs::write(&s.config_path, V2).unwrap();
    let cc = req("hot", vec![desc(&[("c", "x")])]);
    let applied = eventually(Duration::from_secs(2), || {
        let mut c = c.clone();
        let cc = cc.clone();
        async move { call(&mut c, cc).await.overall_code == OVER }
    })
    .await;
    assert!(applied, "new rule not applied within 2 s");
    // `a` is unchanged: its count (2 of 3) survived the reload.
    assert_eq!(codes(&mut c, &a, 2).await, vec![OK, OVER]);
    assert!(
        metric(&s, "sluice_config_load_success_total")
            .await
            .ends_with(" 2")
    );
}

#[tokio::test]
async fn invalid_change_is_rejected_and_previous_config_keeps_serving() {
    let s = Sluice::start(V1, &[]);
    let mut c = s.client().await;
    std::fs::write(
        &s.config_path,
        "domain: hot\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight}\n",
    )
    .unwrap();
    s.wait_log("reload rejected", Duration::from_secs(5));
    assert!(
        metric(&s, "sluice_config_load_error_total")
            .await
            .ends_with(" 1")
    );
    let b = req("hot", vec![desc(&[("b", "x")])]);
    assert_eq!(codes(&mut c, &b, 2).await, vec![OK, OVER]);
}

/// Lays out a directory the way the kubelet mounts a ConfigMap:
/// `config.yaml -> ..data/config.yaml`, `..data -> ..<version>`.
fn configmap_version(dir: &Path, version: &str, text: &str) {
    let vdir = dir.join(format!("..{version}"));
    std::fs::create_dir(&vdir).unwrap();
    std::fs::write(vdir.join("config.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("config.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        symlink("..data/config.yaml", &link).unwrap();
    }
}

#[tokio::test]
async fn configmap_symlink_swap_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("cm");
    std::fs::create_dir(&cm).unwrap();
    configmap_version(&cm, "v1", V1);
    let s = Sluice::start_on_path(dir, cm.clone(), &Opts::default());
    let mut c = s.client().await;
    let cc = req("hot", vec![desc(&[("c", "x")])]);
    assert!(
        call(&mut c, cc.clone()).await.statuses[0]
            .current_limit
            .is_none()
    );

    configmap_version(&cm, "v2", V2);
    let applied = eventually(Duration::from_secs(2), || {
        let mut c = c.clone();
        let cc = cc.clone();
        async move { call(&mut c, cc).await.overall_code == OVER }
    })
    .await;
    assert!(applied, "ConfigMap swap not applied within 2 s");
}
