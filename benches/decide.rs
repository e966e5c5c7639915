//! The decision hot path without the network: engine + memory store.
//!
//! `cargo bench --bench decide`

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::config::{LoadOptions, load_sources};
use sluice::core::clock::SystemClock;
use sluice::core::rules::Entry;
use sluice::core::stats::StatsRegistry;
use sluice::engine::{Descriptor, Engine, Request, Settings};
use sluice::store::MemoryStore;
use smallvec::smallvec;

const CONFIG: &str = r#"
domain: bench
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 1000000000}
  - key: over
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: multi
    rate_limits:
      - {unit: second, requests_per_unit: 1000000000}
      - {unit: day, requests_per_unit: 1000000000, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: token_bucket}
  - key: remote_address
    descriptors:
      - key: path
        value: /api/*
        rate_limit: {unit: minute, requests_per_unit: 1000000000}
"#;

fn engine() -> Engine<MemoryStore> {
    let rules = load_sources(
        &[("bench.yaml".into(), CONFIG.into())],
        LoadOptions::default(),
        &StatsRegistry::default(),
    )
    .expect("bench config loads");
    Engine::new(
        MemoryStore::new(Arc::new(SystemClock::default()), 1_000_000),
        rules,
        Settings {
            max_metric_keys: 1000,
            ..Settings::default()
        },
    )
}

fn request<'a>(entries: &[(&'a str, &'a str)]) -> Request<'a> {
    Request {
        domain: "bench",
        descriptors: smallvec![Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry { key: k, value: v })
                .collect(),
            ..Descriptor::default()
        }],
        hits_addend: 0,
        header_mode: None,
    }
}

fn decide(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let engine = engine();
    let cases: [(&str, Request<'_>); 5] = [
        ("ok_one_descriptor", request(&[("api_key", "k1")])),
        ("over_limit", request(&[("over", "k1")])),
        ("multi_limit", request(&[("multi", "k1")])),
        ("token_bucket", request(&[("bucket", "k1")])),
        (
            "nested_wildcard",
            request(&[("remote_address", "10.0.0.1"), ("path", "/api/users")]),
        ),
    ];
    for (name, req) in &cases {
        c.bench_function(name, |b| {
            b.iter(|| rt.block_on(engine.decide(black_box(req))).expect("decides"));
        });
    }
    let five = Request {
        domain: "bench",
        descriptors: (0..5)
            .map(|_| Descriptor {
                entries: smallvec![Entry {
                    key: "api_key",
                    value: "k5"
                }],
                ..Descriptor::default()
            })
            .collect(),
        hits_addend: 0,
        header_mode: None,
    };
    c.bench_function("ok_five_descriptors", |b| {
        b.iter(|| {
            rt.block_on(engine.decide(black_box(&five)))
                .expect("decides")
        });
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
