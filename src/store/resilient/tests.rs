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
    probes: AtomicUsize,
}

impl Switchable {
    fn new() -> Switchable {
        Switchable {
            inner: MemoryStore::new(Arc::new(SystemClock::default()), 1000),
            up: AtomicBool::new(true),
            stall: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
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

    /// As `check`, except that a check of the key `bad` always fails on
    /// its own (a cluster node that is down).
    async fn check_each(&self, checks: &[Check<'_>]) -> CheckResults {
        let mut out = CheckResults::new();
        for c in checks {
            if c.key == b"bad" {
                out.push(Err(StoreError::Unavailable("node down".into())));
            } else {
                match self.check(std::slice::from_ref(c)).await {
                    Ok(mut o) => out.push(Ok(o.remove(0))),
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        out
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if self.stall.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.up.load(Ordering::SeqCst) {
            Ok(())
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
            probe_interval: Duration::from_millis(20),
            probe_timeout: Duration::from_millis(100),
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
        assert!(s.health().ready(), "{mode:?}: the failure mode answers");
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

/// Polls `f` every 10 ms for at most 2 s.
async fn soon(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn the_breaker_opens_and_a_background_probe_closes_it_without_traffic() {
    let s = Arc::new(store(FailureMode::Allow, 1, 0));
    let watch = tokio::spawn(s.clone().watch());
    let l = limit(1000);
    s.primary().up.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        admit(&s, b"k", &l).await;
    }
    // Two calls that decided nothing opened it; the others never reached
    // the primary.
    assert_eq!(s.primary().calls.load(Ordering::SeqCst), 2);
    assert_ne!(s.health().breaker, BreakerState::Closed);
    assert!(s.health().ready(), "the failure mode answers: still ready");
    assert!(s.health().degraded());
    // Probed while down, on its own schedule, and it stays open.
    assert!(soon(|| s.primary().probes.load(Ordering::SeqCst) >= 3).await);
    assert_ne!(s.health().breaker, BreakerState::Closed);
    assert_eq!(
        s.primary().calls.load(Ordering::SeqCst),
        2,
        "no traffic probes"
    );

    // Back up: the background probe closes it with no request arriving.
    s.primary().up.store(true, Ordering::SeqCst);
    assert!(soon(|| s.health().breaker == BreakerState::Closed).await);
    assert!(!s.health().degraded());
    assert!(admit(&s, b"k", &l).await);
    assert_eq!(s.primary().calls.load(Ordering::SeqCst), 3);
    watch.abort();
}

#[tokio::test]
async fn a_probe_that_hangs_is_cut_short_and_tried_again() {
    let s = Arc::new(store(FailureMode::Allow, 1, 0));
    let watch = tokio::spawn(s.clone().watch());
    let l = limit(1000);
    s.primary().up.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        admit(&s, b"k", &l).await;
    }
    s.primary().stall.store(true, Ordering::SeqCst);
    s.primary().up.store(true, Ordering::SeqCst);
    assert!(soon(|| s.health().breaker == BreakerState::HalfOpen).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_ne!(s.health().breaker, BreakerState::Closed);
    s.primary().stall.store(false, Ordering::SeqCst);
    assert!(soon(|| s.health().breaker == BreakerState::Closed).await);
    watch.abort();
}

#[tokio::test]
async fn failure_mode_answers_are_marked_and_carry_no_counter_state() {
    let l = limit(10);
    let c = Check {
        key: b"k",
        limits: &l,
        hits: 1,
        policy: ChargePolicy::for_limits(&l),
    };
    for (mode, admitted, mark) in [
        (FailureMode::Allow, true, Fallback::Allow),
        (FailureMode::Deny, false, Fallback::Deny),
    ] {
        let s = store(mode, 1, 0);
        s.primary().up.store(false, Ordering::SeqCst);
        let o = s.check(&[c]).await.unwrap().remove(0);
        assert_eq!(o.admitted, admitted);
        assert_eq!(o.degraded, Some(mark));
        assert_eq!((o.verdicts[0].remaining, o.verdicts[0].reset_ns), (0, 0));
    }
    let s = store(FailureMode::Local, 2, 0);
    s.primary().up.store(false, Ordering::SeqCst);
    let o = s.check(&[c]).await.unwrap().remove(0);
    assert_eq!(o.degraded, Some(Fallback::Local));
    assert_eq!(o.verdicts[0].remaining, 4, "10 / 2 replicas, one used");
    // Decided by the primary: not marked.
    let s = store(FailureMode::Allow, 1, 0);
    assert_eq!(s.check(&[c]).await.unwrap()[0].degraded, None);
}

#[tokio::test]
async fn one_failed_check_does_not_fail_its_neighbours_or_open_the_breaker() {
    let s = store(FailureMode::Deny, 1, 0);
    let l = limit(10);
    let mk = |key: &'static [u8]| Check {
        key,
        limits: &l,
        hits: 1,
        policy: ChargePolicy::for_limits(&l),
    };
    for _ in 0..5 {
        let o = s.check(&[mk(b"a"), mk(b"bad"), mk(b"b")]).await.unwrap();
        assert_eq!(o[0].degraded, None);
        assert!(o[0].admitted);
        assert_eq!(o[1].degraded, Some(Fallback::Deny));
        assert!(!o[1].admitted);
        assert_eq!(o[2].degraded, None);
    }
    assert_eq!(s.health().breaker, BreakerState::Closed);
    assert_eq!(s.failure_counters().0, 5, "one degraded check per call");
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
    // A denial while down rejects (it reports no reset: nothing was counted).
    let c = Check {
        key: b"k",
        limits: std::slice::from_ref(&l),
        hits: 1,
        policy: ChargePolicy::AllOrNothing,
    };
    assert!(!fixed_answer(&c, false).admitted);
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
