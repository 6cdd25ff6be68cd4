//! The ECS instance metadata service, as far as a spot-termination notice needs it.
//!
//! `GET {endpoint}/latest/meta-data/instance/spot/termination-time` answers 404 (or an empty
//! body) while nothing is scheduled and 200 with a plain UTC time once the instance is to be
//! released. In hardened mode every GET carries a session token from
//! `PUT {endpoint}/latest/api/token`.

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jiff::Timestamp;
use std::time::{Duration, Instant};

use crate::api::MetadataTokenMode;

/// The path of the spot termination notice.
pub const TERMINATION_TIME_PATH: &str = "/latest/meta-data/instance/spot/termination-time";
/// The path that hands out session tokens.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The header asking for a token lifetime, in seconds.
pub const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
/// The header carrying a token on a GET.
pub const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";

/// A body larger than this is not a timestamp (nor a token).
const MAX_BODY: usize = 4096;
/// In `Optional` mode, how long a refused token request keeps the agent on plain GETs before it
/// asks again.
const PLAIN_RECHECK: Duration = Duration::from_secs(600);

/// What the metadata service said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Nothing is scheduled.
    Nothing,
    /// The instance is released at this instant.
    Notice(Timestamp),
}

/// Why a poll told nothing. Each variant is one `kind` label of the error metric.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("the metadata service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the metadata service: {0}")]
    Connect(String),
    #[error("the metadata service answered HTTP {0}")]
    Status(u16),
    #[error("the metadata service answered something that is not a termination time: {0:?}")]
    Garbage(String),
    #[error("no metadata session token: {0}")]
    Token(String),
}

impl MetadataError {
    /// The metric label of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataError::Timeout(_) => "timeout",
            MetadataError::Connect(_) => "connect",
            MetadataError::Status(_) => "status",
            MetadataError::Garbage(_) => "garbage",
            MetadataError::Token(_) => "token",
        }
    }
}

/// Reads a termination-time answer. 401/403 are handled by the caller (token refresh) and come
/// out here as [`MetadataError::Status`].
pub fn parse_termination(status: u16, body: &[u8]) -> Result<Answer, MetadataError> {
    match status {
        404 => Ok(Answer::Nothing),
        200 => {
            let text = std::str::from_utf8(body).map_err(|_| MetadataError::Garbage(lossy(body)))?.trim();
            if text.is_empty() {
                return Ok(Answer::Nothing);
            }
            text.parse::<Timestamp>().map(Answer::Notice).map_err(|_| MetadataError::Garbage(lossy(body)))
        }
        other => Err(MetadataError::Status(other)),
    }
}

/// At most 64 characters of a body, for messages.
fn lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(64).collect()
}

/// When a token issued now for `ttl` should be replaced: a quarter of its life early, at most a
/// minute early, so a poll never carries an expired token.
pub fn refresh_at(issued: Instant, ttl: Duration) -> Instant {
    let margin = (ttl / 4).min(Duration::from_secs(60));
    issued + ttl.saturating_sub(margin)
}

/// How long to wait before the next poll after `consecutive_errors` failures in a row: the poll
/// interval doubled per failure, at most `max(poll_interval, 10 s)`.
pub fn backoff(poll_interval: Duration, consecutive_errors: u32) -> Duration {
    let cap = poll_interval.max(Duration::from_secs(10));
    let factor = 1u32 << consecutive_errors.saturating_sub(1).min(16);
    poll_interval.saturating_mul(factor).min(cap)
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// A metadata client with its token state.
pub struct MetadataClient {
    endpoint: String,
    mode: MetadataTokenMode,
    ttl: Duration,
    timeout: Duration,
    http: Client<HttpConnector, Empty<Bytes>>,
    token: Option<Token>,
    /// `Optional` mode only: the service refused tokens; plain GETs until then.
    plain_until: Option<Instant>,
    /// Token requests sent, for logs and tests.
    pub token_requests: u64,
}

/// A status code and a whole (small) body.
type Response = (u16, Bytes);

impl MetadataClient {
    /// A client for `endpoint` (e.g. `http://100.100.100.200`); every request gives up after
    /// `timeout`.
    pub fn new(endpoint: &str, mode: MetadataTokenMode, ttl: Duration, timeout: Duration) -> MetadataClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        MetadataClient {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            mode,
            ttl,
            timeout,
            http,
            token: None,
            plain_until: None,
            token_requests: 0,
        }
    }

    /// Asks once whether a termination is scheduled.
    pub async fn poll(&mut self) -> Result<Answer, MetadataError> {
        let token = self.token().await?;
        let (status, body) = self.get(token.as_deref()).await?;
        match status {
            401 | 403 if self.mode != MetadataTokenMode::Disabled => {
                // The token expired early or was revoked: get a new one and ask again, once.
                tracing::debug!(status, "metadata token rejected; requesting a new one");
                self.token = None;
                self.plain_until = None;
                let token = self.token().await?;
                if token.is_none() {
                    return Err(MetadataError::Token(format!(
                        "the service answered {status} to a plain GET and hands out no token"
                    )));
                }
                let (status, body) = self.get(token.as_deref()).await?;
                match status {
                    401 | 403 => Err(MetadataError::Token(format!("a fresh token was refused with HTTP {status}"))),
                    _ => parse_termination(status, &body),
                }
            }
            _ => parse_termination(status, &body),
        }
    }

    /// The token to send, fetching one when needed; `None` for a plain GET.
    async fn token(&mut self) -> Result<Option<String>, MetadataError> {
        if self.mode == MetadataTokenMode::Disabled {
            return Ok(None);
        }
        let now = Instant::now();
        if let Some(token) = &self.token
            && now < token.refresh_at
        {
            return Ok(Some(token.value.clone()));
        }
        if self.mode == MetadataTokenMode::Optional && self.plain_until.is_some_and(|until| now < until) {
            return Ok(None);
        }
        let request = hyper::Request::put(format!("{}{TOKEN_PATH}", self.endpoint))
            .header(TOKEN_TTL_HEADER, self.ttl.as_secs().max(1).to_string())
            .body(Empty::new())
            .map_err(|e| MetadataError::Connect(format!("invalid endpoint {:?}: {e}", self.endpoint)))?;
        self.token_requests += 1;
        let issued = Instant::now();
        let (status, body) = self.send(request).await?;
        match status {
            200 => {
                let value = std::str::from_utf8(&body).map(str::trim).unwrap_or_default();
                if value.is_empty() || value.len() > 1024 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(MetadataError::Token(format!("the token answer is not a token: {:?}", lossy(&body))));
                }
                self.token = Some(Token { value: value.to_owned(), refresh_at: refresh_at(issued, self.ttl) });
                self.plain_until = None;
                Ok(Some(value.to_owned()))
            }
            // The service does not hand out tokens: plain GETs in Optional mode.
            400 | 403 | 404 | 405 | 501 if self.mode == MetadataTokenMode::Optional => {
                tracing::info!(status, "the metadata service hands out no token; using plain requests");
                self.plain_until = Some(now + PLAIN_RECHECK);
                Ok(None)
            }
            other => Err(MetadataError::Token(format!("the token request answered HTTP {other}"))),
        }
    }

    async fn get(&self, token: Option<&str>) -> Result<Response, MetadataError> {
        let mut request = hyper::Request::get(format!("{}{TERMINATION_TIME_PATH}", self.endpoint));
        if let Some(token) = token {
            request = request.header(TOKEN_HEADER, token);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| MetadataError::Connect(format!("invalid endpoint {:?}: {e}", self.endpoint)))?;
        self.send(request).await
    }

    /// Sends one request and reads the whole (small) body, all within the timeout.
    async fn send(&self, request: hyper::Request<Empty<Bytes>>) -> Result<Response, MetadataError> {
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    MetadataError::Connect(source_text(&e))
                } else {
                    MetadataError::Garbage(format!("broken HTTP exchange: {}", source_text(&e)))
                }
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| MetadataError::Garbage(format!("unreadable body: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(MetadataError::Timeout(self.timeout)),
        }
    }
}

/// The innermost cause of an error, which says what actually went wrong (refused, reset...).
fn source_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn termination_answers() {
        let notice = Answer::Notice(ts("2026-11-11T00:05:00Z"));
        let cases: &[(u16, &[u8], Result<Answer, &str>)] = &[
            (404, b"<html>not found</html>", Ok(Answer::Nothing)),
            (200, b"", Ok(Answer::Nothing)),
            (200, b"  \n", Ok(Answer::Nothing)),
            (200, b"2026-11-11T00:05:00Z", Ok(notice)),
            (200, b"2026-11-11T00:05:00Z\n", Ok(notice)),
            (200, b"2026-11-11T08:05:00+08:00", Ok(notice)),
            (200, b"<html>garbage</html>", Err("garbage")),
            (200, b"2026-11-11", Err("garbage")),
            (200, &[0xff, 0xfe, 0x00], Err("garbage")),
            (500, b"oops", Err("status")),
            (401, b"", Err("status")),
        ];
        for (status, body, want) in cases {
            let got = parse_termination(*status, body);
            match want {
                Ok(answer) => assert_eq!(got, Ok(*answer), "{status} {body:?}"),
                Err(kind) => assert_eq!(got.map_err(|e| e.kind()), Err(*kind), "{status} {body:?}"),
            }
        }
    }

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        let t0 = Instant::now();
        assert_eq!(refresh_at(t0, Duration::from_secs(21600)), t0 + Duration::from_secs(21540));
        assert_eq!(refresh_at(t0, Duration::from_secs(2)), t0 + Duration::from_millis(1500));
        assert_eq!(refresh_at(t0, Duration::from_secs(1)), t0 + Duration::from_millis(750));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let s = Duration::from_secs;
        let two = s(2);
        let got: Vec<_> = (1..=6).map(|n| backoff(two, n)).collect();
        assert_eq!(got, [s(2), s(4), s(8), s(10), s(10), s(10)]);
        assert_eq!(backoff(s(30), 3), s(30), "never below the poll interval");
        assert_eq!(backoff(Duration::from_millis(500), 1), Duration::from_millis(500));
        assert_eq!(backoff(two, u32::MAX), s(10), "no overflow");
    }

    /// A scripted metadata service: answers each connection with the next (status, body);
    /// status 0 hangs. Records each request as "METHOD token-or-dash".
    async fn scripted(script: Vec<(u16, &'static str)>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in script {
                let (conn, _) = listener.accept().await.unwrap();
                let mut buf = vec![];
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    conn.readable().await.unwrap();
                    match conn.try_read(&mut chunk) {
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_lowercase();
                let method = text.split_whitespace().next().unwrap_or_default().to_uppercase();
                let token = text
                    .lines()
                    .find_map(|l| l.strip_prefix("x-aliyun-ecs-metadata-token:"))
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_else(|| "-".into());
                log.lock().unwrap().push(format!("{method} {token}"));
                if status == 0 {
                    // Hold the connection open without a byte, and take the next one.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(conn);
                    });
                    continue;
                }
                let response =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let mut rest = response.as_bytes();
                while !rest.is_empty() {
                    conn.writable().await.unwrap();
                    match conn.try_write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        (endpoint, seen)
    }

    fn client(endpoint: &str, mode: MetadataTokenMode) -> MetadataClient {
        MetadataClient::new(endpoint, mode, Duration::from_secs(60), Duration::from_millis(300))
    }

    #[tokio::test]
    async fn optional_mode_falls_back_to_plain_requests_when_tokens_are_refused() {
        let (endpoint, seen) = scripted(vec![(404, ""), (404, ""), (200, "2026-11-11T00:05:00Z")]).await;
        let mut metadata = client(&endpoint, MetadataTokenMode::Optional);
        assert_eq!(metadata.poll().await, Ok(Answer::Nothing));
        assert_eq!(metadata.poll().await, Ok(Answer::Notice(ts("2026-11-11T00:05:00Z"))));
        assert_eq!(*seen.lock().unwrap(), ["PUT -", "GET -", "GET -"], "no second token request");
    }

    #[tokio::test]
    async fn a_rejected_token_is_replaced_within_the_poll() {
        let (endpoint, seen) =
            scripted(vec![(200, "t1"), (404, ""), (401, ""), (200, "t2"), (200, "2026-11-11T00:05:00Z")]).await;
        let mut metadata = client(&endpoint, MetadataTokenMode::Required);
        assert_eq!(metadata.poll().await, Ok(Answer::Nothing));
        assert_eq!(metadata.poll().await, Ok(Answer::Notice(ts("2026-11-11T00:05:00Z"))));
        assert_eq!(*seen.lock().unwrap(), ["PUT -", "GET t1", "GET t1", "PUT -", "GET t2"]);
    }

    #[tokio::test]
    async fn required_mode_never_asks_without_a_token() {
        let (endpoint, seen) = scripted(vec![(404, "")]).await;
        let mut metadata = client(&endpoint, MetadataTokenMode::Required);
        assert_eq!(metadata.poll().await.map_err(|e| e.kind()), Err("token"));
        assert_eq!(*seen.lock().unwrap(), ["PUT -"]);
    }

    #[tokio::test]
    async fn hangs_garbage_and_refusals_are_errors_of_their_kind() {
        let (endpoint, _) = scripted(vec![(0, ""), (200, "<html>busy</html>"), (500, "")]).await;
        let mut metadata = client(&endpoint, MetadataTokenMode::Disabled);
        let started = Instant::now();
        assert_eq!(metadata.poll().await.map_err(|e| e.kind()), Err("timeout"));
        assert!(started.elapsed() < Duration::from_secs(2), "the request timeout bounds a hang");
        assert_eq!(metadata.poll().await.map_err(|e| e.kind()), Err("garbage"));
        assert_eq!(metadata.poll().await.map_err(|e| e.kind()), Err("status"));

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut metadata = client(&format!("http://{closed}"), MetadataTokenMode::Disabled);
        assert_eq!(metadata.poll().await.map_err(|e| e.kind()), Err("connect"));
    }

    #[test]
    fn error_kinds_are_the_metric_labels() {
        let kinds: Vec<_> = [
            MetadataError::Timeout(Duration::from_secs(1)),
            MetadataError::Connect("refused".into()),
            MetadataError::Status(500),
            MetadataError::Garbage("x".into()),
            MetadataError::Token("x".into()),
        ]
        .iter()
        .map(MetadataError::kind)
        .collect();
        assert_eq!(kinds, ["timeout", "connect", "status", "garbage", "token"]);
    }
}
