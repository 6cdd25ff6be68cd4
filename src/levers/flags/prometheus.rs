//! A minimal Prometheus client: one instant query (`GET /api/v1/query`) returning one number,
//! to a URL the installer allows, with optional credentials and CA from the sale's namespace.
//!
//! Built on the hyper stack kube already brings in (HTTP/1, rustls with the system roots or the
//! sale's CA for https), with a hard timeout per query so a hung Prometheus never stalls a
//! reconcile. The URL is the sale author's choice, so the request goes only where the installer
//! allows ([`check_url`]), and what comes back is reported in general terms (timeout, connection
//! refused, HTTP status, not a number), never the remote's body.

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::{CertificateDer, pem::PemObject as _};
use serde::Deserialize;
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
    time::Duration,
};

use super::breaker::Sample;
use crate::api::Prometheus;

/// The longest one query may take, connection included.
pub const TIMEOUT: Duration = Duration::from_millis(2500);

/// Largest response body read; an instant query for one number is tiny.
const MAX_BODY: usize = 1 << 20;

/// The installer's flag that widens where queries may go.
pub const ALLOW_FLAG: &str = "--prometheus-url-allow";

/// The cluster DNS domain in-cluster Service names resolve under.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// An origin the installer allows sales to query: `http(s)://host[:port]`, matched exactly
/// (the port defaults by scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an installer's allow entry (the value of `--prometheus-url-allow`).
    pub fn parse(entry: &str) -> Result<Origin, String> {
        let uri: hyper::Uri = entry.trim().parse().map_err(|_| format!("{entry:?} is not a URL"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("{entry:?}: an allow entry is an origin, scheme://host[:port], without a path"));
        }
        Origin::of(&uri).ok_or_else(|| format!("{entry:?}: an allow entry is http(s)://host[:port], without user info"))
    }

    /// The origin of `uri`, if it is an http(s) URL without user info.
    fn of(uri: &hyper::Uri) -> Option<Origin> {
        let scheme = uri.scheme_str().filter(|s| matches!(*s, "http" | "https"))?.to_owned();
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(Origin { scheme, host, port })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The fully qualified, absolute DNS name of an in-cluster Service name
/// (`<service>.<namespace>`, `<service>.<namespace>.svc`, `<service>.<namespace>.svc.cluster.local`),
/// or None when `host` is not one. The trailing dot keeps the resolver's search path from
/// turning `evil.com` into a lookup outside the cluster.
fn service_fqdn(host: &str) -> Option<String> {
    let labels: Vec<&str> = host.split('.').collect();
    let (service, namespace) = match labels.as_slice() {
        [service, namespace] | [service, namespace, "svc"] | [service, namespace, "svc", "cluster", "local"] => {
            (*service, *namespace)
        }
        _ => return None,
    };
    let label = |l: &str, first_letter: bool| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.ends_with('-')
            && l.bytes().next().is_some_and(|b| if first_letter { b.is_ascii_lowercase() } else { b != b'-' })
    };
    // Service names are DNS-1035 labels (a letter first), so no name here is an IP literal.
    (label(service, true) && label(namespace, false)).then(|| format!("{service}.{namespace}.{CLUSTER_DOMAIN}."))
}

/// Checks a sale's Prometheus URL against the installer's allow-list: an in-cluster Service name,
/// or one of `allowed`. Returns the URL to query.
pub fn check_url(url: &str, allowed: &[Origin]) -> Result<hyper::Uri, String> {
    let not_allowed = || {
        format!(
            "degradation.prometheus.url {url} is not allowed by the installer's list ({ALLOW_FLAG}): only in-cluster Service names, http(s)://<service>.<namespace>[.svc[.cluster.local]][:port], and the origins the installer lists there may be queried"
        )
    };
    let uri: hyper::Uri = url.parse().map_err(|_| format!("degradation.prometheus.url {url:?} is not a URL"))?;
    let origin = Origin::of(&uri).ok_or_else(not_allowed)?;
    if allowed.contains(&origin) || service_fqdn(&origin.host).is_some() { Ok(uri) } else { Err(not_allowed()) }
}

/// Resolves host names for queries: in-cluster Service names as absolute cluster names only (and
/// never to loopback, link-local or unspecified addresses, as an ExternalName Service could), every
/// other name (only explicitly allowed ones reach here) as the system resolver does.
#[derive(Clone)]
struct Resolver {
    explicit: Arc<Vec<String>>,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_ascii_lowercase();
        let service = if self.explicit.contains(&host) { None } else { service_fqdn(&host) };
        Box::pin(async move {
            let lookup = service.clone().unwrap_or(host);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup.as_str(), 0)).await?.collect();
            if service.is_some() && addrs.iter().any(|a| inner_address(a.ip())) {
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "address not allowed"));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Addresses a Service name must never lead to: the operator's own host and the node's
/// link-local neighbours (the cloud metadata service).
fn inner_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| inner_address(IpAddr::V4(v4)))
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

fn connector(explicit: Arc<Vec<String>>, roots: Option<rustls::RootCertStore>) -> Https {
    let mut http = HttpConnector::new_with_resolver(Resolver { explicit });
    http.enforce_http(false);
    http.set_connect_timeout(Some(TIMEOUT));
    let builder = match roots {
        Some(roots) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()),
        None => match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(err) => {
                // Plain http still works; https then fails as an untrusted certificate.
                tracing::warn!(error = %err, "no system TLS root certificates; https Prometheus URLs will fail");
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        },
    };
    builder.https_or_http().enable_http1().wrap_connector(http)
}

/// One client (and connection pool) for the process's queries with the system roots. The
/// installer's list is fixed for the life of the process, so the first caller's is everyone's.
fn shared_client(allowed: &[Origin]) -> &'static Client<Https, Empty<Bytes>> {
    static CLIENT: OnceLock<Client<Https, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build(connector(explicit_hosts(allowed), None)))
}

fn explicit_hosts(allowed: &[Origin]) -> Arc<Vec<String>> {
    Arc::new(allowed.iter().map(|o| o.host.clone()).collect())
}

/// Where and how to query one sale's Prometheus: the allowed URL, its credentials, its CA.
pub struct Access {
    base: String,
    uri: hyper::Uri,
    authorization: Option<http::HeaderValue>,
    /// Set with a CA of the sale's: a client of its own (its own trust roots).
    client: Option<Client<Https, Empty<Bytes>>>,
    allowed: Vec<Origin>,
}

impl Access {
    /// Checks `prometheus.url` against the installer's list and reads its credentials and CA
    /// from Secrets in `namespace` through `client`. A message naming the field on failure.
    pub async fn load(
        client: &kube::Client,
        namespace: &str,
        prometheus: &Prometheus,
        allowed: &[Origin],
    ) -> Result<Access, String> {
        let uri = check_url(&prometheus.url, allowed)?;
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
        let read = |field: &'static str, name: String, key: String| {
            let secrets = secrets.clone();
            async move {
                let secret = match secrets.get_opt(&name).await {
                    Ok(Some(secret)) => secret,
                    Ok(None) => return Err(format!("{field}: Secret {namespace}/{name} not found")),
                    Err(err) => return Err(format!("{field}: cannot read Secret {namespace}/{name}: {err}")),
                };
                match secret.data.and_then(|mut d| d.remove(&key)) {
                    Some(bytes) => Ok(bytes.0),
                    None => Err(format!("{field}: Secret {namespace}/{name} has no key {key:?}")),
                }
            }
        };
        let authorization = match &prometheus.auth {
            None => None,
            Some(auth) => {
                let value = if let Some(r) = &auth.bearer_token_secret_ref {
                    let field = "degradation.prometheus.auth.bearerTokenSecretRef";
                    let token = read(field, r.name.clone(), r.key.clone()).await?;
                    let token = String::from_utf8(token).map_err(|_| format!("{field}: the token is not text"))?;
                    format!("Bearer {}", token.trim())
                } else if let Some(r) = &auth.basic_auth_secret_ref {
                    let field = "degradation.prometheus.auth.basicAuthSecretRef";
                    let user = read(field, r.name.clone(), r.username_key.clone()).await?;
                    let password = read(field, r.name.clone(), r.password_key.clone()).await?;
                    let pair = [user.trim_ascii(), b":", password.trim_ascii()].concat();
                    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
                } else {
                    return Err("degradation.prometheus.auth sets no credentials".into());
                };
                let mut header = http::HeaderValue::from_str(&value).map_err(
                    |_| "degradation.prometheus.auth: the credentials hold characters a header cannot carry",
                )?;
                header.set_sensitive(true);
                Some(header)
            }
        };
        let client = match &prometheus.ca_secret_ref {
            None => None,
            Some(r) => {
                let field = "degradation.prometheus.caSecretRef";
                let pem = read(field, r.name.clone(), r.key.clone()).await?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|_| format!("{field}: the CA bundle is not PEM"))?;
                    roots
                        .add(cert)
                        .map_err(|_| format!("{field}: the CA bundle holds a certificate that cannot be used"))?;
                }
                if roots.is_empty() {
                    return Err(format!("{field}: the CA bundle holds no certificate"));
                }
                Some(Client::builder(TokioExecutor::new()).build(connector(explicit_hosts(allowed), Some(roots))))
            }
        };
        Ok(Access {
            base: prometheus.url.trim_end_matches('/').to_owned(),
            uri,
            authorization,
            client,
            allowed: allowed.to_vec(),
        })
    }
}

/// Runs `query` against the Prometheus of `access` and returns its single number, or why there
/// is none (unreachable, an error answer, no series, several series, NaN), in general terms.
pub async fn query(access: &Access, query: &str) -> Sample {
    let base = &access.base;
    match tokio::time::timeout(TIMEOUT, fetch(access, query)).await {
        Ok(Ok(body)) => parse(&body),
        Ok(Err(message)) => Sample::Failed(message),
        Err(_) => Sample::Failed(format!("Prometheus at {base} did not answer within {TIMEOUT:?}")),
    }
}

async fn fetch(access: &Access, query: &str) -> Result<Vec<u8>, String> {
    let base = &access.base;
    let path = access.uri.path().trim_end_matches('/');
    let url = format!(
        "{}://{}{path}/api/v1/query?query={}",
        access.uri.scheme_str().unwrap_or("http"),
        access.uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        encode(query)
    );
    let mut request = hyper::Request::get(&url);
    if let Some(value) = &access.authorization {
        request = request.header(http::header::AUTHORIZATION, value.clone());
    }
    let request = request.body(Empty::new()).map_err(|_| format!("prometheus.url {base:?} is not a usable URL"))?;
    let client = access.client.as_ref().unwrap_or_else(|| shared_client(&access.allowed));
    let response =
        client.request(request).await.map_err(|e| format!("cannot reach Prometheus at {base}: {}", category(&e)))?;
    let status = response.status();
    if !status.is_success() {
        // Prometheus explains a bad query (400, 422) in the body; the body is the remote's
        // text, so only the status and what it generally means are told.
        let hint = match status.as_u16() {
            400 | 422 => " (the query was rejected; check its PromQL)",
            401 | 403 => " (check degradation.prometheus.auth)",
            _ => "",
        };
        return Err(format!("Prometheus at {base} answered HTTP {}{hint}", status.as_u16()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| format!("reading the answer of Prometheus at {base} failed (cut off, or over {MAX_BODY} bytes)"))?
        .to_bytes();
    Ok(body.to_vec())
}

/// What kind of failure a request error is, in general terms (never the remote's words).
fn category(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut dns = false;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused",
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    return "connection reset";
                }
                std::io::ErrorKind::TimedOut => return "connection timed out",
                std::io::ErrorKind::PermissionDenied => {
                    return "its name resolves to a loopback or link-local address, which only the installer's list may allow";
                }
                _ => {}
            }
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "TLS handshake failed: its certificate is not trusted or not valid for the host (see degradation.prometheus.caSecretRef)"
                }
                _ => "TLS handshake failed",
            };
        }
        dns |= s.to_string().starts_with("dns error");
        // rustls' error reaches hyper wrapped in io::Errors, whose source() skips what they wrap.
        source = match s.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    if dns { "its host name does not resolve" } else { "connection failed" }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
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
        Err(_) => return Sample::Failed("the answer is not a Prometheus API response".into()),
    };
    if answer.status != "success" {
        // The error text is the remote's; the query's own problems show as HTTP 400/422 first.
        return Sample::Failed("Prometheus reported the query as failed".into());
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
        kind @ ("matrix" | "string") => {
            return Sample::Failed(format!("the query returned a {kind}; it must return one number"));
        }
        _ => return Sample::Failed("the answer is not a Prometheus API response".into()),
    };
    match value.as_ref().and_then(serde_json::Value::as_str).map(str::parse::<f64>) {
        Some(Ok(v)) if v.is_nan() => Sample::Failed("the query returned NaN (no data to compute from)".into()),
        Some(Ok(v)) => Sample::Value(v),
        _ => Sample::Failed("the answer holds no number".into()),
    }
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a query-string value.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
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
        // The remote's words never come back: not its error text, not its body, not its value.
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(failed(parse(error)), "Prometheus reported the query as failed");
        assert_eq!(failed(parse(b"<html>secret page</html>")), "the answer is not a Prometheus API response");
        let text = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"internal-secret"]}}"#;
        assert_eq!(failed(parse(text)), "the answer holds no number");
        let odd = br#"{"status":"success","data":{"resultType":"internal-secret","result":[]}}"#;
        assert_eq!(failed(parse(odd)), "the answer is not a Prometheus API response");
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(failed(parse(matrix)).contains("matrix"));
    }

    #[test]
    fn encodes_promql_for_the_query_string() {
        assert_eq!(encode("sum(rate(x{a=\"b c\"}[1m]))"), "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29");
        assert_eq!(encode("up+1"), "up%2B1");
    }

    #[test]
    fn only_in_cluster_service_names_and_listed_origins_are_allowed() {
        let listed =
            [Origin::parse("http://127.0.0.1:9090").unwrap(), Origin::parse("https://prom.example.com").unwrap()];
        let table: &[(&str, bool)] = &[
            ("http://prometheus.monitoring:9090", true),
            ("https://prometheus.monitoring.svc:9090/prefix", true),
            ("http://prometheus.monitoring.svc.cluster.local", true),
            ("http://Prometheus.Monitoring:9090", true),
            ("http://127.0.0.1:9090", true),
            ("http://127.0.0.1:9090/", true),
            ("https://prom.example.com/api/prom", true),
            ("https://prom.example.com:443", true),
            // Not listed: another port, another scheme, another address.
            ("http://127.0.0.1:9091", false),
            ("https://127.0.0.1:9090", false),
            ("http://prom.example.com", false),
            ("http://localhost:9090", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("http://100.100.100.200", false),
            ("http://[::1]:9090", false),
            ("http://10.0.0.1:9090", false),
            ("http://1.2:9090", false),
            ("http://prometheus:9090", false),
            ("http://a.b.c:9090", false),
            ("http://evil.example.svc.cluster.other", false),
            ("http://user:pass@prometheus.monitoring:9090", false),
            ("ftp://prometheus.monitoring", false),
        ];
        for (url, allowed) in table {
            assert_eq!(check_url(url, &listed).is_ok(), *allowed, "{url}");
        }
        let refused = check_url("http://10.0.0.1:9090", &[]).unwrap_err();
        assert!(refused.starts_with("degradation.prometheus.url http://10.0.0.1:9090 is not allowed by the installer's list (--prometheus-url-allow)"), "{refused}");
    }

    #[test]
    fn service_names_resolve_only_inside_the_cluster() {
        assert_eq!(service_fqdn("evil.com").as_deref(), Some("evil.com.svc.cluster.local."));
        assert_eq!(
            service_fqdn("prometheus.monitoring.svc").as_deref(),
            Some("prometheus.monitoring.svc.cluster.local.")
        );
        assert_eq!(service_fqdn("1abc.monitoring"), None);
        assert_eq!(service_fqdn("127.0.0.1"), None);
        assert!(inner_address("127.0.0.53".parse().unwrap()) && inner_address("169.254.169.254".parse().unwrap()));
        assert!(inner_address("::ffff:127.0.0.1".parse().unwrap()) && inner_address("fe80::1".parse().unwrap()));
        assert!(!inner_address("10.96.0.10".parse().unwrap()));
    }

    #[test]
    fn allow_entries_are_origins() {
        assert_eq!(Origin::parse("http://127.0.0.1:9090").unwrap().to_string(), "http://127.0.0.1:9090");
        assert_eq!(Origin::parse("https://prom.example.com").unwrap().to_string(), "https://prom.example.com:443");
        assert!(Origin::parse("http://127.0.0.1:9090/api").is_err());
        assert!(Origin::parse("127.0.0.1:9090").is_err());
        assert!(Origin::parse("http://u:p@host").is_err());
    }

    /// A one-shot HTTP server on loopback: answers `response` (None: never answers) and hands
    /// back the request head it got.
    fn server(response: Option<String>) -> (u16, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap();
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            match response {
                Some(text) => stream.write_all(text.as_bytes()).unwrap(),
                None => std::thread::sleep(Duration::from_secs(10)),
            }
        });
        (port, rx)
    }

    fn access(port: u16, authorization: Option<&'static str>) -> Access {
        Access {
            base: format!("http://127.0.0.1:{port}"),
            uri: format!("http://127.0.0.1:{port}/prefix/").parse().unwrap(),
            authorization: authorization.map(http::HeaderValue::from_static),
            client: None,
            allowed: vec![Origin::parse(&format!("http://127.0.0.1:{port}")).unwrap()],
        }
    }

    #[tokio::test]
    async fn credentials_are_sent_and_an_error_answer_shows_only_its_status() {
        let body = "{\"status\":\"error\",\"error\":\"internal-secret-detail\"}";
        let answer =
            format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let (port, request) = server(Some(answer));
        let message = failed(query(&access(port, Some("Bearer t0k")), "up").await);
        assert_eq!(
            message,
            format!("Prometheus at http://127.0.0.1:{port} answered HTTP 401 (check degradation.prometheus.auth)")
        );
        let request = request.recv().unwrap().to_ascii_lowercase();
        assert!(request.starts_with("get /prefix/api/v1/query?query=up http/1.1"), "{request}");
        assert!(request.contains("authorization: bearer t0k"), "{request}");
    }

    #[tokio::test]
    async fn a_prometheus_that_never_answers_is_a_timeout() {
        let (port, _request) = server(None);
        let message = failed(query(&access(port, None), "up").await);
        assert_eq!(message, format!("Prometheus at http://127.0.0.1:{port} did not answer within 2.5s"));
    }

    #[tokio::test]
    async fn failures_are_told_in_general_terms() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let allowed = [Origin::parse(&format!("http://127.0.0.1:{port}")).unwrap()];
        let access = Access {
            base: format!("http://127.0.0.1:{port}"),
            uri: format!("http://127.0.0.1:{port}").parse().unwrap(),
            authorization: None,
            client: None,
            allowed: allowed.to_vec(),
        };
        assert_eq!(
            failed(query(&access, "up").await),
            format!("cannot reach Prometheus at http://127.0.0.1:{port}: connection refused")
        );
    }
}
