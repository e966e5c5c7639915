//! OpenTelemetry traces, checked against a real OTLP receiver inside the
//! test (support/otlp.rs) and a real Envoy exporting its own spans to the
//! same receiver: one trace across Envoy and sluice; B3 from grpcurl
//! continued; an unsampled parent exports nothing; a collector that hangs
//! leaves decisions alone while the bounded queue drops and counts; the
//! Redis call and a key lookup that misses the cache are child spans of
//! the SERVER span (real Redis and SQLite), with their errors on them.

use std::process::Command;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;

use crate::envoy::{get, start_envoy_with};
use crate::support::otlp::{CLIENT, Receiver, RecvSpan, SERVER};
use crate::support::{Opts, Sluice, call, desc, req, tool};

const RLS: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

const CONFIG: &str = "domain: t\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1000000}\n  - key: one\n    rate_limit: {unit: minute, requests_per_unit: 1, name: just_one}\n";

fn sluice_spans(spans: &[RecvSpan]) -> Vec<&RecvSpan> {
    spans
        .iter()
        .filter(|s| s.service == "sluice" && s.kind == SERVER)
        .collect()
}

/// Starts sluice exporting to `endpoint` with `protocol`, flushing fast.
fn traced(config: &str, endpoint: &str, protocol: &str, args: &[&str]) -> Sluice {
    let mut all = vec!["--otel-endpoint", endpoint];
    all.extend_from_slice(args);
    Sluice::start_with(
        config,
        Opts {
            args: &all,
            env: &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("POD_NAME", "sluice-test-0"),
            ],
            ..Opts::default()
        },
    )
}

async fn call_with(
    s: &Sluice,
    headers: &[(&'static str, String)],
    r: sluice::grpc::pb::envoy::service::ratelimit::v3::RateLimitRequest,
) -> i32 {
    let mut client = s.client().await;
    let mut request = tonic::Request::new(r);
    for (k, v) in headers {
        request
            .metadata_mut()
            .insert(*k, MetadataValue::try_from(v.as_str()).unwrap());
    }
    client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner()
        .overall_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_envoy_and_sluice() {
    crate::support::avoid_minute_boundary(20).await;
    let receiver = Receiver::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let edge = std::fs::read_to_string(root.join("examples/config/edge.yaml")).unwrap();
    let sluice = traced(&edge, &receiver.grpc_url(), "grpc", &[]);
    let envoy = start_envoy_with(
        "examples/envoy/envoy-tracing.yaml",
        sluice.config_dir(),
        &[sluice.grpc_addr.port()],
        &[(4317, receiver.grpc_addr.port())],
    )
    .await;

    assert_eq!(get(&envoy, "/limited", &[]).await.status(), 200);
    let spans = receiver
        .wait_for(
            Duration::from_secs(20),
            "sluice span under an Envoy client span",
            |spans| {
                sluice_spans(spans).iter().any(|s| {
                    spans
                        .iter()
                        .any(|p| p.service == "envoy-front" && p.span_id == s.parent_span_id)
                })
            },
        )
        .await;
    let server = sluice_spans(&spans)[0].clone();
    let parent = spans
        .iter()
        .find(|p| p.span_id == server.parent_span_id)
        .unwrap();
    // Envoy's span for its ShouldRateLimit call: a CLIENT span of the same
    // trace, itself under Envoy's SERVER span for the request.
    assert_eq!(parent.kind, CLIENT, "{parent:#?}");
    assert_eq!(parent.trace_id, server.trace_id);
    let ingress = spans
        .iter()
        .find(|p| p.span_id == parent.parent_span_id)
        .unwrap_or_else(|| panic!("no Envoy span above {parent:#?} in {spans:#?}"));
    assert_eq!(ingress.service, "envoy-front");
    assert_eq!(ingress.trace_id, server.trace_id);

    // The SERVER span, after the RPC conventions, with bounded attributes.
    assert_eq!(server.name, RLS);
    assert_eq!(server.attr("rpc.system.name"), Some("grpc"));
    assert_eq!(server.attr("rpc.method"), Some(RLS));
    assert_eq!(server.attr("rpc.response.status_code"), Some("OK"));
    assert_eq!(server.attr("sluice.domain"), Some("edge"));
    assert_eq!(server.attr("sluice.descriptors"), Some("1"));
    assert_eq!(server.attr("sluice.code"), Some("OK"));
    assert_eq!(server.attr("sluice.descriptor_entries"), None);
    assert!(
        !server.attrs.values().any(|v| v.contains("limited")),
        "a descriptor value leaked into {server:#?}"
    );
    assert_eq!(
        server.resource.get("service.version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        server
            .resource
            .get("service.instance.id")
            .map(String::as_str),
        Some("sluice-test-0")
    );
    assert_eq!(server.via, "grpc");

    // Over the limit: the code and the rule's name are on the span.
    for _ in 0..6 {
        get(&envoy, "/limited", &[]).await;
    }
    let spans = receiver
        .wait_for(Duration::from_secs(20), "an OVER_LIMIT span", |spans| {
            sluice_spans(spans)
                .iter()
                .any(|s| s.attr("sluice.code") == Some("OVER_LIMIT"))
        })
        .await;
    let over = sluice_spans(&spans)
        .into_iter()
        .find(|s| s.attr("sluice.code") == Some("OVER_LIMIT"))
        .unwrap()
        .clone();
    assert_eq!(over.attr("sluice.over_limit_rules"), Some("unnamed"));
    assert_eq!(over.attr("rpc.response.status_code"), Some("OK"));

    // Exemplars: the latency histogram points at sampled traces.
    let metrics = sluice.metrics().await;
    let exemplar = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_rpc_duration_seconds_bucket") && l.contains("# {trace_id=\"")
        })
        .unwrap_or_else(|| panic!("no exemplar in\n{metrics}"));
    let id = exemplar.split("trace_id=\"").nth(1).unwrap();
    let id = &id[..32];
    // The exemplar may be a later request's, whose span the batch exporter
    // sends a moment after: wait (bounded) for it rather than race it.
    let spans = receiver
        .wait_for(Duration::from_secs(20), "the exemplar's trace", |spans| {
            sluice_spans(spans).iter().any(|s| s.trace_id == id)
        })
        .await;
    assert!(
        sluice_spans(&spans).iter().any(|s| s.trace_id == id),
        "exemplar {id} is not a trace the receiver got"
    );
    let exported = metric(&metrics, "sluice_trace_spans_total{outcome=\"exported\"}");
    assert!(exported >= 1.0, "{metrics}");
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l[series.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn grpcurl(args: &[&str]) -> String {
    let out = Command::new(tool("grpcurl")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_from_grpcurl_is_continued_over_http_protobuf() {
    let receiver = Receiver::start().await;
    let sluice = traced(CONFIG, &receiver.http_url(), "http/protobuf", &[]);
    let addr = sluice.grpc_addr.to_string();
    let body = r#"{"domain":"t","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#;
    let single = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let multi = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    grpcurl(&[
        "-plaintext",
        "-H",
        &format!("b3: {}-{}-1", single.0, single.1),
        "-d",
        body,
        &addr,
        RLS,
    ]);
    grpcurl(&[
        "-plaintext",
        "-H",
        &format!("x-b3-traceid: {}", multi.0),
        "-H",
        &format!("x-b3-spanid: {}", multi.1),
        "-H",
        "x-b3-sampled: 1",
        "-d",
        body,
        &addr,
        RLS,
    ]);
    let spans = receiver
        .wait_for(Duration::from_secs(20), "both B3 traces", |spans| {
            [single, multi]
                .iter()
                .all(|(t, _)| sluice_spans(spans).iter().any(|s| s.trace_id == *t))
        })
        .await;
    for (trace, parent) in [single, multi] {
        let s = sluice_spans(&spans)
            .into_iter()
            .find(|s| s.trace_id == trace)
            .unwrap();
        assert_eq!(s.parent_span_id, parent, "{s:#?}");
        assert_eq!(s.via, "http");
        assert_eq!(s.attr("sluice.domain"), Some("t"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_parent_exports_nothing_and_logs_carry_ids() {
    let receiver = Receiver::start().await;
    // Sampling 0: new traces are never started, but a sampled parent is
    // always continued (parent-based).
    let sluice = Sluice::start_with(
        CONFIG,
        Opts {
            args: &[
                "--otel-endpoint",
                &receiver.grpc_url(),
                "--trace-sampling",
                "0",
                "--trace-descriptor-values",
                "--log-format",
                "json",
                "--log-level",
                "info,sluice=debug",
            ],
            env: &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
            ..Opts::default()
        },
    );
    let unsampled = "11111111111111111111111111111111";
    let sampled = "22222222222222222222222222222222";
    let r = req("t", vec![desc(&[("k", "secret-user")])]);
    assert_eq!(
        call_with(
            &sluice,
            &[("traceparent", format!("00-{unsampled}-1111111111111111-00"))],
            r.clone()
        )
        .await,
        crate::support::OK
    );
    // No parent at all, sampling 0: not exported either.
    assert_eq!(call_with(&sluice, &[], r.clone()).await, crate::support::OK);
    // An invalid request inside a sampled trace: logged (debug) with its ids.
    let mut client = sluice.client().await;
    let mut bad = tonic::Request::new(req("", vec![desc(&[("k", "v")])]));
    bad.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{sampled}-2222222222222222-01")).unwrap(),
    );
    assert_eq!(
        client.should_rate_limit(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        call_with(
            &sluice,
            &[("traceparent", format!("00-{sampled}-2222222222222222-01"))],
            r
        )
        .await,
        crate::support::OK
    );
    let spans = receiver
        .wait_for(Duration::from_secs(20), "the two sampled spans", |spans| {
            sluice_spans(spans)
                .iter()
                .filter(|s| s.trace_id == sampled)
                .count()
                == 2
        })
        .await;
    // The batch that carried the sampled spans went out after the others
    // ended: had they been exported, they would be here.
    assert_eq!(sluice_spans(&spans).len(), 2, "{spans:#?}");
    let failed = sluice_spans(&spans)
        .into_iter()
        .find(|s| s.attr("rpc.response.status_code") == Some("INVALID_ARGUMENT"))
        .unwrap()
        .clone();
    // INVALID_ARGUMENT is the caller's error, not the server's.
    assert_eq!(failed.status, 0);
    let ok = sluice_spans(&spans)
        .into_iter()
        .find(|s| s.attr("rpc.response.status_code") == Some("OK"))
        .unwrap()
        .clone();
    assert_eq!(ok.attr("sluice.descriptor_entries"), Some("k=secret-user"));

    let line = sluice.wait_log("invalid rate-limit request", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["trace_id"], sampled, "{line}");
    assert_eq!(v["span_id"], failed.span_id.as_str(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_collector_leaves_decisions_alone_and_drops_are_counted() {
    // A collector that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let sluice = Sluice::start_with(
        CONFIG,
        Opts {
            args: &["--otel-endpoint", &endpoint],
            env: &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
                ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
            ..Opts::default()
        },
    );
    let mut client = sluice.client().await;
    let started = Instant::now();
    for i in 0..300 {
        let r = call(&mut client, req("t", vec![desc(&[("k", "v")])])).await;
        assert_eq!(r.overall_code, crate::support::OK, "request {i}");
        if i % 50 == 0 {
            let m = sluice.metrics().await;
            assert!(metric(&m, "sluice_trace_queue_spans") <= 16.0, "{m}");
        }
    }
    let one = req("t", vec![desc(&[("one", "x")])]);
    assert_eq!(
        call(&mut client, one.clone()).await.overall_code,
        crate::support::OK
    );
    assert_eq!(
        call(&mut client, one).await.overall_code,
        crate::support::OVER
    );
    // Nothing waited for the collector: 300 calls, far under one export timeout each.
    assert!(started.elapsed() < Duration::from_secs(60));
    let m = sluice.metrics().await;
    assert!(
        metric(&m, "sluice_trace_spans_total{outcome=\"dropped\"}") > 0.0,
        "{m}"
    );
    assert!(metric(&m, "sluice_trace_queue_spans") <= 16.0, "{m}");
    // Exports that hung are given up at the timeout and counted.
    let counted = crate::support::eventually(Duration::from_secs(10), || async {
        metric(
            &sluice.metrics().await,
            "sluice_trace_spans_total{outcome=\"export_failed\"}",
        ) > 0.0
    })
    .await;
    assert!(counted, "{}", sluice.metrics().await);
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_build_and_process_are_metered() {
    let sluice = Sluice::start(CONFIG, &[]);
    let channel = sluice.admin_channel().await;
    let mut admin =
        sluice::grpc::pb::sluice::v1::admin_service_client::AdminServiceClient::new(channel);
    let err = admin
        .list_plans(sluice::grpc::pb::sluice::v1::ListPlansRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let m = sluice.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_admin_requests_total{method=\"sluice.v1.AdminService/ListPlans\",code=\"UNAUTHENTICATED\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "sluice_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(metric(&m, "process_resident_memory_bytes") > 0.0);
    assert!(metric(&m, "process_cpu_seconds_total") >= 0.0);
    assert!(metric(&m, "process_open_fds") > 0.0);
    // Tracing off: no span, nothing exported, the counters at zero.
    assert_eq!(
        metric(&m, "sluice_trace_spans_total{outcome=\"exported\"}"),
        0.0
    );
    assert!(!m.contains("# {trace_id="), "{m}");
}

/// The spans of `trace` sluice exported.
fn of_trace<'a>(spans: &'a [RecvSpan], trace: &str) -> Vec<&'a RecvSpan> {
    spans
        .iter()
        .filter(|s| s.service == "sluice" && s.trace_id == trace)
        .collect()
}

/// The children of `parent` named `name` in `spans`.
fn children<'a>(spans: &[&'a RecvSpan], parent: &RecvSpan, name: &str) -> Vec<&'a RecvSpan> {
    spans
        .iter()
        .copied()
        .filter(|s| s.parent_span_id == parent.span_id && s.name == name)
        .collect()
}

fn traceparent(n: u8) -> (String, (&'static str, String)) {
    let trace = format!("{n:02x}").repeat(16);
    let header = format!("00-{trace}-{}-01", "ab".repeat(8));
    (trace, ("traceparent", header))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_call_and_key_lookup_are_child_spans() {
    use sluice::grpc::pb::sluice::v1 as pb;
    use sluice::grpc::pb::sluice::v1::key_service_client::KeyServiceClient;

    use crate::keys::{Admin, KEY_SECRET, SECRET, create_key, create_plan, limit};
    use crate::support::db::{Kind, TestDb};
    use crate::support::redis::RedisServer;

    let receiver = Receiver::start().await;
    let mut redis = RedisServer::start();
    let db = TestDb::new(Kind::Sqlite).await;
    let redis_url = redis.url();
    let endpoint = receiver.grpc_url();
    let sluice = Sluice::start_with(
        CONFIG,
        Opts {
            args: &[
                "--otel-endpoint",
                &endpoint,
                "--redis-url",
                &redis_url,
                "--redis-timeout",
                "250",
                "--database-url",
                &db.url,
            ],
            env: &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("SLUICE_JWT_SECRET", SECRET),
                ("SLUICE_KEY_SECRET", KEY_SECRET),
            ],
            ..Opts::default()
        },
    );

    // ShouldRateLimit on Redis: one store span under the SERVER span.
    let (rls_trace, header) = traceparent(0x31);
    let two = req(
        "t",
        vec![desc(&[("k", "secret-a")]), desc(&[("k", "secret-b")])],
    );
    assert_eq!(call_with(&sluice, &[header], two).await, crate::support::OK);
    let spans = receiver
        .wait_for(Duration::from_secs(20), "the Redis span", |spans| {
            of_trace(spans, &rls_trace).len() >= 2
        })
        .await;
    let mine = of_trace(&spans, &rls_trace);
    let server = mine.iter().find(|s| s.kind == SERVER).unwrap();
    let store = children(&mine, server, "EVALSHA batch");
    assert_eq!(store.len(), 1, "{mine:#?}");
    let store = store[0];
    assert_eq!(store.kind, CLIENT);
    assert_eq!(store.attr("db.system.name"), Some("redis"));
    let node = format!("127.0.0.1:{}", redis.port());
    assert_eq!(
        store.attr("server.address"),
        Some(node.as_str()),
        "{store:#?}"
    );
    assert_eq!(store.attr("sluice.redis.nodes"), Some(node.as_str()));
    assert_eq!(store.attr("sluice.redis.checks"), Some("2"));
    assert_eq!(store.attr("sluice.redis.calls"), Some("1"));
    assert_eq!(store.attr("sluice.redis.batch_checks"), Some("2"));
    assert_eq!(store.status, 0);
    assert!(
        !store.attrs.values().any(|v| v.contains("secret-")),
        "a descriptor value leaked into {store:#?}"
    );

    // ValidateKey of a key not cached: a key-lookup span under the SERVER
    // span; asked again (cached), none.
    let mut a = Admin::new(&sluice, "all").await;
    create_plan(&mut a, "p", vec![limit(100, pb::Unit::Hour)]).await;
    let (_, secret) = create_key(&mut a, "p", &[]).await;
    let (_, uncached) = create_key(&mut a, "p", &[]).await;
    let mut keys = KeyServiceClient::new(sluice.channel().await);
    let validate = |n: u8| {
        let (trace, (k, v)) = traceparent(n);
        let mut r = tonic::Request::new(pb::ValidateKeyRequest {
            key: secret.clone(),
            ..pb::ValidateKeyRequest::default()
        });
        r.metadata_mut()
            .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
        (trace, r)
    };
    let (miss_trace, r) = validate(0x32);
    let code = keys.validate_key(r).await.unwrap().into_inner().code;
    assert_eq!(code, pb::ValidationCode::Valid as i32);
    let (hit_trace, r) = validate(0x33);
    let code = keys.validate_key(r).await.unwrap().into_inner().code;
    assert_eq!(code, pb::ValidationCode::Valid as i32);
    let spans = receiver
        .wait_for(
            Duration::from_secs(20),
            "both ValidateKey traces",
            |spans| {
                // Each: its SERVER span and the Redis span of its charge.
                of_trace(spans, &miss_trace).len() >= 3 && of_trace(spans, &hit_trace).len() >= 2
            },
        )
        .await;
    let miss = of_trace(&spans, &miss_trace);
    let server = miss.iter().find(|s| s.kind == SERVER).unwrap();
    let lookup = children(&miss, server, "SELECT key_secrets");
    assert_eq!(lookup.len(), 1, "{miss:#?}");
    let lookup = lookup[0];
    assert_eq!(lookup.kind, CLIENT);
    assert_eq!(lookup.attr("db.system.name"), Some("sqlite"));
    assert_eq!(lookup.attr("db.collection.name"), Some("key_secrets"));
    assert_eq!(lookup.attr("sluice.key_found"), Some("true"));
    assert_eq!(lookup.status, 0);
    assert!(
        !lookup.attrs.values().any(|v| v.contains(&secret[8..])),
        "the key leaked into {lookup:#?}"
    );
    // The charge on Redis is a sibling of the lookup, after it.
    assert_eq!(
        children(&miss, server, "EVALSHA batch").len(),
        1,
        "{miss:#?}"
    );
    let hit = of_trace(&spans, &hit_trace);
    let server = hit.iter().find(|s| s.kind == SERVER).unwrap();
    assert!(
        children(&hit, server, "SELECT key_secrets").is_empty(),
        "a cached key was looked up: {hit:#?}"
    );
    assert_eq!(children(&hit, server, "EVALSHA batch").len(), 1, "{hit:#?}");

    // The key store broken under sluice (its table renamed away): the
    // failed lookup's error is on its span.
    use sqlx::Connection as _;
    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE key_secrets RENAME TO key_secrets_away")
        .execute(&mut c)
        .await
        .unwrap();
    let (broken_trace, (k, v)) = traceparent(0x34);
    let mut r = tonic::Request::new(pb::ValidateKeyRequest {
        key: uncached.clone(),
        ..pb::ValidateKeyRequest::default()
    });
    r.metadata_mut()
        .insert(k, MetadataValue::try_from(v.as_str()).unwrap());
    // Answered by the failure mode (an error or a refusal): either way, not VALID.
    if let Ok(r) = keys.validate_key(r).await {
        assert_ne!(r.into_inner().code, pb::ValidationCode::Valid as i32);
    }
    let spans = receiver
        .wait_for(
            Duration::from_secs(20),
            "the failed lookup's span",
            |spans| {
                of_trace(spans, &broken_trace)
                    .iter()
                    .any(|s| s.name == "SELECT key_secrets")
            },
        )
        .await;
    let broken = of_trace(&spans, &broken_trace);
    let server = broken.iter().find(|s| s.kind == SERVER).unwrap();
    let lookup = children(&broken, server, "SELECT key_secrets");
    assert_eq!(lookup.len(), 1, "{broken:#?}");
    let lookup = lookup[0];
    assert_eq!(lookup.status, 2, "{lookup:#?}");
    assert_eq!(lookup.attr("error.type"), Some("database"), "{lookup:#?}");
    assert!(!lookup.status_message.is_empty(), "{lookup:#?}");
    assert!(
        lookup.events.iter().any(|(name, _)| name == "exception"),
        "{lookup:#?}"
    );
    for text in lookup
        .attrs
        .values()
        .chain([&lookup.status_message])
        .chain(lookup.events.iter().flat_map(|(_, a)| a.values()))
    {
        assert!(
            !text.contains(&uncached[8..]),
            "the key leaked: {lookup:#?}"
        );
    }
    sqlx::query("ALTER TABLE key_secrets_away RENAME TO key_secrets")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    // Redis gone: the failed call's error is on its span.
    redis.kill();
    let mut failed = None;
    for n in 0x40..0x50u8 {
        let (trace, header) = traceparent(n);
        call_with(&sluice, &[header], req("t", vec![desc(&[("k", "x")])])).await;
        let spans = receiver
            .wait_for(Duration::from_secs(20), "the SERVER span", |spans| {
                of_trace(spans, &trace).iter().any(|s| s.kind == SERVER)
            })
            .await;
        if let Some(s) = of_trace(&spans, &trace)
            .into_iter()
            .find(|s| s.name == "EVALSHA batch" && s.status == 2)
        {
            failed = Some(s.clone());
            break;
        }
    }
    let failed = failed.expect("no Redis span with an error while Redis was down");
    assert!(
        matches!(failed.attr("error.type"), Some("unavailable" | "timeout")),
        "{failed:#?}"
    );
    assert!(
        failed.status_message.starts_with("counter store"),
        "{failed:#?}"
    );
    assert_eq!(
        failed.attr("sluice.redis.batch_checks"),
        None,
        "{failed:#?}"
    );
    let exception = failed
        .events
        .iter()
        .find(|(name, _)| name == "exception")
        .unwrap_or_else(|| panic!("no exception event on {failed:#?}"));
    assert_eq!(
        exception.1.get("exception.message").map(String::as_str),
        Some(failed.status_message.as_str())
    );
}
