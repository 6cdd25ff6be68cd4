//! Kubernetes clients that count the requests they send, by verb, so a reconcile that should
//! write nothing can be seen to write nothing.

use kube::{Client, Config, client::ClientBuilder};
use std::sync::Arc;
use tower::util::MapRequestLayer;

use crate::metrics::{Metrics, RequestLabels};

/// A client for `config` whose requests are counted in `metrics`.
pub fn counted(config: Config, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    let layer = MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        metrics.api_requests.get_or_create(&RequestLabels { verb: verb(&request) }).inc();
        request
    });
    Ok(builder.with_layer(&layer).build())
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
}
