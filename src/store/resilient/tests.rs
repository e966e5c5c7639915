use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::core::clock::SystemClock;
use crate::core::limit::ChargePolicy;
use crate::core::unit::Unit;

/// A store that decides on a memory store while `up`, and fails otherwise:
/// a stand-in for a primary that goes away (the Redis integration tests
/// use real servers).
#[derive(Debug)]
struct Switchable {
    inner: MemoryStore,
    up: AtomicBool,
    /// Calls never finish while set (to cancel one mid-flight).
    stall: AtomicBool,
    calls: AtomicUsize,
}

impl Switchable {
    fn new() -> Switchable {
        Switchable {
            inner: MemoryStore::new(Arc::new(SystemClock::default()), 1000),
            up: AtomicBool::new(true),
            stall: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
        }
    }
}

impl CounterStore for Switchable {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.stall.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.up.load(Ordering::SeqCst) {
            self.inner.check(checks).await
        } else {
            Err(StoreError::Unavailable("down".into()))
        }
    }

    fn store_stats(&self) -> StoreStats {
        self.inner.store_stats()
    }
}

fn store(mode: FailureMode, divisor: u32, cache: u64) -> Resilient<Switchable> {
    Resilient::new(
        Switchable::new(),
        MemoryStore::new(Arc::new(SystemClock::default()), 1000),
        ResilienceOptions {
            mode,
            local_divisor: divisor,
            failure_threshold: 2,
            open_for: Duration::from_millis(100),
            max_open_for: Duration::from_millis(400),
            over_limit_cache_size: cache,
        },
    )
}

fn limit(rpu: u32) -> [LimitSpec; 1] {
    [LimitSpec::new(
        rpu,
        Unit::Hour,
        Algorithm::FixedWindow,
        None,
        0,
    )]
}

async fn admit(s: &Resilient<Switchable>, key: &[u8], limits: &[LimitSpec]) -> bool {
    let c = Check {
        key,
        limits,
        hits: 1,
        policy: ChargePolicy::for_limits(limits),
    };
    s.check(&[c]).await.unwrap()[0].admitted
}

#[tokio::test]
async fn allow_and_deny_modes_answer_while_down() {
    let l = limit(1);
    for (mode, expect) in [(FailureMode::Allow, true), (FailureMode::Deny, false)] {
        let s = store(mode, 1, 0);
        s.primary().up.store(false, Ordering::SeqCst);
        for _ in 0..5 {
            assert_eq!(admit(&s, b"k", &l).await, expect, "{mode:?}");
        }
        assert_eq!(s.failure_counters().0, 5);
    }
}

#[tokio::test]
async fn local_mode_divides_limits() {
    let s = store(FailureMode::Local, 4, 0);
    s.primary().up.store(false, Ordering::SeqCst);
    let l = limit(10);
    let admitted = {
        let mut n = 0;
        for _ in 0..10 {
            n += usize::from(admit(&s, b"k", &l).await);
        }
        n
    };
    assert_eq!(admitted, 2, "10 / 4 replicas = 2 locally");
    assert!(s.health().ready());
    assert!(s.health().degraded());
}

#[tokio::test]
async fn breaker_opens_then_probes_back() {
    let s = store(FailureMode::Allow, 1, 0);
    let l = limit(1000);
    s.primary().up.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        admit(&s, b"k", &l).await;
    }
    // Two failures opened it; the other calls never reached the primary.
    assert_eq!(s.primary().calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.health().breaker, BreakerState::Open);
    assert!(!s.health().ready());

    // Still down at the probe: open again, for longer.
    tokio::time::sleep(Duration::from_millis(120)).await;
    admit(&s, b"k", &l).await;
    assert_eq!(s.primary().calls.load(Ordering::SeqCst), 3);
    assert_eq!(s.health().breaker, BreakerState::Open);

    // Back up: the next probe closes it.
    s.primary().up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(admit(&s, b"k", &l).await);
    assert_eq!(s.health().breaker, BreakerState::Closed);
    let before = s.primary().calls.load(Ordering::SeqCst);
    admit(&s, b"k", &l).await;
    assert_eq!(s.primary().calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn over_limit_denials_are_cached_and_keyed_by_limit_values() {
    let s = store(FailureMode::Allow, 1, 100);
    let l = limit(2);
    assert!(admit(&s, b"k", &l).await);
    assert!(admit(&s, b"k", &l).await);
    assert!(!admit(&s, b"k", &l).await); // at the limit: 3rd is over
    assert!(!admit(&s, b"k", &l).await); // 4th: used_before >= limit, cached
    let calls = s.primary().calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert!(!admit(&s, b"k", &l).await);
    }
    assert_eq!(
        s.primary().calls.load(Ordering::SeqCst),
        calls,
        "answered from cache"
    );
    assert!(s.failure_counters().1 >= 5);
    // A raised limit (a reload) misses the cache and asks the store.
    let raised = limit(100);
    assert!(admit(&s, b"k", &raised).await);
    assert_eq!(s.primary().calls.load(Ordering::SeqCst), calls + 1);
    // Another key is unaffected.
    assert!(admit(&s, b"other", &l).await);
}

#[test]
fn divide_never_rounds_a_limit_to_zero() {
    let l = LimitSpec::new(3, Unit::Second, Algorithm::TokenBucket, Some(5), 0);
    let d = divide(&l, 4);
    assert_eq!((d.requests_per_unit, d.burst), (1, 1));
    let z = divide(
        &LimitSpec::new(0, Unit::Second, Algorithm::FixedWindow, None, 0),
        4,
    );
    assert_eq!(z.requests_per_unit, 0);
}

#[test]
fn custom_windows_survive_division_and_key_the_cache() {
    const SEC: u64 = 1_000_000_000;
    let l = LimitSpec::with_window(10, 90 * SEC, 37 * SEC, Algorithm::FixedWindow, None, 0);
    let d = divide(&l, 4);
    assert_eq!(d.requests_per_unit, 2);
    assert_eq!(
        (d.window_ns, d.offset_ns, d.slot),
        (l.window_ns, l.offset_ns, l.slot)
    );
    // A denial while down lasts the window, not the reported unit.
    let c = Check {
        key: b"k",
        limits: std::slice::from_ref(&l),
        hits: 1,
        policy: ChargePolicy::AllOrNothing,
    };
    assert_eq!(fixed_answer(&c, false).verdicts[0].reset_ns, 90 * SEC);
    // Specs differing only by window or offset (even with one slot) do
    // not share cached denials.
    let base = cache_key(&c);
    for other in [
        LimitSpec {
            window_ns: 60 * SEC,
            ..l
        },
        LimitSpec { offset_ns: 0, ..l },
    ] {
        let c = Check {
            limits: std::slice::from_ref(&other),
            ..c
        };
        assert_ne!(cache_key(&c), base, "{other:?}");
    }
}

#[tokio::test]
async fn a_cancelled_probe_does_not_wedge_the_breaker() {
    let s = store(FailureMode::Allow, 1, 0);
    let l = limit(1000);
    s.primary().up.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        admit(&s, b"k", &l).await;
    }
    assert_eq!(s.health().breaker, BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(120)).await;
    s.primary().up.store(true, Ordering::SeqCst);
    // Start the probe and drop it while the primary has not answered.
    s.primary().stall.store(true, Ordering::SeqCst);
    {
        let c = Check {
            key: b"k",
            limits: &l,
            hits: 1,
            policy: ChargePolicy::for_limits(&l),
        };
        let checks = [c];
        let fut = s.check(&checks);
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    s.primary().stall.store(false, Ordering::SeqCst);
    // The next call can still probe, and closes the breaker.
    assert!(admit(&s, b"k", &l).await);
    assert_eq!(s.health().breaker, BreakerState::Closed);
}
