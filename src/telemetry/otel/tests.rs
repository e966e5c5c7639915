use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;

use super::*;

fn cfg(vars: &[(&str, &str)], flags: &TraceFlags) -> Result<Option<OtelConfig>, OtelConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    OtelConfig::from_sources(&|k| map.get(k).cloned(), flags)
}

fn on(vars: &[(&str, &str)]) -> OtelConfig {
    cfg(vars, &TraceFlags::default()).unwrap().unwrap()
}

fn err(vars: &[(&str, &str)], flags: &TraceFlags) -> String {
    cfg(vars, flags).unwrap_err().to_string()
}

#[test]
fn off_unless_an_endpoint_is_configured() {
    assert_eq!(cfg(&[], &TraceFlags::default()).unwrap(), None);
    assert_eq!(
        cfg(&[("OTEL_SERVICE_NAME", "x")], &TraceFlags::default()).unwrap(),
        None
    );
    let e = err(
        &[],
        &TraceFlags {
            sampling: Some(0.5),
            ..TraceFlags::default()
        },
    );
    assert!(e.contains("--trace-sampling needs an OTLP endpoint"), "{e}");
    for (k, v) in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        assert_eq!(
            cfg(
                &[(k, v), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")],
                &TraceFlags::default()
            )
            .unwrap(),
            None
        );
    }
}

#[test]
fn defaults_follow_the_specification() {
    let c = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
    assert_eq!(c.protocol, Protocol::HttpProtobuf);
    assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(c.timeout, Duration::from_secs(10));
    assert_eq!(c.sampler, SamplerKind::ParentBasedAlwaysOn);
    assert_eq!(
        c.propagators,
        vec![
            PropagatorKind::B3,
            PropagatorKind::TraceContext,
            PropagatorKind::Baggage
        ]
    );
    assert_eq!(
        c.batch,
        BatchSettings {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(30),
        }
    );
    assert_eq!(c.service_name(), "sluice");
    let attr = |k: &str| {
        c.resource
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        attr("service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(attr("service.instance.id").map(|v| v.len()), Some(36));
}

#[test]
fn endpoints_flag_and_per_signal_variable() {
    // The per-signal variable is used as given.
    let c = on(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
    ]);
    assert_eq!(c.endpoint, "http://c:4318/custom");
    // The flag wins, and is a base like OTEL_EXPORTER_OTLP_ENDPOINT.
    let flags = TraceFlags {
        endpoint: Some("http://flag:4318".into()),
        ..TraceFlags::default()
    };
    let c = cfg(
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:1/x")],
        &flags,
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.endpoint, "http://flag:4318/v1/traces");
    // gRPC takes the URL as it is.
    let c = cfg(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], &flags)
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.protocol, c.endpoint.as_str()),
        (Protocol::Grpc, "http://flag:4318")
    );
    let c = on(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
    ]);
    assert_eq!(c.protocol, Protocol::Grpc);
}

#[test]
fn bad_values_name_the_variable() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    for (vars, needle) in [
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")],
            "https is not supported",
        ),
        (
            vec![base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "use grpc or http/protobuf",
        ),
        (
            vec![base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            vec![base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "0")],
            "between 1 and",
        ),
        (
            vec![base, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
            "is not key=value",
        ),
        (
            vec![base, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
            "OTEL_TRACES_SAMPLER",
        ),
        (
            vec![
                base,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "a ratio from 0 to 1",
        ),
        (
            vec![base, ("OTEL_PROPAGATORS", "tracecontext,xray")],
            "unknown propagator \"xray\"",
        ),
        (vec![base, ("OTEL_RESOURCE_ATTRIBUTES", "=x")], "empty key"),
        (
            vec![base, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        (
            vec![
                base,
                ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "20"),
            ],
            "must not exceed OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        (
            vec![base, ("OTEL_SDK_DISABLED", "yes")],
            "OTEL_SDK_DISABLED",
        ),
        (
            vec![base, ("OTEL_TRACES_EXPORTER", "zipkin")],
            "OTEL_TRACES_EXPORTER",
        ),
    ] {
        let e = err(&vars, &TraceFlags::default());
        assert!(e.contains(needle), "{vars:?}: {e}");
    }
    let e = err(
        &[base],
        &TraceFlags {
            sampling: Some(2.0),
            ..TraceFlags::default()
        },
    );
    assert!(e.starts_with("--trace-sampling: "), "{e}");
}

#[test]
fn samplers_and_the_sampling_flag() {
    let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    for (name, arg, want) in [
        ("always_on", None, SamplerKind::AlwaysOn),
        ("always_off", None, SamplerKind::AlwaysOff),
        (
            "traceidratio",
            Some("0.25"),
            SamplerKind::TraceIdRatio(0.25),
        ),
        (
            "parentbased_always_off",
            None,
            SamplerKind::ParentBasedAlwaysOff,
        ),
        (
            "parentbased_traceidratio",
            None,
            SamplerKind::ParentBasedTraceIdRatio(1.0),
        ),
    ] {
        let mut vars = vec![base, ("OTEL_TRACES_SAMPLER", name)];
        if let Some(a) = arg {
            vars.push(("OTEL_TRACES_SAMPLER_ARG", a));
        }
        assert_eq!(on(&vars).sampler, want, "{name}");
    }
    let c = cfg(
        &[base, ("OTEL_TRACES_SAMPLER", "always_off")],
        &TraceFlags {
            sampling: Some(0.01),
            ..TraceFlags::default()
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.sampler, SamplerKind::ParentBasedTraceIdRatio(0.01));
}

#[test]
fn resource_headers_and_service_identity() {
    let c = on(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=s%3Dcret, x-tenant = acme",
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,service.name=from-attrs",
        ),
        ("OTEL_SERVICE_NAME", "edge-limits"),
        ("POD_NAME", "sluice-7d9f-abcde"),
        ("POD_NAMESPACE", "gateway"),
    ]);
    assert_eq!(
        c.headers,
        vec![
            ("api-key".to_string(), "s=cret".to_string()),
            ("x-tenant".to_string(), "acme".to_string())
        ]
    );
    assert_eq!(c.service_name(), "edge-limits");
    let get = |k: &str| {
        c.resource
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("deployment.environment"), Some("prod"));
    assert_eq!(get("service.instance.id"), Some("sluice-7d9f-abcde"));
    assert_eq!(get("k8s.pod.name"), Some("sluice-7d9f-abcde"));
    assert_eq!(get("k8s.namespace.name"), Some("gateway"));
    // An instance id given in the attributes wins over the pod name.
    let c = on(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=i-1"),
        ("POD_NAME", "p"),
    ]);
    assert!(
        c.resource
            .contains(&("service.instance.id".into(), "i-1".into()))
    );
}

fn extract(p: &TextMapCompositePropagator, headers: &[(&str, &str)]) -> opentelemetry::Context {
    let map: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.extract(&map)
}

#[test]
fn default_propagators_read_w3c_b3_and_baggage() {
    use opentelemetry::baggage::BaggageExt as _;
    let p = propagator(&propagators_from(DEFAULT_PROPAGATORS).unwrap());
    let w3c = "4bf92f3577b34da6a3ce929d0e0e4736";
    let cx = extract(
        &p,
        &[
            ("traceparent", &format!("00-{w3c}-00f067aa0ba902b7-01")),
            ("baggage", "tenant=acme"),
        ],
    );
    assert_eq!(cx.span().span_context().trace_id().to_string(), w3c);
    assert!(cx.span().span_context().is_sampled());
    assert_eq!(
        cx.baggage().get("tenant").map(|v| v.to_string()),
        Some("acme".into())
    );

    let b3 = "0af7651916cd43dd8448eb211c80319c";
    for headers in [
        vec![("b3", format!("{b3}-b7ad6b7169203331-1"))],
        vec![
            ("x-b3-traceid", b3.to_string()),
            ("x-b3-spanid", "b7ad6b7169203331".to_string()),
            ("x-b3-sampled", "1".to_string()),
        ],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cx = extract(&p, &h);
        assert_eq!(cx.span().span_context().trace_id().to_string(), b3, "{h:?}");
        assert!(cx.span().span_context().is_remote());
    }
    // Both present: W3C wins.
    let cx = extract(
        &p,
        &[
            ("b3", &format!("{b3}-b7ad6b7169203331-1")),
            ("traceparent", &format!("00-{w3c}-00f067aa0ba902b7-01")),
        ],
    );
    assert_eq!(cx.span().span_context().trace_id().to_string(), w3c);
    // OTEL_PROPAGATORS=none reads nothing.
    let none = propagator(&propagators_from("none").unwrap());
    let cx = extract(
        &none,
        &[("traceparent", &format!("00-{w3c}-00f067aa0ba902b7-01"))],
    );
    assert!(!cx.span().span_context().is_valid());
}
