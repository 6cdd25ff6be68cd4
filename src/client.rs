//! Kubernetes clients that count the requests they send, by cluster and verb (so a reconcile
//! that should write nothing can be seen to write nothing), and that keep to a request budget
//! per cluster.

use kube::{Client, Config, client::ClientBuilder};
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::{Layer, Service, util::MapRequestLayer};

use crate::metrics::{Metrics, RequestLabels};

/// How many requests per second the operator sends one cluster that a sale names, at most.
/// The operator's own cluster, where every sale's status is written at its boundaries, is not
/// limited by the operator (its API server's priority and fairness still applies).
#[derive(clap::Args, Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Requests per second to each cluster reached through a sale's kubeconfig Secret, over
    /// time (a token bucket; watches count once, when they start).
    #[arg(long = "cluster-qps", env = "FLASHSALE_CLUSTER_QPS", default_value_t = 50.0, value_parser = positive)]
    pub qps: f64,
    /// How many requests may go at once before the rate applies (a Preparing boundary writes
    /// every workload of every sale in the cluster at once).
    #[arg(long = "cluster-burst", env = "FLASHSALE_CLUSTER_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { qps: 50.0, burst: 100 }
    }
}

fn positive(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a positive number of requests per second")),
    }
}

/// A client for `config` whose requests are counted in `metrics` under `cluster`, and kept to
/// `budget` when one is given.
pub fn counted(
    config: Config,
    metrics: Arc<Metrics>,
    cluster: &str,
    budget: Option<Budget>,
) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    let cluster = crate::metrics::cluster_label(cluster);
    let counting = metrics.clone();
    let labelled = cluster.clone();
    let layer = MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        let labels = RequestLabels { cluster: labelled.clone(), verb: verb(&request) };
        counting.api_requests.get_or_create(&labels).inc();
        request
    });
    let budgeted = BudgetLayer { budget, metrics, cluster };
    Ok(builder.with_layer(&budgeted).with_layer(&layer).build())
}

/// Keeps a client to its [`Budget`] (none: passes every request through).
struct BudgetLayer {
    budget: Option<Budget>,
    metrics: Arc<Metrics>,
    cluster: String,
}

impl<S> Layer<S> for BudgetLayer {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            bucket: self.budget.map(Bucket::new),
            wait: None,
            metrics: self.metrics.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `qps`.
struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(budget: Budget) -> Bucket {
        let burst = f64::from(budget.burst);
        Bucket { qps: budget.qps, burst, tokens: burst, at: Instant::now() }
    }

    /// How long until a token is there (zero: now).
    fn wait(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 { Duration::ZERO } else { Duration::from_secs_f64((1.0 - self.tokens) / self.qps) }
    }
}

/// The client's service behind its budget: readiness waits for a token. kube's client runs its
/// service behind one buffer, so this one bucket is the whole client's.
struct Budgeted<S> {
    inner: S,
    bucket: Option<Bucket>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<Metrics>,
    cluster: String,
}

impl<S, R> Service<R> for Budgeted<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            let Some(bucket) = self.bucket.as_mut() else { return self.inner.poll_ready(cx) };
            let wait = bucket.wait(Instant::now());
            if wait.is_zero() {
                return self.inner.poll_ready(cx);
            }
            self.metrics
                .api_throttled
                .get_or_create(&crate::metrics::ClusterOnlyLabels { cluster: self.cluster.clone() })
                .inc();
            self.wait = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(bucket) = self.bucket.as_mut() {
            bucket.tokens -= 1.0;
        }
        self.inner.call(request)
    }
}

/// The Kubernetes verb of a request, as far as the method and query tell it.
fn verb<B>(request: &http::Request<B>) -> &'static str {
    let watch = request.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true"));
    // An access review is a question to the authorizer, created but never stored: not a write.
    let review = request.uri().path().starts_with("/apis/authorization.k8s.io/");
    match *request.method() {
        http::Method::POST if review => "review",
        http::Method::GET if watch => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether a verb changes state on the server.
pub fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_from_method_and_query() {
        let req = |m: http::Method, uri: &str| http::Request::builder().method(m).uri(uri).body(()).unwrap();
        assert_eq!(verb(&req(http::Method::GET, "/apis/x/v1/things?watch=true&resourceVersion=1")), "watch");
        assert_eq!(verb(&req(http::Method::GET, "/apis/x/v1/things?limit=500")), "get");
        assert_eq!(verb(&req(http::Method::PATCH, "/apis/x/v1/things/a/status?fieldManager=f")), "patch");
        let review = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
        assert_eq!(verb(&req(http::Method::POST, review)), "review");
        assert_eq!(verb(&req(http::Method::POST, "/apis/batch/v1/namespaces/a/jobs")), "create");
        assert!(is_write("patch") && !is_write("watch") && !is_write("review"));
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_keeps_to_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(Budget { qps: 10.0, burst: 3 });
        bucket.at = start;
        for _ in 0..3 {
            assert_eq!(bucket.wait(start), Duration::ZERO);
            bucket.tokens -= 1.0;
        }
        // Empty: the next token comes after 1/qps.
        let wait = bucket.wait(start);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.wait(start + Duration::from_millis(100)), Duration::ZERO);
        // Idle for long: never more than the burst saved up.
        bucket.wait(start + Duration::from_secs(60));
        assert_eq!(bucket.tokens, 3.0);
    }

    #[test]
    fn a_budget_needs_a_positive_rate() {
        assert!(positive("0").is_err() && positive("-1").is_err() && positive("NaN").is_err());
        assert_eq!(positive("2.5"), Ok(2.5));
    }
}
