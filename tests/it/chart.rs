//! The Helm chart (helm/sluice) with the real helm v4 (scripts/test.sh
//! extracts it into .venv/bin), the real Kubernetes OpenAPI schemas
//! (kubernetes-validate), the real promtool, and, decisively, the real
//! sluice binary started exactly as the rendered Deployment says.
//!
//! The decisive check ([`Pod`]) takes the rendered Deployment's container
//! args and env, lays its ConfigMap, Secret and emptyDir volumes out under
//! a temporary root as the kubelet does (the `..data` symlink layout),
//! maps every mount path in the args and env onto that root, and starts
//! sluice with exactly that, with an empty environment otherwise, as the
//! pod's uid (when the tests run as root), against a real Redis Cluster
//! and PostgreSQL. It then probes the chart's declared ports and paths
//! (startup, liveness and readiness probes; gRPC health and a decision on
//! the `grpc` port; the admin listener) and runs the `helm test` Pod's
//! command, its Service address resolved through the rendered Service.
//! What the harness overrides is only what a test machine must: listen
//! ports (`--set ports.*` to free ones) and where Redis lives (loopback
//! addresses instead of the example names; for the TLS + mTLS values one
//! standalone TLS server, requiring a client certificate, no password).
//! Over TLS the test reaches the `grpc` port as a gateway would, with a
//! client certificate from the client CA.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::db::{Kind, TestDb};
use crate::support::redis::{RedisCluster, RedisServer, free_port, run_bounded};
use crate::support::{BIN, call, desc, req, tool};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/sluice");
/// The Kubernetes version whose schemas the manifests must satisfy.
const KUBE_VERSION: &str = "1.33.0";
/// Custom resources kubernetes-validate has no schema for; each is checked
/// here by hand instead (see `check_custom_resources`).
const CUSTOM_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "Certificate"];
/// The values files every chart change must keep passing.
const CI_FILES: &[&str] = &[
    "default-values.yaml",
    "redis-cluster-postgres-values.yaml",
    "sentinel-values.yaml",
    "tls-mtls-values.yaml",
    "everything-values.yaml",
];

// === helm ===

fn helm(args: &[&str]) -> Output {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(args)
        .env("HELM_CACHE_HOME", helm_home().join("cache"));
    cmd.env("HELM_CONFIG_HOME", helm_home().join("config"))
        .env("HELM_DATA_HOME", helm_home().join("data"));
    run_bounded(&mut cmd, Duration::from_secs(60)).unwrap()
}

/// helm's own state, kept out of the user's home.
fn helm_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ci(file: &str) -> String {
    format!("{CHART}/ci/{file}")
}

/// `helm template` of the chart with `values` files and `sets`
/// (`--set`/`--set-json` pairs), as parsed documents.
fn render(values: &[&str], sets: &[(&str, String)]) -> Result<Vec<Value>, String> {
    let mut args: Vec<String> = ["template", "rel", CHART, "--namespace", "edge"]
        .map(String::from)
        .to_vec();
    for v in values {
        args.push("-f".into());
        args.push((*v).to_string());
    }
    for (flag, pair) in sets {
        args.push((*flag).to_string());
        args.push(pair.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&refs);
    if !out.status.success() {
        return Err(text(&out));
    }
    let yaml = String::from_utf8(out.stdout).unwrap();
    let mut docs = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v = Value::deserialize(d).map_err(|e| format!("helm printed bad YAML: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let all = kind(docs, k);
    assert_eq!(all.len(), 1, "expected one {k}, got {}", all.len());
    all[0]
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn deployment(docs: &[Value]) -> &Value {
    one(docs, "Deployment")
}

fn container(docs: &[Value]) -> &Value {
    &deployment(docs)["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(c: &Value) -> Vec<String> {
    arr(&c["args"]).iter().map(|a| s(a).to_string()).collect()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

fn test_pod(docs: &[Value]) -> &Value {
    let pods: Vec<&Value> = kind(docs, "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    assert_eq!(pods.len(), 1, "expected one helm test Pod");
    pods[0]
}

// === static checks ===

#[test]
fn every_ci_values_file_lints_renders_and_validates() {
    let mut found: Vec<String> = fs::read_dir(format!("{CHART}/ci"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".yaml").then_some(name)
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = CI_FILES.iter().map(|s| (*s).to_string()).collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "helm/sluice/ci/*.yaml changed: update CI_FILES"
    );

    let dir = tempfile::tempdir().unwrap();
    for file in CI_FILES {
        let lint = helm(&["lint", "--strict", CHART, "-f", &ci(file)]);
        assert!(
            lint.status.success() && text(&lint).contains("0 chart(s) failed"),
            "helm lint --strict -f ci/{file}:\n{}",
            text(&lint)
        );
        let docs = render(&[&ci(file)], &[]).unwrap_or_else(|e| panic!("ci/{file}: {e}"));
        let path = dir.path().join(file);
        let mut f = fs::File::create(&path).unwrap();
        for d in &docs {
            writeln!(f, "---\n{}", serde_yaml_ng::to_string(d).unwrap()).unwrap();
        }
        drop(f);
        validate(&path, &docs);
        check_invariants(file, &docs);
        check_custom_resources(file, &docs);
    }
}

/// kubernetes-validate --strict: every built-in kind must match its
/// schema; only the custom kinds may lack one.
fn validate(path: &Path, docs: &[Value]) {
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", KUBE_VERSION])
        .arg(path)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate {}:\n{t}",
        path.display()
    );
    for line in t.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            CUSTOM_KINDS
                .iter()
                .any(|k| line.contains(&format!("kind {k} "))),
            "{}: {line}",
            path.display()
        );
    }
    for d in docs {
        let k = s(&d["kind"]);
        if !CUSTOM_KINDS.contains(&k) {
            assert!(
                !t.contains(&format!("kind {k} ")),
                "{}: {k} was not validated:\n{t}",
                path.display()
            );
        }
    }
}

#[test]
fn kubernetes_validate_refuses_a_broken_manifest() {
    // The tool must be able to fail, or the check above proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    fs::write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports:\n    - port: grpc\n      apPProtocol: grpc\n",
    )
    .unwrap();
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", KUBE_VERSION])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "accepted:\n{}", text(&out));
}

/// What must hold for every values file.
fn check_invariants(file: &str, docs: &[Value]) {
    let d = deployment(docs);
    let pod = &d["spec"]["template"]["spec"];
    let c = container(docs);
    let ctx = format!("ci/{file}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{ctx}");
    assert_eq!(pod["enableServiceLinks"], false, "{ctx}");
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{ctx}");
    assert_eq!(psc["runAsUser"], 65532, "{ctx}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{ctx}");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{ctx}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{ctx}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{ctx}");
    if let Some(sa) = kind(docs, "ServiceAccount").first() {
        assert_eq!(sa["automountServiceAccountToken"], false, "{ctx}");
    }

    // Probes: plain HTTP on the http port.
    let ports: BTreeMap<&str, i64> = arr(&c["ports"])
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_i64().unwrap()))
        .collect();
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{ctx}: {probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{ctx}: {probe}");
    }
    let args = args_of(c);
    let port_of = |addr: &str| addr.rsplit(':').next().unwrap().parse::<i64>().unwrap();
    assert_eq!(
        Some(&port_of(flag(&args, "--grpc-addr").unwrap())),
        ports.get("grpc")
    );
    assert_eq!(
        Some(&port_of(flag(&args, "--http-addr").unwrap())),
        ports.get("http")
    );

    // Every Service port lands on a container port; grpc is appProtocol grpc.
    let svc = one(docs, "Service");
    for p in arr(&svc["spec"]["ports"]) {
        let target = s(&p["targetPort"]);
        assert!(
            ports.contains_key(target),
            "{ctx}: Service targetPort {target}"
        );
    }
    let grpc = arr(&svc["spec"]["ports"])
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(grpc["appProtocol"], "grpc", "{ctx}");

    // Graceful rollout: the kubelet waits longer than sluice needs.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    let delay: i64 = flag(&args, "--shutdown-delay").unwrap().parse().unwrap();
    let drain: i64 = flag(&args, "--drain-timeout").unwrap().parse().unwrap();
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    // sluice's own bound: delay + drain + 10 s (usage flush and key-store
    // close, 5 s each).
    assert!(
        grace >= pre_stop + delay + drain + 10,
        "{ctx}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} + --shutdown-delay {delay} + --drain-timeout {drain} + 10"
    );

    // No subPath mounts: they would never see rotated certificates or rules.
    for m in arr(&c["volumeMounts"]) {
        assert!(m.get("subPath").is_none(), "{ctx}: subPath in {m}");
    }

    // The helm test Pod runs `sluice probe` from the same image.
    let t = test_pod(docs);
    let tc = &t["spec"]["containers"][0];
    assert_eq!(tc["image"], c["image"], "{ctx}");
    assert_eq!(args_of(tc)[0], "probe", "{ctx}");
    assert_eq!(t["spec"]["automountServiceAccountToken"], false, "{ctx}");
}

/// The custom resources, which kubernetes-validate cannot check.
fn check_custom_resources(file: &str, docs: &[Value]) {
    let svc = one(docs, "Service");
    let svc_ports: Vec<&str> = arr(&svc["spec"]["ports"])
        .iter()
        .map(|p| s(&p["name"]))
        .collect();
    for sm in kind(docs, "ServiceMonitor") {
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        // It selects the chart's Service by labels the Service has.
        let want = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        for (k, v) in want {
            assert_eq!(
                &svc["metadata"]["labels"][k], v,
                "ci/{file}: ServiceMonitor selector {k}"
            );
        }
        for e in arr(&sm["spec"]["endpoints"]) {
            assert!(svc_ports.contains(&s(&e["port"])), "ci/{file}: {e}");
            assert_eq!(e["path"], "/metrics");
        }
    }
    for rule in kind(docs, "PrometheusRule") {
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
        promtool_check(file, rule);
    }
    for cert in kind(docs, "Certificate") {
        assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
        let secret = s(&cert["spec"]["secretName"]);
        let vols = arr(&deployment(docs)["spec"]["template"]["spec"]["volumes"]);
        assert!(
            vols.iter().any(|v| v["secret"]["secretName"] == secret),
            "ci/{file}: the Certificate's Secret {secret} is not mounted"
        );
        let names: Vec<&str> = arr(&cert["spec"]["dnsNames"]).iter().map(s).collect();
        let svc_name = s(&svc["metadata"]["name"]);
        assert!(
            names.contains(&format!("{svc_name}.edge.svc").as_str()),
            "ci/{file}: {names:?}"
        );
        assert!(!s(&cert["spec"]["issuerRef"]["name"]).is_empty());
    }
}

/// `promtool check rules` on a PrometheusRule's groups.
fn promtool_check(file: &str, rule: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    fs::write(
        &path,
        serde_yaml_ng::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ci/{file}: promtool:\n{}", text(&out));
}

#[test]
fn bad_values_are_refused_with_the_reason() {
    let mut n = 0;
    for e in fs::read_dir(format!("{CHART}/ci/bad")).unwrap() {
        let path = e.unwrap().path();
        let body = fs::read_to_string(&path).unwrap();
        let expect = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()));
        let p = path.to_str().unwrap();
        let err = render(&[p], &[]).expect_err(p);
        assert!(err.contains(expect), "{p}: expected {expect:?} in:\n{err}");
        // Schema errors fail lint; a template's `fail` (a rule the schema
        // cannot express) is only logged by lint, and fails install.
        let lint = helm(&["lint", "--strict", CHART, "-f", p]);
        assert!(
            !lint.status.success() || text(&lint).contains(expect),
            "{p}: helm lint passed without a word:\n{}",
            text(&lint)
        );
        n += 1;
    }
    assert!(n >= 10, "only {n} bad values files");
}

/// The rules of deploy/prometheus/, which the chart's PrometheusRule carries.
const RULES: &str = "deploy/prometheus/sluice-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/sluice-rules.test.yaml";
/// The chart's copy (helm reads no file outside the chart).
const CHART_RULES: &str = "helm/sluice/files/sluice-rules.yaml";

#[test]
fn prometheus_rule_is_the_deploy_rules_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plain = fs::read_to_string(root.join(RULES)).unwrap();
    assert_eq!(
        fs::read_to_string(root.join(CHART_RULES)).unwrap(),
        plain,
        "{CHART_RULES} and {RULES} must be identical: copy the one you changed over the other"
    );
    let want: Value = serde_yaml_ng::from_str(&plain).unwrap();
    let docs = render(&[&ci("everything-values.yaml")], &[]).unwrap();
    let rule = one(&docs, "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"], want["groups"],
        "the PrometheusRule's groups are not those of {RULES}"
    );
    assert!(!arr(&want["groups"]).is_empty());
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");

    // promtool checks the rendered groups, and runs the rules file's own
    // unit tests against them.
    promtool_check("everything-values.yaml", rule);
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("sluice-rules.yaml"),
        serde_yaml_ng::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    fs::copy(root.join(RULE_TESTS), dir.path().join("tests.yaml")).unwrap();
    let out = Command::new(tool("promtool"))
        .args(["test", "rules", "tests.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules on the rendered groups:\n{}",
        text(&out)
    );
}

// === the decisive check ===

/// Secrets (and ConfigMaps) the cluster would hold: name -> key -> bytes.
type Objects = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// sluice started as the rendered Deployment's container.
struct Pod {
    child: Child,
    /// Holds the root and the log; removed on drop.
    _dir: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    /// Container port numbers by name.
    ports: BTreeMap<String, u16>,
    uid: Option<u32>,
    mounts: Vec<String>,
    /// How the test reaches the `grpc` port: plaintext, or TLS (and mTLS)
    /// as the chart's `tls` values set it up.
    grpc_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Free ports for the chart's three listeners, as `--set` pairs.
fn port_sets() -> Vec<(&'static str, String)> {
    vec![
        ("--set", format!("ports.grpc={}", free_port())),
        ("--set", format!("ports.http={}", free_port())),
        ("--set", format!("ports.admin={}", free_port())),
    ]
}

/// The kubelet's atomic-writer layout: files in a timestamped directory,
/// `..data` pointing at it, and each file a symlink through `..data`.
fn write_volume(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    fs::create_dir_all(dir).unwrap();
    let stamp = "..2026_01_01_00_00_00.000000001";
    fs::create_dir(dir.join(stamp)).unwrap();
    for (name, bytes) in files {
        fs::write(dir.join(stamp).join(name), bytes).unwrap();
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(stamp, dir.join("..data")).unwrap();
}

/// The files a configMap/secret volume shows: every key, or the `items`.
fn volume_files(
    source: &Value,
    data: &BTreeMap<String, Vec<u8>>,
    what: &str,
) -> BTreeMap<String, Vec<u8>> {
    match source["items"].as_array() {
        None => data.clone(),
        Some(items) => items
            .iter()
            .map(|i| {
                let key = s(&i["key"]);
                let bytes = data
                    .get(key)
                    .unwrap_or_else(|| panic!("{what} has no key {key}"))
                    .clone();
                (s(&i["path"]).to_string(), bytes)
            })
            .collect(),
    }
}

/// Rendered ConfigMaps and Secrets, plus the test's own.
fn objects(docs: &[Value], kind_name: &str, extra: &Objects) -> Objects {
    let mut out = extra.clone();
    for d in kind(docs, kind_name) {
        let mut files = BTreeMap::new();
        if let Some(m) = d["data"].as_object() {
            for (k, v) in m {
                let bytes = if kind_name == "Secret" {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(s(v))
                        .unwrap()
                } else {
                    s(v).as_bytes().to_vec()
                };
                files.insert(k.clone(), bytes);
            }
        }
        out.insert(s(&d["metadata"]["name"]).to_string(), files);
    }
    out
}

/// `value` with every container path under a mount moved under `root`.
fn map_paths(value: &str, root: &Path, mounts: &[String]) -> String {
    let mut out = String::new();
    let mut i = 0;
    let bytes = value.as_bytes();
    'outer: while i < value.len() {
        let boundary = i == 0 || matches!(bytes[i - 1], b'=' | b'/' | b':' | b',' | b'&' | b'?');
        if boundary {
            for m in mounts {
                let rest = &value[i..];
                if rest.starts_with(m.as_str())
                    && rest[m.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| c == '/' || c == '&' || c == ',')
                {
                    out.push_str(&root.display().to_string());
                    out.push_str(m);
                    i += m.len();
                    continue 'outer;
                }
            }
        }
        let c = value[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Pod {
    /// Lays out the rendered Deployment's volumes and starts its container.
    fn start(docs: &[Value], secrets: &Objects, config_maps: &Objects) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let log = dir.path().join("sluice.log");
        let pod = &deployment(docs)["spec"]["template"]["spec"];
        let c = container(docs);
        let secrets = objects(docs, "Secret", secrets);
        let config_maps = objects(docs, "ConfigMap", config_maps);
        let uid = running_as_root()
            .then(|| u32::try_from(c["securityContext"]["runAsUser"].as_i64().unwrap()).unwrap());
        let gid = pod["securityContext"]["fsGroup"]
            .as_i64()
            .map(|g| u32::try_from(g).unwrap());

        let volumes: BTreeMap<&str, &Value> = arr(&pod["volumes"])
            .iter()
            .map(|v| (s(&v["name"]), v))
            .collect();
        let mut mounts = Vec::new();
        for m in arr(&c["volumeMounts"]) {
            let path = s(&m["mountPath"]);
            let host = root.join(path.trim_start_matches('/'));
            let v = volumes
                .get(s(&m["name"]))
                .unwrap_or_else(|| panic!("mount {m} has no volume"));
            if let Some(cm) = v.get("configMap") {
                let name = s(&cm["name"]);
                let data = config_maps
                    .get(name)
                    .unwrap_or_else(|| panic!("no ConfigMap {name}"));
                write_volume(&host, &volume_files(cm, data, name));
            } else if let Some(sec) = v.get("secret") {
                let name = s(&sec["secretName"]);
                let data = secrets
                    .get(name)
                    .unwrap_or_else(|| panic!("the test gave no Secret {name}"));
                write_volume(&host, &volume_files(sec, data, name));
            } else {
                // emptyDir, or a persistent volume: a fresh writable directory.
                fs::create_dir_all(&host).unwrap();
                if let Some(u) = uid {
                    std::os::unix::fs::chown(&host, Some(u), gid).unwrap();
                }
            }
            mounts.push(path.to_string());
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        // Everything else in the root is root's and read-only to the pod.
        for entry in walk(dir.path()) {
            let meta = fs::symlink_metadata(&entry).unwrap();
            if meta.is_dir() && !meta.file_type().is_symlink() {
                let mode = meta.permissions().mode();
                fs::set_permissions(&entry, fs::Permissions::from_mode(mode | 0o755)).unwrap();
            }
        }

        let args: Vec<String> = args_of(c)
            .iter()
            .map(|a| map_paths(a, &root, &mounts))
            .collect();
        let mut env = BTreeMap::new();
        for e in arr(&c["env"]) {
            let name = s(&e["name"]).to_string();
            if let Some(v) = e.get("value") {
                env.insert(name, map_paths(s(v), &root, &mounts));
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                let value = secrets
                    .get(s(&r["name"]))
                    .and_then(|sec| sec.get(s(&r["key"])));
                match value {
                    Some(b) => {
                        let v = String::from_utf8(b.clone()).unwrap();
                        env.insert(name, map_paths(&v, &root, &mounts));
                    }
                    None if r["optional"] == true => {}
                    None => panic!("env {name}: no Secret key {r} (the pod would not start)"),
                }
            } else {
                panic!("env {name}: unsupported source {e}");
            }
        }
        let ports = arr(&c["ports"])
            .iter()
            .map(|p| {
                let n = u16::try_from(p["containerPort"].as_i64().unwrap()).unwrap();
                (s(&p["name"]).to_string(), n)
            })
            .collect();

        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env_clear()
            .envs(&env)
            .current_dir(root.join("var/lib/sluice"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        fs::create_dir_all(root.join("var/lib/sluice")).unwrap();
        if let Some(u) = uid {
            use std::os::unix::process::CommandExt as _;
            cmd.uid(u).gid(gid.unwrap_or(u));
        }
        let child = cmd.spawn().unwrap();
        Pod {
            child,
            _dir: dir,
            root,
            log,
            ports,
            uid,
            mounts,
            grpc_tls: None,
        }
    }

    fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\nsluice's log:\n{}", self.log());
    }

    /// GET `path` on the named container port; the status code.
    async fn get(&self, port: &str, path: &str) -> Result<u16, String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port(port));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        client
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{url}: {e}"))
    }

    /// Waits (60 s at most) for the startup probe to pass.
    async fn wait_started(&mut self, probe: &Value) {
        let path = s(&probe["httpGet"]["path"]);
        let port = s(&probe["httpGet"]["port"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.fail(&format!(
                    "sluice exited ({status}) before its startup probe passed"
                ));
            }
            if self.get(port, path).await == Ok(200) {
                return;
            }
            if Instant::now() > deadline {
                self.fail("the startup probe did not pass within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The container's probes, as the kubelet would run them.
    async fn check_probes(&self, c: &Value) -> Result<(), String> {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let g = &c[probe]["httpGet"];
            let status = self.get(s(&g["port"]), s(&g["path"])).await?;
            if status != 200 {
                return Err(format!("{probe} {}: HTTP {status}", s(&g["path"])));
            }
        }
        Ok(())
    }

    /// A channel to `addr`: over TLS with the test's client settings when
    /// `tls` (the `grpc` port of a TLS rendering), else plaintext.
    async fn channel(&self, addr: &str, tls: bool) -> Result<tonic::transport::Channel, String> {
        let tls = self.grpc_tls.as_ref().filter(|_| tls);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Channel::from_shared(format!("{scheme}://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5));
        if let Some(t) = tls {
            endpoint = endpoint.tls_config(t.clone()).unwrap();
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("gRPC {scheme}://{addr}: {e}"))
    }

    /// The gRPC port (over TLS when the rendering has it).
    async fn grpc(&self) -> tonic::transport::Channel {
        let addr = format!("127.0.0.1:{}", self.port("grpc"));
        self.channel(&addr, true)
            .await
            .unwrap_or_else(|e| self.fail(&e))
    }

    async fn health(&self, addr: &str, tls: bool) -> ServingStatus {
        let channel = self
            .channel(addr, tls)
            .await
            .unwrap_or_else(|e| self.fail(&e));
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| self.fail(&format!("health {addr}: {e}")))
            .into_inner()
            .status()
    }
}

/// Every path under `dir`, depth first (symlinks not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The `helm test` Pod's command, run the same way: its `--addr` (the
/// Service's DNS name and port) resolved through the rendered Service to
/// the container port it targets.
fn run_test_pod(docs: &[Value], pod: &Pod, secrets: &Objects) -> (bool, String) {
    let t = test_pod(docs);
    let tc = &t["spec"]["containers"][0];
    let args = args_of(tc);
    // The test Pod's own Secret volumes (its client certificate), laid
    // out beside the Deployment's under the same root.
    let secrets = objects(docs, "Secret", secrets);
    let volumes: BTreeMap<&str, &Value> = arr(&t["spec"]["volumes"])
        .iter()
        .map(|v| (s(&v["name"]), v))
        .collect();
    let mut mounts = pod.mounts.clone();
    for m in arr(&tc["volumeMounts"]) {
        let path = s(&m["mountPath"]);
        let v = volumes[s(&m["name"])];
        let sec = v
            .get("secret")
            .unwrap_or_else(|| panic!("test Pod volume {v}: only Secrets are laid out"));
        let name = s(&sec["secretName"]);
        let data = secrets
            .get(name)
            .unwrap_or_else(|| panic!("the test gave no Secret {name}"));
        let host = pod.root.join(path.trim_start_matches('/'));
        if !host.exists() {
            write_volume(&host, &volume_files(sec, data, name));
        }
        mounts.push(path.to_string());
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let addr = flag(&args, "--addr").expect("the test Pod passes --addr");
    let (scheme, rest) = addr.split_once("://").unwrap();
    let (host, port) = rest.rsplit_once(':').unwrap();
    let svc = one(docs, "Service");
    let svc_name = s(&svc["metadata"]["name"]);
    assert_eq!(
        host,
        format!("{svc_name}.edge.svc"),
        "the test Pod must address the chart's Service"
    );
    let sp = arr(&svc["spec"]["ports"])
        .iter()
        .find(|p| p["port"].as_i64() == port.parse().ok())
        .unwrap_or_else(|| panic!("the Service has no port {port}"));
    let target = pod.port(s(&sp["targetPort"]));
    let mapped: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("--addr=") {
                format!("--addr={scheme}://127.0.0.1:{target}")
            } else {
                map_paths(a, &pod.root, &mounts)
            }
        })
        .collect();
    let mut cmd = Command::new(BIN);
    cmd.args(&mapped).env_clear();
    if let Some(u) = pod.uid {
        use std::os::unix::process::CommandExt as _;
        cmd.uid(u).gid(u);
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(30)).unwrap();
    (out.status.success(), text(&out))
}

/// The decisive check for one rendering: start, probe, decide, helm test,
/// then SIGTERM within the grace period.
async fn run_as_rendered(
    docs: &[Value],
    secrets: &Objects,
    grpc_tls: Option<tonic::transport::ClientTlsConfig>,
) -> Pod {
    let c = container(docs);
    let mut pod = Pod::start(docs, secrets, &Objects::new());
    pod.grpc_tls = grpc_tls;
    pod.wait_started(&c["startupProbe"]).await;
    if let Err(e) = pod.check_probes(c).await {
        pod.fail(&e);
    }
    let grpc = format!("127.0.0.1:{}", pod.port("grpc"));
    assert_eq!(pod.health(&grpc, true).await, ServingStatus::Serving);

    // A decision on the rules the ConfigMap carries (the test's domain).
    let t = args_of(&test_pod(docs)["spec"]["containers"][0]);
    if let Some(domain) = flag(&t, "--domain") {
        let d = flag(&t, "--descriptor").unwrap();
        let entries: Vec<(&str, &str)> = d.split(',').map(|e| e.split_once('=').unwrap()).collect();
        let channel = pod.grpc().await;
        let mut client = sluice::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::new(channel);
        let r = call(&mut client, req(domain, vec![desc(&entries)])).await;
        assert_eq!(r.overall_code, crate::support::OK, "{r:?}");
        assert!(
            r.statuses[0].current_limit.is_some(),
            "the chart's rules did not apply: {r:?}\n{}",
            pod.log()
        );
    }

    // The admin listener where the args put it.
    let args = args_of(c);
    if let Some(a) = flag(&args, "--admin-grpc-addr").filter(|a| !a.is_empty()) {
        let port = a.rsplit(':').next().unwrap();
        let admin = format!("127.0.0.1:{port}");
        // The chart keeps the admin listener on loopback, plaintext.
        assert_eq!(pod.health(&admin, false).await, ServingStatus::Serving);
    }

    let (ok, out) = run_test_pod(docs, &pod, secrets);
    if !ok {
        pod.fail(&format!("the helm test Pod's command failed:\n{out}"));
    }
    assert!(out.contains("health SERVING"), "{out}");
    pod
}

/// Graceful rollout as the chart sets it up: on SIGTERM readiness fails at
/// once (endpoints and Envoy move away) while decisions are still answered
/// for the `--shutdown-delay`; the process is gone within the pod's
/// terminationGracePeriodSeconds.
async fn stop_within_grace(docs: &[Value], mut pod: Pod) {
    let c = container(docs);
    let grace = deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let args = args_of(c);
    let delay: u64 = flag(&args, "--shutdown-delay").unwrap().parse().unwrap();
    let readiness = &c["readinessProbe"]["httpGet"];
    let channel = pod.grpc().await;
    let mut client = sluice::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::new(channel);
    let started = Instant::now();
    let pid = pod.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut not_ready = false;
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(delay.saturating_sub(1)) {
        if pod.get(s(&readiness["port"]), s(&readiness["path"])).await == Ok(503) {
            not_ready = true;
        }
        let r = client
            .should_rate_limit(req("probe", vec![desc(&[("k", "v")])]))
            .await;
        if r.is_ok() {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if delay > 1 {
        assert!(
            not_ready,
            "readiness did not fail during the shutdown delay\n{}",
            pod.log()
        );
        assert!(
            answered > 0,
            "no decision during the shutdown delay\n{}",
            pod.log()
        );
    }
    let deadline = started + Duration::from_secs(grace);
    loop {
        if let Some(status) = pod.child.try_wait().unwrap() {
            assert!(status.success(), "sluice exited {status}\n{}", pod.log());
            return;
        }
        if Instant::now() > deadline {
            pod.fail(&format!(
                "still running {grace} s after SIGTERM (the kubelet would kill it)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.as_bytes().to_vec()))
        .collect()
}

const KEY_SECRET: &str = "chart-test-key-secret-0123456789abcdef";
const JWT_SECRET: &str = "chart-test-jwt-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn default_values_run_as_rendered() {
    let docs = render(&[&ci("default-values.yaml")], &port_sets()).unwrap();
    let pod = run_as_rendered(&docs, &Objects::new(), None).await;
    // SQLite and its generated secrets live in the data volume, nowhere else.
    let data = pod.root.join("var/lib/sluice");
    for f in ["sluice.db", "key-secret", "jwt-secret"] {
        assert!(
            data.join(f).exists(),
            "{f} not in the data volume\n{}",
            pod.log()
        );
    }

    // The harness can fail: a readiness path the server does not have.
    let wrong = render(
        &[&ci("default-values.yaml")],
        &[("--set", "probes.readiness.path=/ready".to_string())],
    )
    .unwrap();
    assert!(pod.check_probes(container(&wrong)).await.is_err());
    stop_within_grace(&docs, pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cluster_and_postgres_values_run_as_rendered() {
    let cluster = RedisCluster::shared();
    let db = TestDb::new(Kind::Postgres).await;
    let nodes: Vec<String> = cluster.masters().iter().map(ToString::to_string).collect();
    let mut sets = port_sets();
    sets.push(("--set-json", format!("redis.nodes={}", json!(nodes))));
    // The test cluster has no password (it is shared by the whole suite);
    // the password path is the standalone test's.
    sets.push(("--set", "redis.existingSecret=".to_string()));
    sets.push(("--set", "replicaCount=1".to_string()));
    let docs = render(&[&ci("redis-cluster-postgres-values.yaml")], &sets).unwrap();
    let args = args_of(container(&docs));
    assert!(
        flag(&args, "--redis-url")
            .unwrap()
            .starts_with("redis-cluster://")
    );
    let mut secrets = Objects::new();
    secrets.insert(
        "sluice-database".into(),
        secret(&[("database-url", &db.url)]),
    );
    secrets.insert(
        "sluice-secrets".into(),
        secret(&[("key-secret", KEY_SECRET), ("jwt-secret", JWT_SECRET)]),
    );
    let pod = run_as_rendered(&docs, &secrets, None).await;
    let log = pod.log();
    assert!(log.contains("counters in Redis"), "{log}");
    assert!(log.contains("key store ready"), "{log}");
    assert!(!log.contains("sqlite"), "{log}");
    stop_within_grace(&docs, pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_redis_password_comes_from_the_secret() {
    // Its own server; the password is set once it answers (the fixture's
    // readiness PING has none).
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "requirepass", "chart-redis-pw"]);
    let db = TestDb::new(Kind::Postgres).await;
    let mut sets = port_sets();
    sets.push(("--set", "redis.mode=standalone".to_string()));
    sets.push((
        "--set-json",
        format!("redis.nodes={}", json!([redis.addr().to_string()])),
    ));
    sets.push(("--set", "replicaCount=1".to_string()));
    let docs = render(&[&ci("redis-cluster-postgres-values.yaml")], &sets).unwrap();
    let mut secrets = Objects::new();
    secrets.insert(
        "sluice-redis".into(),
        secret(&[("redis-password", "chart-redis-pw")]),
    );
    secrets.insert(
        "sluice-database".into(),
        secret(&[("database-url", &db.url)]),
    );
    secrets.insert(
        "sluice-secrets".into(),
        secret(&[("key-secret", KEY_SECRET)]),
    );
    let pod = run_as_rendered(&docs, &secrets, None).await;
    assert!(pod.log().contains("counters in Redis"), "{}", pod.log());
    stop_within_grace(&docs, pod).await;
}

#[test]
fn paths_map_onto_the_root_only_at_mount_boundaries() {
    let mounts = vec![
        "/etc/sluice/rules".to_string(),
        "/var/lib/sluice".to_string(),
    ];
    let root = Path::new("/r");
    assert_eq!(
        map_paths("--config=/etc/sluice/rules", root, &mounts),
        "--config=/r/etc/sluice/rules"
    );
    assert_eq!(
        map_paths("sqlite:///var/lib/sluice/sluice.db", root, &mounts),
        "sqlite:///r/var/lib/sluice/sluice.db"
    );
    assert_eq!(
        map_paths("--x=/var/lib/sluicex", root, &mounts),
        "--x=/var/lib/sluicex"
    );
}

/// The TLS + mTLS values, run as rendered: sluice's gRPC port serves the
/// Secret's certificate and requires client certificates from the client
/// CA's Secret; Redis is a real `redis-server --tls-port` with its own
/// private CA that requires sluice's client certificate
/// (`redis.tls.caSecret`, `redis.tls.clientCertSecret`); PostgreSQL
/// (`ssl = on`, TLS connections only) is verified with `verify-full`
/// against `database.caSecret` as the URL in the Secret says; the
/// `helm test` command probes over mTLS with its own client certificate.
#[tokio::test(flavor = "multi_thread")]
async fn tls_and_mtls_values_run_as_rendered() {
    use crate::support::certs::{Ca, VALID};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let dir = tempfile::tempdir().unwrap();
    let sluice_ca = Ca::new("sluice-ca");
    let redis_ca = Ca::new("redis-ca");
    let pg_ca = Ca::new("postgres-ca");
    let redis = crate::store_tls::TlsRedis::start(dir.path(), &redis_ca, &redis_ca.server(), true);
    let mut pg = crate::support::pg::PgInstance::init();
    let pg_server = pg_ca.server();
    pg.enable_tls(&pg_server.cert, &pg_server.key, None);
    pg.start();

    let mut sets = port_sets();
    sets.push(("--set", "redis.mode=standalone".to_string()));
    sets.push((
        "--set-json",
        format!(
            "redis.nodes={}",
            json!([format!("127.0.0.1:{}", redis.tls_port)])
        ),
    ));
    // No password on the test's Redis; its client certificate is the check.
    sets.push(("--set", "redis.existingSecret=".to_string()));
    let docs = render(&[&ci("tls-mtls-values.yaml")], &sets).unwrap();
    let args = args_of(container(&docs));
    assert_eq!(flag(&args, "--redis-url"), Some(redis.url().as_str()));
    for f in [
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--redis-tls-ca",
        "--redis-tls-cert",
        "--redis-tls-key",
    ] {
        assert!(flag(&args, f).is_some(), "{f} not in {args:?}");
    }

    let server = sluice_ca.server();
    let redis_client = redis_ca.client("sluice", VALID);
    let probe_client = sluice_ca.client("helm-test", VALID);
    let gateway = sluice_ca.client("gateway", VALID);
    let mut secrets = Objects::new();
    secrets.insert(
        "sluice-server-tls".into(),
        secret(&[
            ("tls.crt", &server.cert),
            ("tls.key", &server.key),
            ("ca.crt", &sluice_ca.pem),
        ]),
    );
    secrets.insert(
        "sluice-client-ca".into(),
        secret(&[("ca.crt", &sluice_ca.pem)]),
    );
    secrets.insert("redis-ca".into(), secret(&[("ca.crt", &redis_ca.pem)]));
    secrets.insert(
        "sluice-redis-client-tls".into(),
        secret(&[
            ("tls.crt", &redis_client.cert),
            ("tls.key", &redis_client.key),
        ]),
    );
    secrets.insert("postgres-ca".into(), secret(&[("ca.crt", &pg_ca.pem)]));
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert=/etc/sluice/database-ca/ca.crt",
        pg.url()
    );
    secrets.insert("sluice-database".into(), secret(&[("database-url", &url)]));
    secrets.insert(
        "sluice-secrets".into(),
        secret(&[("key-secret", KEY_SECRET)]),
    );
    secrets.insert(
        "sluice-test-client-tls".into(),
        secret(&[
            ("tls.crt", &probe_client.cert),
            ("tls.key", &probe_client.key),
            ("ca.crt", &sluice_ca.pem),
        ]),
    );

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&sluice_ca.pem))
        .domain_name(crate::support::certs::SERVER_NAME)
        .identity(Identity::from_pem(&gateway.cert, &gateway.key));
    let pod = run_as_rendered(&docs, &secrets, Some(tls)).await;
    let log = pod.log();
    assert!(log.contains("counters in Redis"), "{log}");
    assert!(log.contains("key store ready"), "{log}");
    assert!(
        !redis.keys().trim().is_empty(),
        "the decision was counted in the TLS Redis\n{log}"
    );

    // The grpc port refuses plaintext, and TLS without a client certificate.
    let grpc = format!("127.0.0.1:{}", pod.port("grpc"));
    let plain = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(c) => HealthClient::new(c)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "plaintext answered on a TLS port");
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&sluice_ca.pem))
        .domain_name(crate::support::certs::SERVER_NAME);
    let ep = tonic::transport::Channel::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(anonymous)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let refused = match ep.connect().await {
        Err(_) => true,
        Ok(c) => HealthClient::new(c)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "no client certificate, yet answered");
    stop_within_grace(&docs, pod).await;
}
