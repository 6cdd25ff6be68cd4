//! A minimal Prometheus client: one instant query (`GET /api/v1/query`) returning one number.
//!
//! Built on the hyper stack kube already brings in (HTTP/1, rustls with the system roots for
//! https), with a hard timeout per query so a hung Prometheus never stalls a reconcile.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::Deserialize;
use std::{sync::OnceLock, time::Duration};

use super::breaker::Sample;

/// The longest one query may take, connection included.
pub const TIMEOUT: Duration = Duration::from_millis(2500);

/// Largest response body read; an instant query for one number is tiny.
const MAX_BODY: usize = 1 << 20;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// One client (and connection pool) for the whole process; it holds no state that matters.
fn client() -> &'static Client<Https, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<Https, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(err) => {
                // Plain http still works; https then fails naming the unknown issuer.
                tracing::warn!(error = %err, "no system TLS root certificates; https Prometheus URLs will fail");
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        Client::builder(TokioExecutor::new()).build(builder.https_or_http().enable_http1().build())
    })
}

/// Runs `query` against the Prometheus at `base` and returns its single number, or why there is
/// none (unreachable, an error answer, no series, several series, NaN).
pub async fn query(base: &str, query: &str) -> Sample {
    match tokio::time::timeout(TIMEOUT, fetch(base, query)).await {
        Ok(Ok(body)) => parse(&body),
        Ok(Err(message)) => Sample::Failed(message),
        Err(_) => Sample::Failed(format!("Prometheus at {base} did not answer within {TIMEOUT:?}")),
    }
}

async fn fetch(base: &str, query: &str) -> Result<Vec<u8>, String> {
    let url = format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), encode(query));
    let uri: hyper::Uri = url.parse().map_err(|e| format!("prometheus.url {base:?} is not a usable URL: {e}"))?;
    let response = client().get(uri).await.map_err(|e| format!("cannot reach Prometheus at {base}: {}", chain(&e)))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer of Prometheus at {base} failed: {e}"))?
        .to_bytes();
    // Prometheus answers errors (a bad query: 400, 422) with a JSON body naming the problem.
    if !status.is_success() {
        let detail = serde_json::from_slice::<Answer>(&body).ok().and_then(|a| a.error).unwrap_or_default();
        return Err(format!("Prometheus at {base} answered {status}: {detail}")
            .trim_end_matches([':', ' '])
            .to_owned());
    }
    Ok(body.to_vec())
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// The number in an instant-query answer.
pub fn parse(body: &[u8]) -> Sample {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return Sample::Failed(format!("the answer is not a Prometheus API response: {e}")),
    };
    if answer.status != "success" {
        return Sample::Failed(format!("the query failed: {}", answer.error.unwrap_or_default()));
    }
    let Some(data) = answer.data else {
        return Sample::Failed("the answer has no data".into());
    };
    let value = match data.result_type.as_str() {
        "scalar" => data.result.get(1).cloned(),
        "vector" => match data.result.as_array().map(Vec::as_slice) {
            Some([]) | None => return Sample::Failed(
                    "the query returned no series (empty result; a query that is empty when all is well, such as a rate of errors, can end in `or vector(0)`)".into(),
                ),
            Some([one]) => one.pointer("/value/1").cloned(),
            Some(many) => {
                return Sample::Failed(format!(
                    "the query returned {} series; it must return one number (aggregate it, e.g. with max())",
                    many.len()
                ));
            }
        },
        other => return Sample::Failed(format!("the query returned a {other}; it must return one number")),
    };
    match value.as_ref().and_then(serde_json::Value::as_str).map(str::parse::<f64>) {
        Some(Ok(v)) if v.is_nan() => Sample::Failed("the query returned NaN (no data to compute from)".into()),
        Some(Ok(v)) => Sample::Value(v),
        _ => Sample::Failed(format!("the answer holds no number: {}", value.unwrap_or_default())),
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its sources, once each (hyper's own Display names only the outermost).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(sample: Sample) -> String {
        match sample {
            Sample::Failed(m) => m,
            Sample::Value(v) => format!("unexpected value {v}"),
        }
    }

    #[test]
    fn reads_one_number_from_a_vector_or_a_scalar() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.75"]}]}}"#;
        assert_eq!(parse(vector), Sample::Value(0.75));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#;
        assert_eq!(parse(scalar), Sample::Value(3.0));
        let inf = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"+Inf"]}}"#;
        assert_eq!(parse(inf), Sample::Value(f64::INFINITY));
    }

    #[test]
    fn empty_many_nan_and_errors_are_failures_with_a_reason() {
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(failed(parse(empty)).contains("no series"));
        let two =
            br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(failed(parse(two)).contains("2 series"));
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(failed(parse(nan)).contains("NaN"));
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert!(failed(parse(error)).contains("parse error at char 3"));
        assert!(failed(parse(b"<html>")).contains("not a Prometheus API response"));
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(failed(parse(matrix)).contains("matrix"));
    }

    #[test]
    fn encodes_promql_for_the_query_string() {
        assert_eq!(encode("sum(rate(x{a=\"b c\"}[1m]))"), "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29");
        assert_eq!(encode("up+1"), "up%2B1");
    }
}
