//! The gRPC side of [`crate::admission`]: a wrapper around a generated
//! decision service that admits each call before the service sees it and
//! bounds its time.
//!
//! Past `--max-concurrent-requests` in flight a call is answered
//! RESOURCE_EXHAUSTED at once, naming the bound. Envoy's rate-limit and
//! ext_authz filters treat every error code alike (`failure_mode_deny`,
//! `failure_mode_allow`/`status_on_error` decide), so the code matters only
//! to retries and outlier detection: Envoy maps RESOURCE_EXHAUSTED to 429,
//! which `consecutive_5xx` outlier detection does not count, so a replica
//! shedding load is not ejected (which would push its load onto the
//! others), and a `retry_on: unavailable` policy does not multiply the load
//! it sheds. UNAVAILABLE stays the signal of a replica going away
//! (shutdown), which should be retried elsewhere.
//!
//! The deadline (`grpc-timeout`, capped by `--request-timeout`) is checked
//! before the service is polled each time: once it has passed the call is
//! answered DEADLINE_EXCEEDED and the service is not driven further, so it
//! is not decided (a deadline already passed on arrival, `0n`, is never
//! decided at all).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::admission::{Admission, DEADLINE_MESSAGE, Permit, Shed, grpc_timeout};

/// `S`, with every call admitted first.
#[derive(Clone, Debug)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

impl<S> Admitted<S> {
    pub fn new(inner: S, admission: Admission) -> Admitted<S> {
        Admitted { inner, admission }
    }
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for Admitted<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = AdmittedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let caller = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()));
        let allowed = self.admission.time_allowed(caller);
        if allowed.is_zero() {
            self.admission.count_shed(Shed::Deadline);
            return AdmittedFuture::Refused {
                response: Some(Status::deadline_exceeded(DEADLINE_MESSAGE).into_http()),
            };
        }
        match self.admission.admit() {
            Ok(permit) => AdmittedFuture::Admitted {
                deadline: tokio::time::sleep(allowed),
                inner: self.inner.call(req),
                permit: Some(permit),
            },
            Err(overloaded) => AdmittedFuture::Refused {
                response: Some(Status::resource_exhausted(overloaded.to_string()).into_http()),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped call holding its permit and deadline, or the refusal.
    #[project = AdmittedProj]
    #[derive(Debug)]
    pub enum AdmittedFuture<F> {
        Admitted {
            #[pin] deadline: tokio::time::Sleep,
            #[pin] inner: F,
            permit: Option<Permit>,
        },
        Refused { response: Option<http::Response<Body>> },
    }
}

impl<F> Future for AdmittedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmittedProj::Admitted {
                deadline,
                inner,
                permit,
            } => {
                // The deadline first: once it has passed, the call is not
                // driven any further.
                if deadline.poll(cx).is_ready() {
                    if let Some(p) = permit.take() {
                        p.deadline_passed();
                    }
                    return Poll::Ready(
                        Ok(Status::deadline_exceeded(DEADLINE_MESSAGE).into_http()),
                    );
                }
                let out = ready!(inner.poll(cx));
                if let Some(p) = permit.take() {
                    p.answered();
                }
                Poll::Ready(out)
            }
            AdmittedProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
        }
    }
}
